/**
 * The build path end to end, with the registry in token-auth mode as `make up` runs it: an API
 * (the token server, with a robot master key), a private Debian `docker-registry` with
 * `auth: token` pointing at it, and one real builder-agent process holding only its derived key
 * (`BUILDER_REGISTRY_KEY`, no static credential). A user starts a run by hand; the dispatcher places
 * it on the agent, which clones, compiles into the config's cache, builds with the region's dockerd
 * and pushes with the run's own robot credential. Then the config's cache is cleared through the
 * API, and a registered cell pulls the image with its credential (and cannot push). A signed GitHub
 * push webhook builds exactly the pushed commit, though the branch has moved on since.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRedis } from '@berth/shared/redis';
import { cellPullCredential, deriveAgentKey, deriveCellsKey, runPushCredential } from '@berth/shared/registry';
import {
  exited,
  freePort,
  REPO_ROOT,
  regionAuthEnv,
  regionCredentials,
  regionEnv,
  uniqueId,
  waitFor,
} from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appBody, ensureRegion, startApi, type TestApi } from '../../services/api/test/harness.ts';
import {
  dockerCli as dockerIn,
  makeSigningKey,
  registryAddress,
  startTokenRegistry,
  type TokenRegistry,
} from '../../services/api/test/token-registry.ts';
import { docker, shellImage } from '../../services/builder-agent/test/harness.ts';

const ISSUER = 'berth-e2e';
const SERVICE = 'berth-e2e-registry';
const MANIFEST_TYPES =
  'application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json';
/** The robot master key (REGISTRY_ROBOT_KEY), as make up makes one. */
const ROBOT_KEY = randomBytes(32);
const env = regionEnv();
const dockerHost = process.env.DOCKER_HOST ?? env.DOCKER_HOST;

const id = uniqueId();
const regionName = `r${id}`;
const group = `g${id}`;
const target = `${group}/shop`;
const agentId = `e2e-${id}`;
const users = { owner: `own${id}`, dev: `dev${id}`, reporter: `rep${id}` };
const password = (user: string) => `pw-${user}-12345`;

let dir: string;
let api: TestApi;
let registry: TokenRegistry | undefined;
let registryHost: string;
let agent: ChildProcess | undefined;
let agentLog = '';
let agentDataDir: string;
/** The agent's own HTTP server (/readyz, /metrics). */
let agentUrl: string;
let sessions: Record<keyof typeof users, string>;
/** The build config's id and its webhook secret (shown once, at creation). */
let configId: string;
let webhook: { url: string; secret: string };
let runId: string;
let digest: string;
let image: { repository: string; tag: string; digest: string };

/** The docker client against the region's dockerd, with a config dir of its own. */
function dockerCli(config: string, args: string[], input?: string) {
  return dockerIn(config, args, { dockerHost, ...(input === undefined ? {} : { input }) });
}

/** Images this file tagged in the region's dockerd, removed at the end. */
const tagged = new Set<string>();

function basic(user: string, secret: string): string {
  return `Basic ${Buffer.from(`${user}:${secret}`).toString('base64')}`;
}

/** The claims of a registry token (no check of its signature: the registry does that). */
function claims(token: string): { sub: string; access: unknown[] } {
  return JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8'));
}

function askToken(scopes: string[], authorization?: string) {
  const q = new URLSearchParams({ service: SERVICE });
  for (const s of scopes) q.append('scope', s);
  return fetch(`${api.url}/api/v1/registry/token?${q}`, { headers: authorization ? { authorization } : {} });
}

/** A bare repository with one commit of `files` on `main`. */
function gitRepo(files: Record<string, string>): string {
  const bare = join(dir, 'shop.git');
  const work = join(dir, 'shop');
  const git = (cwd: string, ...args: string[]) =>
    execFileSync('git', args, {
      cwd,
      env: {
        ...process.env,
        GIT_AUTHOR_NAME: 't',
        GIT_AUTHOR_EMAIL: 't@t',
        GIT_COMMITTER_NAME: 't',
        GIT_COMMITTER_EMAIL: 't@t',
      },
    });
  execFileSync('git', ['init', '-q', '--bare', '-b', 'main', bare]);
  mkdirSync(work);
  git(work, 'init', '-q', '-b', 'main');
  for (const [path, text] of Object.entries(files)) writeFileSync(join(work, path), text);
  git(work, 'add', '-A');
  git(work, 'commit', '-q', '-m', 'first');
  git(work, 'push', '-q', bare, 'main');
  return bare;
}

