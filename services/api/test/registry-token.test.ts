/**
 * The registry token server against a real registry: a private Debian `docker-registry`
 * (distribution 2.8) on a free loopback port, configured with `auth: token` pointing at an API
 * started here, and the raw v2 flow (challenge → token → blob upload → manifest) per role, plus
 * tokens the registry must refuse (another key's kid, expired, another repository, an audience
 * array). Then `docker login` with the region's dockerd and the real docker client, with a
 * password and with a personal access token, and a push and pull per role.
 */
import { spawn } from 'node:child_process';
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cellPullCredential, deriveAgentKey, deriveCellsKey, runPushCredential } from '@berth/shared/registry';
import { exited, REPO_ROOT, regionEnv, waitFor } from '@berth/shared/testing';
import { decodeJwt, SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { libtrustKeyId, parseSigningKey, type SigningKey } from '../src/registry/signing-key.ts';
import { appBody, ensureRegion, startApi, type TestApi } from './harness.ts';
import {
  dockerCli,
  makeSigningKey,
  registryAddress,
  startTokenRegistry,
  type TokenRegistry,
} from './token-registry.ts';

const ISSUER = 'berth-test';
const SERVICE = 'berth-test-registry';
const MANIFEST_V2 = 'application/vnd.docker.distribution.manifest.v2+json';
/** The robot master key (REGISTRY_ROBOT_KEY), as make up makes one. */
const ROBOT_KEY = randomBytes(32);
/** The secret the registry sends with its notifications (REGISTRY_NOTIFY_TOKEN). */
const NOTIFY_TOKEN = randomBytes(32).toString('hex');
const EVENTS_TYPE = 'application/vnd.docker.distribution.events.v1+json';

let dir: string;
let api: TestApi;
let key: SigningKey;
let registry: TokenRegistry;
let registryUrl: string;
let registryHost: string;

/** Each user's password (as harness.user makes them) and a personal access token. */
const creds: Record<string, { password: string; pat: string; session: string }> = {};

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'berth-registry-token-'));
  const { keyFile, certFile } = makeSigningKey(dir);
  key = parseSigningKey(readFileSync(keyFile, 'utf8'));
  registryHost = await registryAddress();
  registryUrl = `http://${registryHost}`;
  api = await startApi({
    REGISTRY_URL: registryUrl,
    REGISTRY_TOKEN_KEY_FILE: keyFile,
    REGISTRY_TOKEN_ISSUER: ISSUER,
    REGISTRY_TOKEN_SERVICE: SERVICE,
    REGISTRY_TOKEN_TTL: '2m',
    REGISTRY_ROBOT_KEY: ROBOT_KEY.toString('hex'),
    REGISTRY_NOTIFY_TOKEN: NOTIFY_TOKEN,
    LOGIN_RATE_LIMIT: '1000',
  });
  // As infra/region.sh configures the region's registry, notifications included (docs/registry.md).
  registry = await startTokenRegistry({
    dir,
    host: registryHost,
    apiUrl: api.url,
    service: SERVICE,
    issuer: ISSUER,
    certFile,
    notifyToken: NOTIFY_TOKEN,
  });

  for (const name of ['rt-owner', 'rt-dev', 'rt-reporter', 'rt-stranger']) {
    const session = await api.user(name);
    const res = await api.call('POST', '/tokens', {
      token: session,
      body: { name: 'registry', scopes: ['write'] },
    });
    expect(res.status, JSON.stringify(res.json)).toBe(201);
    creds[name] = { password: `pw-${name}-12345`, pat: res.json.token, session };
  }
  const owner = creds['rt-owner']?.session;
  for (const [name, isPublic] of [
    ['rt-team', false],
    ['rt-public', true],
  ] as const) {
    const res = await api.call('POST', '/image-groups', { token: owner, body: { name, public: isPublic } });
    expect(res.status, JSON.stringify(res.json)).toBe(201);
  }
  for (const [user, role] of [
    ['rt-dev', 'Developer'],
    ['rt-reporter', 'Reporter'],
  ]) {
    const res = await api.call('PUT', `/image-groups/rt-team/members/${user}`, { token: owner, body: { role } });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
  }
  // The image most tests read, pushed here so that each test stands on its own.
  const token = await tokenFor(['repository:rt-team/app:pull,push'], basic('rt-owner', creds['rt-owner']?.pat ?? ''));
  expect(await pushImage('rt-team/app', 'v1', token)).toBe(201);
});

