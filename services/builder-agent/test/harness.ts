/**
 * builder-agent tests against the region's real etcd, NATS, Redis and Docker Engine, isolated by
 * etcd prefix, subject root and region name, and each test file's own anonymous registry (Debian's
 * `docker-registry` on a free loopback port: the region's may require tokens, and whether it
 * does is none of these tests' business; Docker Engine pushes to 127.0.0.0/8 over http). Local
 * bare git repositories, build
 * configs and runs written as the API writes them, jobs added to the agent's BullMQ queue as the
 * API's dispatcher adds them, the run's log read back from JetStream.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Writable } from 'node:stream';
import {
  type BuildConfig,
  type BuildJob,
  type BuildLogBatch,
  type BuildRun,
  buildQueueName,
  buildRunSchema,
} from '@berth/shared/builds';
import { parseEnv } from '@berth/shared/config';
import { createEtcdClient, type Etcd3 } from '@berth/shared/etcd';
import { EventSubjects } from '@berth/shared/events';
import { BerthKeys } from '@berth/shared/keys';
import { createLogger } from '@berth/shared/logging';
import { type JetStreamClient, NatsClient } from '@berth/shared/nats';
import { createRedis, type Redis } from '@berth/shared/redis';
import { Etcd3Backend, Store } from '@berth/shared/store';
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
import { Queue } from 'bullmq';
import Docker from 'dockerode';
import { pack } from 'tar-fs';
import { builderAgentEnv, defaultBuilderId } from '../src/env.ts';
import { BuilderAgentService } from '../src/service.ts';
import { readProgress } from '../src/steps/docker.ts';

const env = regionEnv();
export const region = {
  ETCD_ENDPOINTS: env.ETCD_ENDPOINTS ?? 'http://127.0.0.1:2379',
  NATS_URL: env.NATS_URL ?? 'nats://127.0.0.1:4222',
  REDIS_URL: env.REDIS_URL ?? 'redis://127.0.0.1:6379',
  DOCKER_HOST: env.DOCKER_HOST,
};
export const docker = new Docker({
  socketPath: (region.DOCKER_HOST ?? 'unix:///var/run/docker.sock').replace(/^unix:\/\//, ''),
});

export type PrivateRegistry = {
  /** host:port on loopback: the agents' REGISTRY_ADDR. */
  addr: string;
  stop(): Promise<void>;
};

/** An anonymous registry (no auth section) of one's own, its storage under `dir`. */
export async function startRegistry(dir: string): Promise<PrivateRegistry> {
  mkdirSync(dir, { recursive: true });
  const addr = `127.0.0.1:${await freePort()}`;
  const config = join(dir, 'registry.yml');
  writeFileSync(
    config,
    [
      'version: 0.1',
      'log:',
      '  level: warn',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${join(dir, 'storage')}`,
      '  delete:',
      '    enabled: true',
      'http:',
      `  addr: ${addr}`,
      '',
    ].join('\n'),
  );
  const child = spawn('/usr/bin/docker-registry', ['serve', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const keep = (d: Buffer) => {
    log = (log + d.toString()).slice(-20_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  // Not left behind by a test process that ends without its afterAll.
  const kill = () => child.kill('SIGKILL');
  process.once('exit', kill);
  const stop = async () => {
    process.off('exit', kill);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited(child);
  };
  try {
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`docker-registry exited: ${log}`);
        return (await fetch(`http://${addr}/v2/`).catch(() => undefined))?.status === 200;
      },
      { timeoutMs: 15_000, message: `the tests' registry at ${addr} answers` },
    );
  } catch (err) {
    await stop();
    throw err;
  }
  return { addr, stop };
}

/**
 * One test file's world: its prefix, subject root and region name, its registry, and clients to
 * look with.
 */
export type World = {
  id: string;
  prefix: string;
  subjectRoot: string;
  regionName: string;
  keys: BerthKeys;
  etcd: Etcd3;
  store: Store;
  redis: Redis;
  nats: NatsClient;
  subjects: EventSubjects;
  tmp: string;
  /** The world's own anonymous registry, host:port: REGISTRY_ADDR of its agents. */
  registry: string;
  env(extra?: Record<string, string>): Record<string, string>;
  close(): Promise<void>;
};