/** Commits `files` on main in the work tree of gitRepo and pushes it to the bare repository; its sha. */
function commitTo(files: Record<string, string>): string {
  const work = join(dir, 'shop');
  const git = (...args: string[]) =>
    execFileSync('git', args, {
      cwd: work,
      encoding: 'utf8',
      env: {
        ...process.env,
        GIT_AUTHOR_NAME: 't',
        GIT_AUTHOR_EMAIL: 't@t',
        GIT_COMMITTER_NAME: 't',
        GIT_COMMITTER_EMAIL: 't@t',
      },
    });
  for (const [path, text] of Object.entries(files)) writeFileSync(join(work, path), text);
  git('commit', '-q', '-am', `change ${Object.keys(files).join(', ')}`);
  git('push', '-q', join(dir, 'shop.git'), 'main');
  return git('rev-parse', 'HEAD').trim();
}

/** The builder-agent's entry point as its own process, in the API's prefix, subject root and region. */
async function spawnAgent(): Promise<void> {
  agentDataDir = join(dir, 'agent');
  mkdirSync(agentDataDir);
  const port = await freePort();
  agentUrl = `http://127.0.0.1:${port}`;
  const inherited = { ...process.env };
  // Whatever the shell holds, this agent has no static registry credential.
  for (const name of ['REGISTRY_USERNAME', 'REGISTRY_PASSWORD', 'BUILDER_REGISTRY_KEY_FILE', 'BUILDER_REGISTRY_KEY']) {
    delete inherited[name];
  }
  const child = spawn(process.execPath, [join(REPO_ROOT, 'services/builder-agent/src/index.ts')], {
    cwd: REPO_ROOT,
    env: {
      ...inherited,
      ETCD_ENDPOINTS: env.ETCD_ENDPOINTS ?? 'http://127.0.0.1:2379',
      NATS_URL: env.NATS_URL ?? 'nats://127.0.0.1:4222',
      REDIS_URL: env.REDIS_URL ?? 'redis://127.0.0.1:6379',
      ...regionAuthEnv(env),
      DOCKER_HOST: dockerHost ?? '',
      ETCD_PREFIX: api.prefix,
      EVENT_SUBJECT_ROOT: api.subjectRoot,
      BERTH_REGION: regionName,
      BUILDER_ID: agentId,
      BUILDER_DATA_DIR: agentDataDir,
      BUILDER_REGISTRY_KEY: deriveAgentKey(ROBOT_KEY, agentId).toString('hex'),
      REGISTRY_ADDR: registryHost,
      HTTP_ADDR: `127.0.0.1:${port}`,
      LOG_LEVEL: 'info',
      SHUTDOWN_TIMEOUT: '20s',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  agent = child;
  const keep = (d: Buffer) => {
    agentLog = (agentLog + d).slice(-40_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  await waitFor(
    async () => {
      if (child.exitCode !== null) throw new Error(`builder-agent exited: ${agentLog}`);
      return (await fetch(`${agentUrl}/readyz`).catch(() => undefined))?.status === 200;
    },
    { timeoutMs: 30_000, message: 'the builder-agent ready' },
  );
  // Registered where the API's dispatcher looks.
  const key = api.service.runtime.keys.builder(regionName, agentId);
  await waitFor(async () => (await api.service.runtime.etcd.get(key).string()) !== null, {
    timeoutMs: 15_000,
    message: 'the agent registered in etcd',
  });
}

beforeAll(async () => {
  expect(dockerHost, 'the region’s dockerd (DOCKER_HOST in .local/env, written by make up)').toBeTruthy();
  dir = mkdtempSync(join(tmpdir(), 'berth-builds-e2e-'));
  const { keyFile, certFile } = makeSigningKey(dir);
  registryHost = await registryAddress();
  api = await startApi({
    // The token server accepts only the cells of its own region.
    BERTH_REGION: regionName,
    REGISTRY_URL: `http://${registryHost}`,
    REGISTRY_TOKEN_KEY_FILE: keyFile,
    REGISTRY_TOKEN_ISSUER: ISSUER,
    REGISTRY_TOKEN_SERVICE: SERVICE,
    REGISTRY_ROBOT_KEY: ROBOT_KEY.toString('hex'),
    LOGIN_RATE_LIMIT: '1000',
  });
  registry = await startTokenRegistry({
    dir,
    host: registryHost,
    apiUrl: api.url,
    service: SERVICE,
    issuer: ISSUER,
    certFile,
  });
  await ensureRegion(api, regionName);
  await spawnAgent();

  sessions = {
    owner: await api.user(users.owner),
    dev: await api.user(users.dev),
    reporter: await api.user(users.reporter),
  };
  const created = await api.call('POST', '/image-groups', {
    token: sessions.owner,
    body: { name: group, public: false },
  });
  expect(created.status, JSON.stringify(created.json)).toBe(201);
  const app = await api.call('POST', '/apps', {
    token: sessions.owner,
    body: { ...appBody('shop', regionName), image: target },
  });
  expect(app.status, JSON.stringify(app.json)).toBe(201);
  for (const [user, role] of [
    [users.dev, 'Developer'],
    [users.reporter, 'Reporter'],
  ]) {
    const res = await api.call('PUT', `/apps/shop/members/${user}`, { token: sessions.owner, body: { role } });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
  }
  const shell = await shellImage();
  const repo = gitRepo({ Dockerfile: 'FROM scratch\nCOPY out.txt /out.txt\n', 'src.txt': 'hello from e2e\n' });
  const config = await api.call('POST', '/apps/shop/build-configs', {
    token: sessions.owner,
    body: {
      name: 'main',
      git: { url: `file://${repo}` },
      target,
      cache: true,
      compile: {
        image: shell,
        // Leaves a dependency in the config's cache ($HOME is in it), so clearing it frees bytes.
        script: [
          'set -e',
          'cd /workspace',
          'mkdir -p "$HOME/.deps" && head -c 65536 /dev/zero > "$HOME/.deps/dep.jar"',
          'cat src.txt > out.txt',
        ].join('\n'),
      },
    },
  });
  expect(config.status, JSON.stringify(config.json)).toBe(201);
  webhook = config.json.webhook;
  configId = config.json.id;
}, 180_000);

afterAll(async () => {
  if (agent && agent.exitCode === null && agent.signalCode === null) {
    const done = exited(agent);
    agent.kill('SIGTERM');
    await done;
  }
  await registry?.stop();
  if (dockerHost) {
    for (const ref of tagged) await dockerCli(join(dir, 'docker-config'), ['rmi', '-f', ref]);
    for (const img of await docker.listImages({ filters: { label: [`berth.run=${runId ?? 'none'}`] } })) {
      await docker
        .getImage(img.Id)
        .remove({ force: true })
        .catch(() => undefined);
    }
  }
  if (api) {
    const redis = createRedis({
      url: env.REDIS_URL ?? 'redis://127.0.0.1:6379',
      role: 'worker',
      ...regionCredentials(env).redis,
    });
    for (const key of await redis.keys(`bull:builds-${regionName}-*`)) await redis.del(key);
    redis.disconnect();
    await api.service.runtime.etcd
      .delete()
      .prefix(api.prefix)
      .catch(() => undefined);
    await api.stop();
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
}, 120_000);

describe('a build in token-auth mode', () => {
  it('a run by hand is placed on the agent, built, and pushed with its own robot credential', {
    timeout: 240_000,
  }, async () => {
    const started = await api.call('POST', '/apps/shop/build-configs/main/runs', { token: sessions.dev, body: {} });
    expect(started.status, JSON.stringify(started.json)).toBe(201);
    runId = started.json.id;
    const run = await waitFor(
      async () => {
        const res = await api.call('GET', `/builds/${runId}`, { token: sessions.reporter });
        return ['succeeded', 'failed', 'cancelled'].includes(res.json.state) ? res.json : undefined;
      },
      { timeoutMs: 180_000, intervalMs: 250, message: `build ${runId} finished` },
    );
    expect(
      run.reason,
      `agent log:\n${agentLog.slice(-6000)}\nregistry log:\n${registry?.log().slice(-3000)}`,
    ).toBeNull();
    expect(run.state).toBe('succeeded');
    expect(run.placement?.agentId).toBe(agentId);
    expect(run.steps.map((s: { name: string; state: string }) => [s.name, s.state])).toEqual([
      ['clone', 'succeeded'],
      ['compile', 'succeeded'],
      ['build', 'succeeded'],
      ['push', 'succeeded'],
    ]);
    expect(run.cache).toEqual({ enabled: true, hit: false });
    // The repository as an app's image names it, without the registry's address.
    expect(run.image).toMatchObject({
      repository: target,
      digest: expect.stringMatching(/^sha256:[0-9a-f]{64}$/),
    });
    image = run.image;
    digest = run.image.digest;

    // The manifest is in the registry by that digest: the owner pulls it with a token of theirs.
    const granted = await askToken([`repository:${target}:pull`], basic(users.owner, password(users.owner)));
    expect(granted.status).toBe(200);
    const { token } = (await granted.json()) as { token: string };
    const manifest = await fetch(`http://${registryHost}/v2/${target}/manifests/${digest}`, {
      headers: { authorization: `Bearer ${token}`, accept: MANIFEST_TYPES },
    });
    expect(manifest.status).toBe(200);
    expect(manifest.headers.get('docker-content-digest')).toBe(digest);
    // Nobody gets it without a token: the registry is not anonymous.
    expect((await fetch(`http://${registryHost}/v2/${target}/manifests/${digest}`)).status).toBe(401);

    // The agent holds no static credential and the registry grants nobody a push without one, so
    // the push was the run's robot's: `build@{runId}.1` is the account the registry names while
    // Docker probes for the new layers before uploading them.
    const anonymous = await askToken([`repository:${target}:pull,push`]);
    expect(anonymous.status).toBe(200);
    expect(claims(((await anonymous.json()) as { token: string }).token).access).toEqual([]);
    const robot = runPushCredential(deriveAgentKey(ROBOT_KEY, agentId), runId, 1);
    expect(registry?.log()).toContain(`auth.user.name=${robot.username}`);
    // That credential died with the run.
    const after = await askToken([`repository:${target}:pull,push`], basic(robot.username, robot.password));
    expect(after.status).toBe(401);
  });

  it('a signed GitHub push builds and pushes the pushed commit, not what the branch holds later', {
    timeout: 240_000,
  }, async () => {
    // Two commits land on main; the webhook reports the first, the branch has moved on to the second.
    const pushed = commitTo({ 'src.txt': 'pushed by the webhook\n' });
    commitTo({ 'src.txt': 'a later commit\n' });
    const body = JSON.stringify({
      ref: 'refs/heads/main',
      before: '0'.repeat(40),
      after: pushed,
      created: false,
      deleted: false,
      forced: false,
      commits: [{ id: pushed, message: 'change', timestamp: new Date().toISOString(), author: { name: 'Dev' } }],
      head_commit: { id: pushed, message: 'change' },
      repository: { id: 1, name: 'shop', full_name: `${group}/shop`, default_branch: 'main' },
      pusher: { name: users.dev, email: 'dev@example.test' },
      sender: { login: users.dev, id: 7 },
    });
    const res = await api.call('POST', `/hooks/github/${configId}`, {
      raw: body,
      headers: {
        'content-type': 'application/json',
        'x-github-event': 'push',
        'x-github-delivery': `e2e-${uniqueId()}`,
        'x-hub-signature-256': `sha256=${createHmac('sha256', webhook.secret).update(body).digest('hex')}`,
      },
    });
    expect(res.status, JSON.stringify(res.json)).toBe(202);
    const hookRun = res.json.build.id as string;
    const run = await waitFor(
      async () => {
        const got = await api.call('GET', `/builds/${hookRun}`, { token: sessions.reporter });
        return ['succeeded', 'failed', 'cancelled'].includes(got.json.state) ? got.json : undefined;
      },
      { timeoutMs: 180_000, intervalMs: 250, message: `build ${hookRun} finished` },
    );
    expect(run.reason, `agent log:\n${agentLog.slice(-6000)}`).toBeNull();
    expect(run).toMatchObject({ state: 'succeeded', commit: pushed, trigger: { type: 'webhook' } });
    expect(run.image.tag).toBe(`main-${pushed.slice(0, 7)}`);
    // The image in the registry is that commit's: its label says so, and so does its file.
    const built = await docker.getImage(`${registryHost}/${target}:${run.image.tag}`).inspect();
    tagged.add(`${registryHost}/${target}:${run.image.tag}`);
    expect(built.Config.Labels?.['berth.commit']).toBe(pushed);
    expect(built.Id).not.toBe('');
  });

  it("clearing the config's cache: a Developer frees what the compile step left, a Reporter may not", async () => {
    expect(runId, 'the build above ran').toBeTruthy();
    // The run is written succeeded just before the agent lets go of its cache: once the agent
    // counts no active build, nothing holds it (else the clear would be deferred).
    await waitFor(
      async () => {
        const metrics = await (await fetch(`${agentUrl}/metrics`)).text();
        return /berth_builder_active_builds(\{[^}]*\})? 0\b/.test(metrics);
      },
      { timeoutMs: 15_000, message: 'the agent has no active build' },
    );
    const denied = await api.call('POST', '/apps/shop/build-configs/main/clear-cache', { token: sessions.reporter });
    expect(denied.status, JSON.stringify(denied.json)).toBe(403);
    const res = await api.call('POST', '/apps/shop/build-configs/main/clear-cache', { token: sessions.dev });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    expect(res.json).toEqual({
      agents: [{ agentId, freedBytes: expect.any(Number), deferred: false }],
      missing: [],
    });
    expect(res.json.agents[0].freedBytes).toBeGreaterThanOrEqual(65536);
    // Asked again, there is nothing left to free.
    const again = await api.call('POST', '/apps/shop/build-configs/main/clear-cache', { token: sessions.dev });
    expect(again.json.agents).toEqual([{ agentId, freedBytes: 0, deferred: false }]);
  });

  it('a registered cell pulls the built image with docker and its credential, and cannot push', {
    timeout: 180_000,
  }, async () => {
    expect(digest, 'the build above pushed').toBeTruthy();
    const cell = await api.call('POST', `/regions/${regionName}/cells`, {
      token: api.adminToken,
      body: { name: 'cell-e2e', apiServer: 'https://127.0.0.1:6443' },
    });
    expect(cell.status, JSON.stringify(cell.json)).toBe(201);
    const credential = cellPullCredential(deriveCellsKey(ROBOT_KEY), regionName, 'cell-e2e');
    const config = join(dir, 'docker-config');
    const login = await dockerCli(
      config,
      ['login', registryHost, '-u', credential.username, '--password-stdin'],
      credential.password,
    );
    expect(login.code, login.out).toBe(0);

    const byDigest = `${registryHost}/${image.repository}@${digest}`;
    tagged.add(byDigest);
    const pulled = await dockerCli(config, ['pull', byDigest]);
    expect(pulled.code, pulled.out).toBe(0);
    expect(pulled.out).toContain(digest);
    const inspected = JSON.parse((await dockerCli(config, ['image', 'inspect', byDigest])).out) as {
      Config: { Labels: Record<string, string> };
    }[];
    expect(inspected[0]?.Config.Labels['berth.run']).toBe(runId);

    const retag = `${registryHost}/${target}:by-cell-${id}`;
    tagged.add(retag);
    const tag = await dockerCli(config, ['tag', byDigest, retag]);
    expect(tag.code, tag.out).toBe(0);
    const pushed = await dockerCli(config, ['push', retag]);
    expect(pushed.code, `docker push with a cell's credential should fail: ${pushed.out}`).not.toBe(0);
    expect(pushed.out).toMatch(/denied|unauthorized|insufficient/i);
  });
});