afterAll(async () => {
  await registry?.stop();
  await api?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

// ---- The raw v2 flow --------------------------------------------------------------------------

type Challenge = { realm: string; service: string; scope?: string; error?: string };

function parseChallenge(header: string | null): Challenge {
  expect(header, 'a WWW-Authenticate challenge').toMatch(/^Bearer /);
  const out: Record<string, string> = {};
  for (const m of (header ?? '').matchAll(/([a-z_]+)="([^"]*)"/g)) out[m[1] as string] = m[2] as string;
  return out as Challenge;
}

function basic(user: string, secret: string): string {
  return `Basic ${Buffer.from(`${user}:${secret}`).toString('base64')}`;
}

/** Asks the token server the way a registry client does; returns the raw answer. */
async function askToken(scopes: string[], authorization?: string, extra: Record<string, string> = {}) {
  const q = new URLSearchParams({ service: SERVICE, ...extra });
  for (const s of scopes) q.append('scope', s);
  return fetch(`${api.url}/api/v1/registry/token?${q}`, {
    headers: authorization ? { authorization } : {},
  });
}

async function tokenFor(scopes: string[], authorization?: string): Promise<string> {
  const res = await askToken(scopes, authorization);
  const body = (await res.json()) as { token: string };
  expect(res.status, JSON.stringify(body)).toBe(200);
  return body.token;
}

/** A request to the registry with a bearer token (or none). */
function reg(path: string, token: string | undefined, init: RequestInit = {}) {
  const headers = new Headers(init.headers);
  if (token) headers.set('authorization', `Bearer ${token}`);
  return fetch(path.startsWith('http') ? path : `${registryUrl}${path}`, { ...init, headers });
}

/** Uploads one blob monolithically (POST, then PUT with the digest). */
async function uploadBlob(repo: string, token: string, data: Buffer): Promise<{ digest: string; status: number }> {
  const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
  const start = await reg(`/v2/${repo}/blobs/uploads/`, token, { method: 'POST' });
  if (start.status !== 202) return { digest, status: start.status };
  const location = new URL(start.headers.get('location') ?? '', registryUrl);
  location.searchParams.set('digest', digest);
  const put = await reg(location.toString(), token, {
    method: 'PUT',
    headers: { 'content-type': 'application/octet-stream' },
    body: new Uint8Array(data),
  });
  return { digest, status: put.status };
}

/** Pushes a one-layer image manifest as `repo:tag`; returns the manifest PUT's status. */
async function pushImage(repo: string, tag: string, token: string): Promise<number> {
  const configBlob = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers' } }));
  const layer = randomBytes(512);
  const config = await uploadBlob(repo, token, configBlob);
  expect(config.status).toBe(201);
  const layerUp = await uploadBlob(repo, token, layer);
  expect(layerUp.status).toBe(201);
  const manifest = {
    schemaVersion: 2,
    mediaType: MANIFEST_V2,
    config: {
      mediaType: 'application/vnd.docker.container.image.v1+json',
      size: configBlob.length,
      digest: config.digest,
    },
    layers: [
      { mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', size: layer.length, digest: layerUp.digest },
    ],
  };
  const res = await reg(`/v2/${repo}/manifests/${tag}`, token, {
    method: 'PUT',
    headers: { 'content-type': MANIFEST_V2 },
    body: JSON.stringify(manifest),
  });
  return res.status;
}

function getManifest(repo: string, tag: string, token: string | undefined) {
  return reg(`/v2/${repo}/manifests/${tag}`, token, { headers: { accept: MANIFEST_V2 } });
}

/** What the registry says when it refuses a token: 401 with the challenge's error. */
async function expectRefused(res: Response, error: 'invalid_token' | 'insufficient_scope') {
  expect([401, 403], `status ${res.status}`).toContain(res.status);
  expect(parseChallenge(res.headers.get('www-authenticate')).error).toBe(error);
}

describe('the raw v2 flow', () => {
  it("a Developer follows the registry's challenge to a token and pushes, then pulls", async () => {
    const dev = basic('rt-dev', creds['rt-dev']?.password ?? '');
    const first = await reg('/v2/rt-team/app/blobs/uploads/', undefined, { method: 'POST' });
    expect(first.status).toBe(401);
    const challenge = parseChallenge(first.headers.get('www-authenticate'));
    expect(challenge).toMatchObject({ realm: `${api.url}/api/v1/registry/token`, service: SERVICE });
    // The registry names the actions in no fixed order.
    const [type, name, actions] = (challenge.scope ?? '').split(':');
    expect([type, name, actions?.split(',').sort()]).toEqual(['repository', 'rt-team/app', ['pull', 'push']]);
    const token = await tokenFor([challenge.scope ?? ''], dev);
    expect(decodeJwt(token)).toMatchObject({
      iss: ISSUER,
      sub: 'rt-dev',
      aud: SERVICE,
      access: [{ type: 'repository', name: 'rt-team/app', actions: ['pull', 'push'] }],
    });
    expect(await pushImage('rt-team/app', 'by-dev', token)).toBe(201);
    const pulled = await getManifest('rt-team/app', 'by-dev', token);
    expect(pulled.status).toBe(200);
    expect(((await pulled.json()) as { schemaVersion: number }).schemaVersion).toBe(2);
  });

  it('a personal access token works as the password, and its owner is the subject', async () => {
    const token = await tokenFor(['repository:rt-team/app:pull,push'], basic('rt-dev', creds['rt-dev']?.pat ?? ''));
    expect(decodeJwt(token).sub).toBe('rt-dev');
    expect(await pushImage('rt-team/app', 'by-pat', token)).toBe(201);
    // Someone else's token is not a password of this user.
    const res = await askToken(['repository:rt-team/app:pull'], basic('rt-dev', creds['rt-owner']?.pat ?? ''));
    expect(res.status).toBe(401);
  });

  it('a Reporter pulls but is granted no push, and the registry refuses the push', async () => {
    const token = await tokenFor(
      ['repository:rt-team/app:pull,push'],
      basic('rt-reporter', creds['rt-reporter']?.pat ?? ''),
    );
    expect(decodeJwt(token).access).toEqual([{ type: 'repository', name: 'rt-team/app', actions: ['pull'] }]);
    expect((await getManifest('rt-team/app', 'v1', token)).status).toBe(200);
    const push = await reg('/v2/rt-team/app/blobs/uploads/', token, { method: 'POST' });
    await expectRefused(push, 'insufficient_scope');
  });

  it('a non-member of a private group gets a token with no access and cannot pull', async () => {
    const token = await tokenFor(
      ['repository:rt-team/app:pull'],
      basic('rt-stranger', creds['rt-stranger']?.pat ?? ''),
    );
    expect(decodeJwt(token).access).toEqual([]);
    await expectRefused(await getManifest('rt-team/app', 'v1', token), 'insufficient_scope');
    // Nor can anyone without credentials.
    const anonymous = await tokenFor(['repository:rt-team/app:pull']);
    expect(decodeJwt(anonymous)).toMatchObject({ sub: '', access: [] });
    await expectRefused(await getManifest('rt-team/app', 'v1', anonymous), 'insufficient_scope');
  });

  it('anyone pulls from a public group without credentials; only members push to it', async () => {
    const owner = await tokenFor(
      ['repository:rt-public/tool:pull,push'],
      basic('rt-owner', creds['rt-owner']?.pat ?? ''),
    );
    expect(await pushImage('rt-public/tool', 'v1', owner)).toBe(201);
    const anonymous = await tokenFor(['repository:rt-public/tool:pull,push']);
    expect(decodeJwt(anonymous).access).toEqual([{ type: 'repository', name: 'rt-public/tool', actions: ['pull'] }]);
    expect((await getManifest('rt-public/tool', 'v1', anonymous)).status).toBe(200);
    await expectRefused(
      await reg('/v2/rt-public/tool/blobs/uploads/', anonymous, { method: 'POST' }),
      'insufficient_scope',
    );
  });

  it('a token for one repository does not open another', async () => {
    const token = await tokenFor(['repository:rt-team/app:pull'], basic('rt-dev', creds['rt-dev']?.pat ?? ''));
    expect(
      await pushImage(
        'rt-team/other',
        'v1',
        await tokenFor(['repository:rt-team/other:pull,push'], basic('rt-dev', creds['rt-dev']?.pat ?? '')),
      ),
    ).toBe(201);
    await expectRefused(await getManifest('rt-team/other', 'v1', token), 'insufficient_scope');
  });

  it('wrong credentials are a 401 from the token server; a bad scope or service a 400 naming it', async () => {
    const wrong = await askToken(['repository:rt-team/app:pull'], basic('rt-dev', 'not-the-password'));
    expect(wrong.status).toBe(401);
    expect(wrong.headers.get('www-authenticate')).toMatch(/^Basic /);
    expect(wrong.headers.get('content-type')).toMatch(/problem\+json/);
    expect((await askToken(['repository:rt-team/app:pull'], basic('nobody', 'whatever-123'))).status).toBe(401);
    const badScope = await askToken(['repository:rt-team/app'], basic('rt-dev', creds['rt-dev']?.pat ?? ''));
    expect(badScope.status).toBe(400);
    expect(((await badScope.json()) as { errors: { path: string }[] }).errors[0]?.path).toBe('query:scope');
    const badService = await fetch(`${api.url}/api/v1/registry/token?service=elsewhere`);
    expect(badService.status).toBe(400);
    const badAccount = await askToken([], basic('rt-dev', creds['rt-dev']?.pat ?? ''), { account: 'rt-owner' });
    expect(badAccount.status).toBe(400);
  });

  it('docker login asks with offline_token and no scope, and gets a token with no access', async () => {
    const res = await askToken([], basic('rt-dev', creds['rt-dev']?.password ?? ''), {
      account: 'rt-dev',
      client_id: 'docker',
      offline_token: 'true',
    });
    const body = (await res.json()) as { token: string; access_token: string; expires_in: number; issued_at: string };
    expect(res.status).toBe(200);
    expect(body.access_token).toBe(body.token);
    expect(body.expires_in).toBe(120);
    expect(Date.parse(body.issued_at)).toBeGreaterThan(Date.now() - 60_000);
    expect(decodeJwt(body.token).access).toEqual([]);
  });
});

// ---- Repositories and tags, read from the registry ------------------------------------------------

describe('repositories and tags', () => {
  const asOwner = () =>
    tokenFor(['repository:rt-team/tagged:pull,push'], basic('rt-owner', creds['rt-owner']?.pat ?? ''));

  beforeAll(async () => {
    const token = await asOwner();
    expect(await pushImage('rt-team/tagged', 'one', token)).toBe(201);
    expect(await pushImage('rt-team/tagged', 'two', token)).toBe(201);
    // `alias` names the same image as `one`.
    const one = await getManifest('rt-team/tagged', 'one', token);
    const put = await reg('/v2/rt-team/tagged/manifests/alias', token, {
      method: 'PUT',
      headers: { 'content-type': MANIFEST_V2 },
      body: await one.text(),
    });
    expect(put.status).toBe(201);
  });

  it("members list the group's repositories; a stranger gets 404 for a private group", async () => {
    const reporter = creds['rt-reporter']?.session;
    const repos = await api.call('GET', '/image-groups/rt-team/repos', { token: reporter });
    expect(repos.status, JSON.stringify(repos.json)).toBe(200);
    expect(repos.json.items.map((r: { name: string }) => r.name)).toContain('rt-team/tagged');
    expect(repos.json.items.find((r: { name: string }) => r.name === 'rt-team/tagged')).toEqual({
      name: 'rt-team/tagged',
      group: 'rt-team',
      repo: 'tagged',
    });
    expect(repos.json.items.every((r: { group: string }) => r.group === 'rt-team')).toBe(true);
    const stranger = creds['rt-stranger']?.session;
    expect((await api.call('GET', '/image-groups/rt-team/repos', { token: stranger })).status).toBe(404);
    expect((await api.call('GET', '/image-groups/rt-team/repos/tagged/tags', { token: stranger })).status).toBe(404);
  });

  it('tags show their digest and size, and an unknown repository is 404', async () => {
    const res = await api.call('GET', '/image-groups/rt-team/repos/tagged/tags', {
      token: creds['rt-reporter']?.session,
    });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    const tags = res.json.items as { tag: string; digest: string; size: number; mediaType: string }[];
    expect(tags.map((t) => t.tag)).toEqual(['alias', 'one', 'two']);
    expect(tags[0]?.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(tags[0]?.digest).toBe(tags[1]?.digest);
    expect(tags[2]?.digest).not.toBe(tags[1]?.digest);
    expect(tags[0]?.size).toBeGreaterThan(512);
    expect(tags[0]?.mediaType).toBe(MANIFEST_V2);
    const paged = await api.call('GET', '/image-groups/rt-team/repos/tagged/tags?limit=2', {
      token: creds['rt-reporter']?.session,
    });
    expect(paged.json.next).toBe('one');
    const missing = await api.call('GET', '/image-groups/rt-team/repos/nothing/tags', {
      token: creds['rt-owner']?.session,
    });
    expect(missing.status).toBe(404);
  });

  type PushedTag = { tag: string; digest: string; pushedAt: string | null; pushedBy: string | null };
  /** The repository's tags once `done` holds for them (notifications are asynchronous). */
  const tagsWhen = (repo: string, done: (tags: Map<string, PushedTag>) => boolean) =>
    waitFor(
      async () => {
        const res = await api.call('GET', `/image-groups/rt-team/repos/${repo}/tags`, {
          token: creds['rt-reporter']?.session,
        });
        expect(res.status, JSON.stringify(res.json)).toBe(200);
        const tags = new Map<string, PushedTag>(res.json.items.map((t: PushedTag) => [t.tag, t]));
        return done(tags) ? tags : undefined;
      },
      { timeoutMs: 20_000, intervalMs: 200, message: `the pushes to rt-team/${repo} are recorded` },
    );
  const recent = (at: string | null | undefined) =>
    at !== null && at !== undefined && Math.abs(Date.now() - Date.parse(at)) < 5 * 60_000;

  it('each tag shows who pushed it and when, from the registry’s notifications; the last push wins', async () => {
    const tagged = await tagsWhen('tagged', (t) => t.get('one')?.pushedBy === 'rt-owner');
    for (const name of ['alias', 'one', 'two']) {
      expect(tagged.get(name), name).toMatchObject({ pushedBy: 'rt-owner' });
      expect(recent(tagged.get(name)?.pushedAt), String(tagged.get(name)?.pushedAt)).toBe(true);
    }
    const owner = await tokenFor(
      ['repository:rt-team/pushed:pull,push'],
      basic('rt-owner', creds['rt-owner']?.pat ?? ''),
    );
    const dev = await tokenFor(['repository:rt-team/pushed:pull,push'], basic('rt-dev', creds['rt-dev']?.pat ?? ''));
    expect(await pushImage('rt-team/pushed', 'v1', owner)).toBe(201);
    expect(await pushImage('rt-team/pushed', 'v2', dev)).toBe(201);
    const first = await tagsWhen(
      'pushed',
      (t) => t.get('v1')?.pushedBy === 'rt-owner' && t.get('v2')?.pushedBy === 'rt-dev',
    );
    expect(recent(first.get('v2')?.pushedAt)).toBe(true);
    // The Developer pushes v1 again, another image: the tag is theirs now.
    expect(await pushImage('rt-team/pushed', 'v1', dev)).toBe(201);
    const again = await tagsWhen('pushed', (t) => t.get('v1')?.pushedBy === 'rt-dev');
    expect(again.get('v1')?.digest).not.toBe(first.get('v1')?.digest);
    expect(Date.parse(again.get('v1')?.pushedAt ?? '')).toBeGreaterThan(Date.parse(first.get('v1')?.pushedAt ?? ''));
  });

  it('the notification endpoint wants the registry’s secret, and records an envelope posted by hand', async () => {
    const v2 = (await tagsWhen('pushed', (t) => t.get('v2')?.pushedBy === 'rt-dev')).get('v2') as PushedTag;
    const envelope = (at: string, actor: string) => ({
      events: [
        {
          id: randomBytes(8).toString('hex'),
          timestamp: at,
          action: 'push',
          target: {
            mediaType: MANIFEST_V2,
            digest: v2.digest,
            size: 528,
            repository: 'rt-team/pushed',
            url: `${registryUrl}/v2/rt-team/pushed/manifests/${v2.digest}`,
            tag: 'v2',
          },
          request: { id: 'by-hand', method: 'PUT', useragent: 'test' },
          actor: { name: actor },
          source: { addr: registryHost },
        },
        // A pull and a blob are fine and change nothing.
        { timestamp: at, action: 'pull', target: { repository: 'rt-team/pushed', digest: v2.digest, tag: 'v2' } },
        {
          timestamp: at,
          action: 'push',
          target: { repository: 'rt-team/pushed', mediaType: 'application/octet-stream' },
        },
      ],
    });
    const post = (body: unknown, authorization?: string, raw?: string) =>
      fetch(`${api.url}/api/v1/registry/notifications`, {
        method: 'POST',
        headers: { 'content-type': EVENTS_TYPE, ...(authorization ? { authorization } : {}) },
        body: raw ?? JSON.stringify(body),
      });
    const later = new Date(Date.now() + 1000).toISOString();
    for (const wrong of [undefined, `Bearer ${NOTIFY_TOKEN.slice(1)}`, `Bearer ${creds['rt-owner']?.session}`]) {
      const res = await post(envelope(later, 'forger'), wrong);
      expect(res.status, String(wrong)).toBe(401);
      expect(res.headers.get('content-type')).toMatch(/problem\+json/);
    }
    expect((await post(undefined, `Bearer ${NOTIFY_TOKEN}`, '{"events": [')).status).toBe(400);
    const ok = await post(envelope(later, 'ci-bot'), `Bearer ${NOTIFY_TOKEN}`);
    expect(ok.status).toBe(200);
    expect(await ok.json()).toEqual({ events: 3, recorded: 1, forgotten: 0 });
    // An older event (a late redelivery) changes nothing.
    const old = await post(envelope('2020-01-01T00:00:00Z', 'old-bot'), `Bearer ${NOTIFY_TOKEN}`);
    expect(await old.json()).toMatchObject({ recorded: 0 });
    const tags = await tagsWhen('pushed', () => true);
    expect(tags.get('v2')).toMatchObject({ pushedBy: 'ci-bot', pushedAt: later });
  });

  it('Owner and Master delete a tag; not while another tag names the same image', async () => {
    const path = '/image-groups/rt-team/repos/tagged/tags';
    expect((await api.call('DELETE', `${path}/two`, { token: creds['rt-dev']?.session })).status).toBe(403);
    const shared = await api.call('DELETE', `${path}/one`, { token: creds['rt-owner']?.session });
    expect(shared.status).toBe(409);
    expect(shared.json.tags).toEqual(['alias']);
    expect((await api.call('DELETE', `${path}/two`, { token: creds['rt-owner']?.session })).status).toBe(204);
    // Its record goes with it (the registry's delete notification would take it too).
    const { store, keys } = api.service.runtime;
    expect(await store.get(keys.imageTag('rt-team', 'tagged', 'two'), z.unknown())).toBeUndefined();
    const left = await api.call('GET', path, { token: creds['rt-owner']?.session });
    expect(left.json.items.map((t: { tag: string }) => t.tag)).toEqual(['alias', 'one']);
    expect((await getManifest('rt-team/tagged', 'two', await asOwner())).status).toBe(404);
    expect((await api.call('DELETE', `${path}/two`, { token: creds['rt-owner']?.session })).status).toBe(404);
  });
});

describe('deleting an image group', () => {
  it('is refused while its repositories hold tags, so a new group of its name inherits no images', async () => {
    const owner = creds['rt-owner'];
    const refused = await api.call('DELETE', '/image-groups/rt-team', { token: owner?.session });
    expect(refused.status).toBe(409);
    expect(refused.json.repositories).toEqual(expect.arrayContaining(['rt-team/app', 'rt-team/tagged']));
    expect((await api.call('POST', '/image-groups', { token: owner?.session, body: { name: 'rt-gone' } })).status).toBe(
      201,
    );
    const token = await tokenFor(['repository:rt-gone/app:pull,push'], basic('rt-owner', owner?.pat ?? ''));
    expect(await pushImage('rt-gone/app', 'only', token)).toBe(201);
    expect((await api.call('DELETE', '/image-groups/rt-gone', { token: owner?.session })).status).toBe(409);
    const untag = await api.call('DELETE', '/image-groups/rt-gone/repos/app/tags/only', { token: owner?.session });
    expect(untag.status).toBe(204);
    expect((await api.call('DELETE', '/image-groups/rt-gone', { token: owner?.session })).status).toBe(204);
  });
});

// ---- Tokens the registry must refuse ------------------------------------------------------------

/** Signs claims with `signer` and the given header fields, as a forger or a broken server would. */
async function forge(
  claims: Record<string, unknown>,
  header: Record<string, unknown>,
  signer = key.privateKey,
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({
    iss: ISSUER,
    sub: 'rt-dev',
    aud: SERVICE,
    iat: now,
    nbf: now,
    exp: now + 120,
    jti: randomBytes(8).toString('hex'),
    access: [{ type: 'repository', name: 'rt-team/app', actions: ['pull'] }],
    ...claims,
  })
    .setProtectedHeader({ alg: 'ES256', typ: 'JWT', ...header })
    .sign(signer);
}

describe('the registry checks what it is given', () => {
  it('accepts our key by its libtrust kid alone, and by x5c alone', async () => {
    expect((await getManifest('rt-team/app', 'v1', await forge({}, { kid: key.kid }))).status).toBe(200);
    expect((await getManifest('rt-team/app', 'v1', await forge({}, { x5c: [key.certificate] }))).status).toBe(200);
  });

  it('refuses a token signed by another key, named by that key’s kid', async () => {
    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const token = await forge({}, { kid: libtrustKeyId(other.publicKey) }, other.privateKey);
    await expectRefused(await getManifest('rt-team/app', 'v1', token), 'invalid_token');
    // Nor does naming our kid help a token that our key did not sign.
    const posing = await forge({}, { kid: key.kid }, other.privateKey);
    await expectRefused(await getManifest('rt-team/app', 'v1', posing), 'invalid_token');
  });

  it('refuses an expired token', async () => {
    const past = Math.floor(Date.now() / 1000) - 3600;
    const token = await forge({ iat: past, nbf: past, exp: past + 300 }, { kid: key.kid });
    await expectRefused(await getManifest('rt-team/app', 'v1', token), 'invalid_token');
  });

  it('refuses an audience array (distribution 2.8 reads aud as a string) and another issuer', async () => {
    await expectRefused(
      await getManifest('rt-team/app', 'v1', await forge({ aud: [SERVICE] }, { kid: key.kid })),
      'invalid_token',
    );
    await expectRefused(
      await getManifest('rt-team/app', 'v1', await forge({ iss: 'someone' }, { kid: key.kid })),
      'invalid_token',
    );
  });
});

// ---- Robots: the cells' pull credential and a build's push credential ----------------------------

describe('robot credentials', () => {
  const region = 'local';
  const agentId = `rt-agent-${randomBytes(3).toString('hex')}`;
  let lease: ReturnType<TestApi['service']['runtime']['etcd']['lease']>;

  beforeAll(async () => {
    await ensureRegion(api, region);
    const owner = creds['rt-owner']?.session;
    const pushed = await tokenFor(
      ['repository:rt-team/base:pull,push'],
      basic('rt-owner', creds['rt-owner']?.pat ?? ''),
    );
    expect(await pushImage('rt-team/base', 'v1', pushed)).toBe(201);
    // A build machine registered as builder-agent registers, for the dispatcher to place runs on.
    lease = api.service.runtime.etcd.lease(60);
    const at = new Date().toISOString();
    await lease.put(api.service.runtime.keys.builder(region, agentId)).value(
      JSON.stringify({
        id: agentId,
        region,
        slots: 1,
        weight: 1,
        labels: {},
        draining: false,
        diskFreeBytes: 1e10,
        cacheBytes: 0,
        version: 'test',
        startedAt: at,
        reportedAt: at,
      }),
    );
    const app = await api.call('POST', '/apps', {
      token: owner,
      body: { ...appBody('rt-shop'), image: 'rt-team/shop' },
    });
    expect(app.status, JSON.stringify(app.json)).toBe(201);
    const config = await api.call('POST', '/apps/rt-shop/build-configs', {
      token: owner,
      body: { name: 'main', git: { url: 'file:///srv/git/shop.git' }, target: 'rt-team/shop' },
    });
    expect(config.status, JSON.stringify(config.json)).toBe(201);
  });

  afterAll(async () => {
    await lease?.revoke();
  });

  it('a registered cell pulls from any group with its credential and pushes nothing; an unknown one is refused', async () => {
    const cellsKey = deriveCellsKey(ROBOT_KEY);
    const res = await api.call('POST', `/regions/${region}/cells`, {
      token: api.adminToken,
      body: { name: 'rt-cell', apiServer: 'https://127.0.0.1:6443' },
    });
    expect([201, 409], JSON.stringify(res.json)).toContain(res.status);
    const cell = cellPullCredential(cellsKey, region, 'rt-cell');
    const token = await tokenFor(['repository:rt-team/base:pull,push'], basic(cell.username, cell.password));
    expect(decodeJwt(token)).toMatchObject({
      sub: 'cell@local/rt-cell',
      access: [{ type: 'repository', name: 'rt-team/base', actions: ['pull'] }],
    });
    expect((await getManifest('rt-team/base', 'v1', token)).status).toBe(200);
    await expectRefused(await reg('/v2/rt-team/base/blobs/uploads/', token, { method: 'POST' }), 'insufficient_scope');
    // Another cell's password, a cell not registered, and another region's cell are all refused.
    const other = cellPullCredential(cellsKey, region, 'rt-other');
    for (const [user, password] of [
      [cell.username, other.password],
      [other.username, other.password],
      ['cell@elsewhere/rt-cell', cellPullCredential(cellsKey, 'elsewhere', 'rt-cell').password],
    ] as const) {
      const refused = await askToken(['repository:rt-team/base:pull'], basic(user, password));
      expect(refused.status, user).toBe(401);
    }
  });

  it("a build's attempt pushes to its run's repository only, and only while it runs on its agent", async () => {
    const started = await api.call('POST', '/apps/rt-shop/build-configs/main/runs', {
      token: creds['rt-owner']?.session,
      body: {},
    });
    expect(started.status, JSON.stringify(started.json)).toBe(201);
    const runId = started.json.id as string;
    await waitFor(
      async () =>
        (await api.call('GET', `/builds/${runId}`, { token: api.adminToken })).json.placement?.agentId === agentId,
      { timeoutMs: 20_000, message: 'the dispatcher places the run on the agent' },
    );
    const agentKey = deriveAgentKey(ROBOT_KEY, agentId);
    const robot = runPushCredential(agentKey, runId, 1);
    const token = await tokenFor(
      ['repository:rt-team/shop:pull,push', 'repository:rt-team/base:pull,push', 'repository:rt-public/tool:pull,push'],
      basic(robot.username, robot.password),
    );
    expect(decodeJwt(token)).toMatchObject({
      sub: robot.username,
      access: [
        { type: 'repository', name: 'rt-team/shop', actions: ['pull', 'push'] },
        { type: 'repository', name: 'rt-public/tool', actions: ['pull'] },
      ],
    });
    expect(await pushImage('rt-team/shop', 'built', token)).toBe(201);
    await expectRefused(await reg('/v2/rt-team/base/blobs/uploads/', token, { method: 'POST' }), 'insufficient_scope');
    // Another agent's key or another attempt makes a wrong password.
    for (const wrong of [
      runPushCredential(deriveAgentKey(ROBOT_KEY, 'someone-else'), runId, 1),
      runPushCredential(agentKey, runId, 2),
    ]) {
      expect((await askToken(['repository:rt-team/shop:push'], basic(wrong.username, wrong.password))).status).toBe(
        401,
      );
    }
    // A finished run's credential opens nothing.
    const cancelled = await api.call('POST', `/builds/${runId}/cancel`, { token: creds['rt-owner']?.session });
    expect(cancelled.status, JSON.stringify(cancelled.json)).toBeLessThan(300);
    await waitFor(
      async () => (await api.call('GET', `/builds/${runId}`, { token: api.adminToken })).json.state === 'cancelled',
      { timeoutMs: 20_000, message: 'the run is cancelled' },
    );
    expect((await askToken(['repository:rt-team/shop:push'], basic(robot.username, robot.password))).status).toBe(401);
  });
});

// ---- Schemathesis ------------------------------------------------------------------------------

const schemathesis = process.env.BERTH_SCHEMATHESIS ?? regionEnv().BERTH_SCHEMATHESIS;

describe('the OpenAPI document of the token endpoint', () => {
  // schemathesis.test.ts runs an API without a key, which has no token endpoint: this one has.
  it('holds against Schemathesis: no 5xx, every answer as documented', { timeout: 180_000 }, async () => {
    expect(schemathesis && existsSync(schemathesis), 'schemathesis is installed by infra/test-tools.sh').toBe(true);
    const args = [
      '--config-file',
      join(REPO_ROOT, 'services/api/test/schemathesis.toml'),
      'run',
      `${api.url}/api/v1/openapi.json`,
      '--include-operation-id-regex',
      '^(getRegistryToken|listImageRepos|listImageTags)$',
      '-H',
      // A Berth bearer token is a caller of the token endpoint too (docs/registry.md).
      `Authorization: Bearer ${creds['rt-dev']?.session}`,
      '--checks',
      'all',
      // As in schemathesis.test.ts: a well-formed request may still be refused (another service).
      '--exclude-checks',
      'positive_data_acceptance',
      '--max-examples',
      '30',
      '--seed',
      '1',
      '--workers',
      '1',
      '--no-color',
    ];
    const child = spawn(schemathesis as string, args, {
      cwd: dir,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NO_COLOR: '1' },
    });
    let output = '';
    child.stdout?.on('data', (d) => {
      output += d;
    });
    child.stderr?.on('data', (d) => {
      output += d;
    });
    const code = await exited(child);
    expect(code, output.slice(-6000)).toBe(0);
    expect(output).toMatch(/Tested: 3\b/);
  });
});

// ---- The real docker client -------------------------------------------------------------------

const dockerHost = process.env.DOCKER_HOST ?? regionEnv().DOCKER_HOST;

describe('docker', () => {
  let config: string;
  /** Runs the docker client without blocking: the API it logs in against runs in this process. */
  const run = (args: string[], input?: string) =>
    dockerCli(config, args, { dockerHost, ...(input === undefined ? {} : { input }) });
  const docker = async (args: string[], input?: string): Promise<string> => {
    const { code, out } = await run(args, input);
    if (code !== 0) throw new Error(`docker ${args.join(' ')} failed (${code}): ${out}`);
    return out;
  };
  const dockerFails = async (args: string[], input?: string): Promise<string> => {
    const { code, out } = await run(args, input);
    expect(code, `docker ${args.join(' ')} should fail: ${out}`).not.toBe(0);
    return out;
  };
  const login = (user: string, secret: string) =>
    docker(['login', registryHost, '-u', user, '--password-stdin'], secret);

  beforeAll(() => {
    expect(dockerHost, 'the region’s dockerd (DOCKER_HOST in .local/env, written by make up)').toBeTruthy();
    config = join(dir, 'docker-config');
  });

  it('docker login succeeds with a password and with a personal access token, and fails with a wrong one', async () => {
    expect(await login('rt-dev', creds['rt-dev']?.password ?? '')).toMatch(/Login Succeeded/);
    expect(await login('rt-reporter', creds['rt-reporter']?.pat ?? '')).toMatch(/Login Succeeded/);
    expect(await dockerFails(['login', registryHost, '-u', 'rt-dev', '--password-stdin'], 'wrong-password')).toMatch(
      /unauthorized|401/i,
    );
  });

  it('a Developer pushes with docker, a Reporter pulls but cannot push, a stranger cannot pull', {
    timeout: 180_000,
  }, async () => {
    const source = (await docker(['images', '--format', '{{.Repository}}:{{.Tag}}']))
      .split('\n')
      .find((i) => i.includes('/pause:'));
    expect(source, 'a small image in the region’s dockerd (make up loads the pause image)').toBeTruthy();
    const image = `${registryHost}/rt-team/pause:dock`;
    const reporterTag = `${registryHost}/rt-team/pause:by-reporter`;
    await docker(['tag', source as string, image]);
    try {
      await login('rt-dev', creds['rt-dev']?.pat ?? '');
      await docker(['push', image]);
      await docker(['rmi', image]);
      await login('rt-reporter', creds['rt-reporter']?.pat ?? '');
      await docker(['pull', image]);
      await docker(['tag', image, reporterTag]);
      expect(await dockerFails(['push', reporterTag])).toMatch(/denied|unauthorized|insufficient/i);
      await docker(['rmi', image, reporterTag]);
      await login('rt-stranger', creds['rt-stranger']?.pat ?? '');
      expect(await dockerFails(['pull', image])).toMatch(/denied|unauthorized|not found/i);
    } finally {
      await run(['rmi', image, reporterTag]);
    }
  });

  it('without logging in, docker pulls from a public group and not from a private one', {
    timeout: 180_000,
  }, async () => {
    const source = (await docker(['images', '--format', '{{.Repository}}:{{.Tag}}']))
      .split('\n')
      .find((i) => i.includes('/pause:'));
    const image = `${registryHost}/rt-public/pause:dock`;
    await docker(['tag', source as string, image]);
    try {
      await login('rt-owner', creds['rt-owner']?.pat ?? '');
      await docker(['push', image]);
      await docker(['rmi', image]);
      await docker(['logout', registryHost]);
      await docker(['pull', image]);
      expect(await dockerFails(['pull', `${registryHost}/rt-team/pause:dock`])).toMatch(
        /denied|unauthorized|not found/i,
      );
    } finally {
      await run(['rmi', image]);
    }
  });
});