export async function openWorld(options: { etcdEndpoints?: string } = {}): Promise<World> {
  const etcdEndpoints = options.etcdEndpoints ?? region.ETCD_ENDPOINTS;
  const id = uniqueId();
  const prefix = `/t-${id}`;
  const subjectRoot = `t${id}`;
  const regionName = `r${id}`;
  // The region's credentials (once make up turned its auth on); a private etcd has no auth.
  const credentials = regionCredentials(env);
  const auth = regionAuthEnv(env);
  if (etcdEndpoints !== region.ETCD_ENDPOINTS) {
    credentials.etcd = {};
    delete auth.ETCD_USERNAME;
    delete auth.ETCD_PASSWORD_FILE;
  }
  const etcd = createEtcdClient({ endpoints: etcdEndpoints.split(','), ...credentials.etcd });
  const redis = createRedis({ url: region.REDIS_URL, role: 'worker', ...credentials.redis });
  const nats = await NatsClient.connect({
    servers: region.NATS_URL.split(','),
    name: `test-${id}`,
    ...credentials.nats,
  });
  const tmp = mkdtempSync(join(tmpdir(), 'berth-builder-'));
  const registry = await startRegistry(join(tmp, 'registry'));
  const subjects = new EventSubjects(subjectRoot);
  const queues: Queue[] = [];
  return {
    id,
    prefix,
    subjectRoot,
    regionName,
    keys: new BerthKeys(prefix),
    etcd,
    store: new Store(new Etcd3Backend(etcd)),
    redis,
    nats,
    subjects,
    tmp,
    registry: registry.addr,
    env: (extra = {}) => ({
      ETCD_ENDPOINTS: etcdEndpoints,
      NATS_URL: region.NATS_URL,
      REDIS_URL: region.REDIS_URL,
      ...auth,
      DOCKER_HOST: region.DOCKER_HOST ?? '',
      REGISTRY_ADDR: registry.addr,
      ETCD_PREFIX: prefix,
      EVENT_SUBJECT_ROOT: subjectRoot,
      BERTH_REGION: regionName,
      HTTP_ADDR: '127.0.0.1:0',
      LOG_LEVEL: 'warn',
      SHUTDOWN_TIMEOUT: '10s',
      ...extra,
    }),
    close: async () => {
      for (const q of queues) await q.close();
      await etcd
        .delete()
        .prefix(prefix)
        .catch(() => undefined);
      const jsm = await nats.jsm();
      for (const name of [subjects.eventsStream, subjects.buildLogsStream]) {
        await jsm.streams.delete(name).catch(() => undefined);
      }
      await nats.drain();
      for (const key of await redis.keys(`bull:builds-${regionName}-*`)) await redis.del(key);
      redis.disconnect();
      etcd.close();
      // The images this file's runs built, and any compile container left behind.
      for (const c of await docker.listContainers({ all: true, filters: { label: ['berth.build'] } })) {
        if (c.Labels['berth.build']?.includes(id))
          await docker
            .getContainer(c.Id)
            .remove({ force: true })
            .catch(() => undefined);
      }
      for (const image of await docker.listImages({ filters: { label: ['berth.run'] } })) {
        if (!image.Labels?.['berth.run']?.startsWith(id)) continue;
        await docker
          .getImage(image.Id)
          .remove({ force: true })
          .catch(() => undefined);
      }
      await registry.stop();
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}

/** An agent in this process. */
export async function startAgent(world: World, extra: Record<string, string> = {}) {
  const dataDir = mkdtempSync(join(world.tmp, 'agent-'));
  const config = parseEnv(builderAgentEnv, world.env({ BUILDER_DATA_DIR: dataDir, ...extra }));
  let logText = '';
  const logger = createLogger({
    service: 'builder-agent',
    level: 'info',
    destination: new Writable({
      write(chunk, _enc, cb) {
        logText += chunk.toString();
        cb();
      },
    }),
  });
  const service = BuilderAgentService.create(config, logger);
  await service.start();
  return { service, dataDir, id: service.config.builderId, logs: () => logText };
}

export type AgentProcess = {
  id: string;
  dataDir: string;
  port: number;
  child: ChildProcess;
  /** Its stdout and stderr so far (pino's JSON lines). */
  output: () => string;
  /** True when its /readyz answers 200. */
  ready: () => Promise<boolean>;
};

/** An agent as its own process (the service's entry point), as on a build machine. */
export async function spawnAgent(
  world: World,
  options: { dataDir?: string; env?: Record<string, string> } = {},
): Promise<AgentProcess> {
  const dataDir = options.dataDir ?? mkdtempSync(join(world.tmp, 'agent-'));
  const port = await freePort();
  const child = spawn(process.execPath, [join(REPO_ROOT, 'services/builder-agent/src/index.ts')], {
    cwd: REPO_ROOT,
    env: {
      ...process.env,
      ...world.env({
        BUILDER_DATA_DIR: dataDir,
        HTTP_ADDR: `127.0.0.1:${port}`,
        LOG_LEVEL: 'info',
        SHUTDOWN_TIMEOUT: '20s',
        ...options.env,
      }),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => {
    output += d.toString();
  });
  child.stderr?.on('data', (d: Buffer) => {
    output += d.toString();
  });
  return {
    id: options.env?.BUILDER_ID ?? defaultBuilderId(dataDir),
    dataDir,
    port,
    child,
    output: () => output,
    ready: async () => (await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined))?.status === 200,
  };
}

/** A bare repository with one commit of `files` on `main`; returns its path and the commit. */
export function gitRepo(world: World, files: Record<string, string>): { url: string; commit: string; work: string } {
  const name = `repo-${uniqueId()}`;
  const bare = join(world.tmp, `${name}.git`);
  const work = join(world.tmp, name);
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
    })
      .toString()
      .trim();
  execFileSync('git', ['init', '-q', '--bare', '-b', 'main', bare]);
  mkdirSync(work);
  git(work, 'init', '-q', '-b', 'main');
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(work, path)), { recursive: true });
    writeFileSync(join(work, path), text);
  }
  git(work, 'add', '-A');
  git(work, 'commit', '-q', '-m', 'first');
  git(work, 'remote', 'add', 'origin', bare);
  git(work, 'push', '-q', 'origin', 'main');
  return { url: bare, commit: git(work, 'rev-parse', 'HEAD'), work };
}

let configSeq = 0;

/** A build config as the API stores it. */
export async function putConfig(
  world: World,
  over: Partial<BuildConfig> & Pick<BuildConfig, 'git'>,
): Promise<BuildConfig> {
  const now = new Date().toISOString();
  configSeq++;
  const config: BuildConfig = {
    name: `c${configSeq}`,
    app: 'shop',
    id: `${world.id}cfg${String(configSeq).padStart(8, '0')}`,
    dockerfile: 'Dockerfile',
    context: '.',
    cache: true,
    tag: '{branch}-{sha7}-{run}',
    target: `t${world.id}/shop`,
    autoDeploy: false,
    webhookSecretHash: '0'.repeat(64),
    createdAt: now,
    createdBy: 'admin',
    updatedAt: now,
    ...over,
  };
  await world.etcd.put(world.keys.buildConfig(config.app, config.name)).value(JSON.stringify(config));
  return config;
}

let runSeq = 0;

/** A queued run as the API writes it, and its job on `agentId`'s queue. */
export async function queueRun(
  world: World,
  config: BuildConfig,
  agentId: string,
  over: Partial<BuildRun> = {},
  options: { enqueue?: boolean } = {},
): Promise<BuildRun> {
  const now = new Date().toISOString();
  runSeq++;
  const run: BuildRun = {
    id: `${world.id}run${String(runSeq).padStart(8, '0')}`,
    app: config.app,
    config: config.name,
    configId: config.id,
    number: runSeq,
    trigger: { type: 'manual', by: 'admin' },
    ref: config.git.branch,
    commit: null,
    attempt: 1,
    state: 'queued',
    reason: null,
    placement: { agentId, rank: 1, reason: 'affinity' },
    steps: [],
    cache: { enabled: config.cache, hit: null },
    image: null,
    createdAt: now,
    updatedAt: now,
    finishedAt: null,
    ...over,
  };
  await world.etcd.put(world.keys.buildRun(run.id)).value(JSON.stringify(run));
  if (options.enqueue !== false) await addJob(world, agentId, { runId: run.id, attempt: run.attempt });
  return run;
}

export async function addJob(world: World, agentId: string, job: BuildJob): Promise<void> {
  const queue = new Queue(buildQueueName(world.regionName, agentId), { connection: world.redis });
  await queue.add('build', job, { jobId: job.runId, attempts: 1, removeOnComplete: true });
  await queue.close();
}

export async function getRun(world: World, runId: string): Promise<BuildRun> {
  const raw = await world.etcd.get(world.keys.buildRun(runId)).string();
  return buildRunSchema.parse(JSON.parse(raw ?? 'null'));
}

/** Waits until the run is in one of `states`; returns it. */
export async function waitForState(world: World, runId: string, states: BuildRun['state'][], timeoutMs = 60_000) {
  return waitFor(
    async () => {
      const run = await getRun(world, runId);
      return states.includes(run.state) ? run : undefined;
    },
    { timeoutMs, intervalMs: 100, message: `run ${runId} in ${states.join('|')}` },
  );
}

/** Every log batch of a run, in stream order. */
export async function readLog(world: World, runId: string): Promise<BuildLogBatch[]> {
  const jsm = await world.nats.jsm();
  const stream = world.subjects.buildLogsStream;
  const info = await jsm.streams.info(stream);
  const out: BuildLogBatch[] = [];
  let seq = info.state.first_seq;
  while (seq <= info.state.last_seq) {
    const msg = await jsm.direct.getMessage(stream, { seq, next_by_subj: world.subjects.buildLog(runId) });
    if (!msg || msg.seq > info.state.last_seq) break;
    out.push(JSON.parse(new TextDecoder().decode(msg.data)) as BuildLogBatch);
    seq = msg.seq + 1;
  }
  return out;
}

export function logText(batches: BuildLogBatch[]): string {
  return batches.flatMap((b) => b.lines.map((l) => `[${b.step}] ${l.text}`)).join('\n');
}

/** Until the run's log holds `text` (a step's line, e.g. `[compile] started`). */
export async function waitLogged(world: World, runId: string, text: string, timeoutMs = 30_000): Promise<void> {
  await waitFor(async () => logText(await readLog(world, runId)).includes(text), {
    timeoutMs,
    message: `"${text}" in the log`,
  });
}

export const js = (world: World): JetStreamClient => world.nats.js;

/** A tiny shell image built FROM scratch around Debian's busybox-static (no pulls here). */
export async function shellImage(): Promise<string> {
  const tag = 'berth-test/busybox:1';
  try {
    await docker.getImage(tag).inspect();
    return tag;
  } catch {
    // build it
  }
  if (!existsSync('/bin/busybox')) throw new Error('/bin/busybox is missing: apt-get install busybox-static');
  const dir = mkdtempSync(join(tmpdir(), 'busybox-'));
  try {
    mkdirSync(join(dir, 'bin'));
    execFileSync('cp', ['/bin/busybox', join(dir, 'bin/busybox')]);
    symlinkSync('busybox', join(dir, 'bin/sh'));
    writeFileSync(
      join(dir, 'Dockerfile'),
      'FROM scratch\nCOPY bin /bin\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nRUN mkdir -p /tmp && chmod 1777 /tmp\nENV PATH=/bin\n',
    );
    const stream = await docker.buildImage(pack(dir) as unknown as NodeJS.ReadableStream, { t: tag, rm: true });
    await readProgress(stream, () => undefined);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return tag;
}

/** Manifest of `repo@digest` in the world's registry: the status of a HEAD. */
export async function manifestStatus(world: World, repository: string, digest: string): Promise<number> {
  const res = await fetch(`http://${world.registry}/v2/${repository}/manifests/${digest}`, {
    method: 'HEAD',
    headers: {
      Accept: 'application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json',
    },
  });
  return res.status;
}
