/**
 * The lb-agent's Lua (services/lb-agent/lua/berth) in Debian's real nginx, configured as the
 * contract in docs/traffic.md says: shared dicts, init/log hooks, the control server on a unix
 * socket, and one app's upstream and domain rendered by @berth/shared/nginx. Node backends on
 * loopback answer their name. Routing documents go in through the control socket as the agent's
 * would; requests go through nginx's traffic port.
 */
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { Agent, createServer, type IncomingHttpHeaders, type RequestOptions, request, type Server } from 'node:http';
import { join } from 'node:path';
import type { Domain } from '@berth/shared/model';
import { renderServer, renderUpstream } from '@berth/shared/nginx';
import { freePort, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { paths, renderGenerationFile } from '../src/nginx/main-conf.ts';
import { removeNginx, startNginx, type TestNginx } from './harness.ts';

const HOST = 'shop.example.test';

type Reply = { status: number; headers: IncomingHttpHeaders; body: string };

let nginx: TestNginx;
let prefix: string;
let listen: string;
const backends: Server[] = [];
const ports: Record<string, number> = {};
const agent = new Agent({ keepAlive: true, maxSockets: 4 });

/** A backend on loopback answering its name. */
async function startBackend(name: string): Promise<number> {
  const server = createServer((_req, res) => {
    res.setHeader('content-type', 'text/plain');
    res.end(name);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  backends.push(server);
  return (server.address() as { port: number }).port;
}

function peer(name: string, stale = false) {
  return { address: '127.0.0.1', ports: { http: ports[name] }, cell: 'cell-a', stale };
}

function send(options: RequestOptions, body?: string): Promise<Reply> {
  return new Promise((resolvePromise, reject) => {
    const req = request(options, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => {
        text += d;
      });
      res.on('end', () => resolvePromise({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** A request to the control server on its unix socket. */
async function control(
  method: string,
  path: string,
  body?: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await send(
    { socketPath: paths(prefix).controlSocket, method, path, headers: { host: 'berth-control', ...headers } },
    body,
  );
  return { status: res.status, json: JSON.parse(res.body) };
}

/** Pushes a routing document; returns the exact body sent and the answer. */
async function push(doc: Record<string, unknown>, headers: Record<string, string> = {}) {
  const body = JSON.stringify({ app: 'shop', weights: null, stickiness: null, ...doc });
  return { body, ...(await control('PUT', '/routes/shop', body, headers)) };
}

/** A request through nginx's traffic port for the shop domain. */
function get(headers: Record<string, string> = {}): Promise<Reply> {
  const [hostname, port] = listen.split(':');
  return send({ hostname, port: Number(port), path: '/', agent, headers: { host: HOST, ...headers } });
}

/** Sends n requests (4 at a time) and counts the answering backends and failures. */
async function burst(n: number, headers: Record<string, string> = {}): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  let next = 0;
  const worker = async () => {
    while (next < n) {
      next++;
      const res = await get(headers);
      const key = res.status === 200 ? res.body : `status ${res.status}`;
      counts[key] = (counts[key] ?? 0) + 1;
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  return counts;
}

type VersionStats = {
  requests: number;
  status: Record<string, number>;
  upstreamLatencySum: number;
  upstreamLatencyCount: number;
};

async function stats(): Promise<Record<string, VersionStats>> {
  const res = await control('GET', '/stats');
  expect(res.status).toBe(200);
  return ((res.json.apps as Record<string, Record<string, VersionStats>>).shop ?? {}) as Record<string, VersionStats>;
}

/** Reloads nginx (HUP) and waits until a worker answers `generation` on the control socket. */
async function reload(generation: number): Promise<void> {
  await writeFile(join(paths(prefix).generation(0), '00-generation.conf'), renderGenerationFile(generation));
  process.kill((await nginx.pids()).master, 'SIGHUP');
  await waitFor(
    async () =>
      (await send({ socketPath: paths(prefix).controlSocket, path: '/generation' })).body === String(generation),
    {
      timeoutMs: 10_000,
      message: `the reloaded worker answering generation ${generation}`,
    },
  );
}

const domain: Domain = {
  domain: HOST,
  app: 'shop',
  group: 'local',
  port: 'http',
  paths: ['/'],
  options: { headers: {} },
  createdAt: '2026-01-01T00:00:00.000Z',
  createdBy: 'alice',
  updatedAt: '2026-01-01T00:00:00.000Z',
};

beforeAll(async () => {
  for (const name of ['a1', 'a2', 'b1']) ports[name] = await startBackend(name);
  ports.dead = await freePort(); // nothing listens there
  // The agent's main config, with a small berth_routes so that a large document overflows it.
  nginx = await startNginx({ workers: 1, routesDictSize: '1m', statsDictSize: '1m' });
  prefix = nginx.prefix;
  listen = nginx.main.listen;
  // The rendered upstream and domain, in the live generation (the agent's config manager's job).
  const live = paths(prefix).generation(0);
  await writeFile(join(live, '10-upstream-shop-http.conf'), renderUpstream('shop', 'http'));
  await writeFile(join(live, `20-domain-${HOST}.conf`), renderServer(domain, { listen: [listen] }));
  await reload(1);
});

afterAll(async () => {
  agent.destroy();
  for (const server of backends) await new Promise((r) => server.close(r));
  if (nginx) {
    // Lua errors show here (the dead peer's refused connections are expected).
    const errors = (await nginx.errorLog())
      .split('\n')
      .filter((l) => /\[(error|crit|alert|emerg)\]/.test(l) && !l.includes('connect() failed'));
    if (errors.length > 0) console.log(`nginx error log:\n${errors.join('\n')}`);
    await removeNginx(nginx);
  }
});

describe('the lb-agent Lua in a real nginx', () => {
  it('answers 503 with Retry-After before any document', async () => {
    const res = await get();
    expect(res.status).toBe(503);
    expect(res.headers['retry-after']).toBe('1');
    expect(res.body).toContain('no instance');
  });

  it('splits traffic by weight and stores the document with its digest', async () => {
    const pushed = await push({
      revision: 10,
      weights: { v1: 90, v2: 10 },
      versions: { v1: [peer('a1'), peer('a2')], v2: [peer('b1')] },
    });
    expect(pushed.status).toBe(200);
    expect(pushed.json).toEqual({ app: 'shop', revision: 10, generation: 1 });

    const counts = await burst(1000);
    const v1 = (counts.a1 ?? 0) + (counts.a2 ?? 0);
    expect(v1 + (counts.b1 ?? 0), JSON.stringify(counts)).toBe(1000);
    expect(Math.abs(v1 - 900), JSON.stringify(counts)).toBeLessThanOrEqual(30);
    // Round-robin inside v1: its two peers within a few requests of each other.
    expect(Math.abs((counts.a1 ?? 0) - (counts.a2 ?? 0)), JSON.stringify(counts)).toBeLessThanOrEqual(10);

    const routes = await control('GET', '/routes');
    expect(routes.status).toBe(200);
    expect(routes.json.boot).toMatch(/^[0-9a-f]{16}$/);
    expect(routes.json.free).toBeGreaterThan(0);
    expect(routes.json.apps).toEqual({
      shop: { revision: 10, generation: 1, digest: createHash('md5').update(pushed.body).digest('hex') },
    });
  });

  it('names the version in a response header, and a header or cookie forces one', async () => {
    const res = await get({ 'x-berth-version': 'v2' });
    expect(res.body).toBe('b1');
    expect(res.headers['x-berth-version']).toBe('v2');
    expect(await burst(20, { 'x-berth-version': 'v2' })).toEqual({ b1: 20 });
    expect(await burst(20, { cookie: 'session=1; berth_version=v2' })).toEqual({ b1: 20 });
    // The header wins over the cookie; a version with no peer forces nothing.
    const v1 = await burst(20, { 'x-berth-version': 'v1', cookie: 'berth_version=v2' });
    expect((v1.a1 ?? 0) + (v1.a2 ?? 0)).toBe(20);
    const unknown = await burst(100, { 'x-berth-version': 'v9' });
    expect(Math.abs((unknown.a1 ?? 0) + (unknown.a2 ?? 0) - 90), JSON.stringify(unknown)).toBeLessThanOrEqual(3);
  });

  it('keeps a sticky key on one version', async () => {
    const pushed = await push({
      revision: 11,
      weights: { v1: 50, v2: 50 },
      stickiness: { cookie: 'user' },
      versions: { v1: [peer('a1')], v2: [peer('b1')] },
    });
    expect(pushed.status).toBe(200);
    const seen = new Set<string>();
    for (let user = 0; user < 20; user++) {
      const counts = await burst(5, { cookie: `user=u${user}` });
      expect(Object.values(counts), JSON.stringify(counts)).toEqual([5]);
      for (const name of Object.keys(counts)) seen.add(name);
    }
    expect([...seen].sort()).toEqual(['a1', 'b1']);

    // The same by a header.
    await push({
      revision: 12,
      weights: { v1: 50, v2: 50 },
      stickiness: { header: 'X-User' },
      versions: { v1: [peer('a1')], v2: [peer('b1')] },
    });
    seen.clear();
    for (let user = 0; user < 20; user++) {
      const counts = await burst(5, { 'x-user': `u${user}` });
      expect(Object.values(counts), JSON.stringify(counts)).toEqual([5]);
      for (const name of Object.keys(counts)) seen.add(name);
    }
    expect([...seen].sort()).toEqual(['a1', 'b1']);
  });

  it('refuses an older document unless forced, and a body that is not a document', async () => {
    const stale = await push({ revision: 9, versions: { v1: [peer('a1')] } });
    expect(stale.status).toBe(409);
    expect(stale.json).toEqual({ error: 'stale', revision: 12 });

    const bad = await control('PUT', '/routes/shop', '{"app":"shop","revision":12,"versions":{"v1":[{"ports":{}}]}}');
    expect(bad.status).toBe(400);
    expect(bad.json.message).toMatch(/address/);
    expect((await control('PUT', '/routes/shop', 'not json')).status).toBe(400);
    expect(
      (await control('PUT', '/routes/other', JSON.stringify({ app: 'shop', revision: 1, versions: {} }))).status,
    ).toBe(400);

    const forced = await push({ revision: 9, versions: { v1: [peer('a1')] } }, { 'x-berth-force': '1' });
    expect(forced.status).toBe(200);
    expect(forced.json).toMatchObject({ revision: 9 });
    expect(await burst(10)).toEqual({ a1: 10 });
  });

  it('retries a dead peer on another: no request fails', async () => {
    const pushed = await push({ revision: 20, versions: { v1: [peer('a1'), peer('dead')] } });
    expect(pushed.status).toBe(200);
    expect(await burst(100)).toEqual({ a1: 100 });
    // Passive health: after max_fails (3) the dead peer is skipped, not tried every other request
    // (a few more attempts may have picked it before the third failure came back).
    const log = await nginx.errorLog();
    const attempts = log.split('\n').filter((l) => l.includes(`peer 127.0.0.1:${ports.dead} failed`)).length;
    expect(attempts).toBeGreaterThanOrEqual(3);
    expect(attempts).toBeLessThanOrEqual(6);
  });

  it('counts requests, status classes and upstream latency per version', async () => {
    await push({ revision: 21, weights: { v1: 100, v2: 0 }, versions: { v1: [peer('a1')], v2: [peer('b1')] } });
    const before = await stats();
    expect(await burst(30, { 'x-berth-version': 'v2' })).toEqual({ b1: 30 });
    const after = await stats();
    const was = before.v2 ?? { requests: 0, status: { '2xx': 0 }, upstreamLatencyCount: 0, upstreamLatencySum: 0 };
    expect(after.v2?.requests).toBe(was.requests + 30);
    expect(after.v2?.status['2xx']).toBe((was.status['2xx'] ?? 0) + 30);
    expect(after.v2?.upstreamLatencyCount).toBe(was.upstreamLatencyCount + 30);
    expect(after.v2?.upstreamLatencySum).toBeGreaterThanOrEqual(was.upstreamLatencySum);
    expect(after.v1?.requests).toBe(before.v1?.requests);
  });

  it('answers 503 with Retry-After when the app has no peer, and after a delete', async () => {
    expect((await push({ revision: 22, versions: {} })).status).toBe(200);
    const none = await get();
    expect(none.status).toBe(503);
    expect(none.headers['retry-after']).toBe('1');

    expect((await push({ revision: 23, versions: { v1: [peer('a1')] } })).status).toBe(200);
    expect((await get()).body).toBe('a1');
    expect((await control('DELETE', '/routes/shop?revision=22')).json).toEqual({ error: 'stale', revision: 23 });
    const deleted = await control('DELETE', '/routes/shop?revision=24');
    expect(deleted.status).toBe(200);
    expect((await get()).status).toBe(503);
    expect((await control('GET', '/routes')).json.apps).toEqual({});
    // The deleted revision stays: an older push in flight does not bring the app back.
    expect((await push({ revision: 23, versions: { v1: [peer('a1')] } })).status).toBe(409);
  });

  it('keeps the documents and the boot id across a reload (HUP)', async () => {
    expect((await push({ revision: 25, versions: { v1: [peer('a1')] } })).status).toBe(200);
    const before = await control('GET', '/routes');
    await reload(2);
    const after = await control('GET', '/routes');
    expect(after.json.boot).toBe(before.json.boot);
    expect(after.json.apps).toEqual(before.json.apps);
    expect(await burst(10)).toEqual({ a1: 10 });
  });

  it('answers 507 when a document does not fit, keeping the others', async () => {
    expect((await push({ revision: 30, versions: { v1: [peer('a1')] } })).status).toBe(200);
    const huge = {
      app: 'big',
      revision: 1,
      weights: null,
      stickiness: null,
      versions: { v1: [{ address: '127.0.0.1', ports: { http: 1 }, cell: 'x'.repeat(2_000_000), stale: false }] },
    };
    const res = await control('PUT', '/routes/big', JSON.stringify(huge));
    expect(res.status).toBe(507);
    expect(res.json).toEqual({ error: 'dict full' });
    expect((await get()).body).toBe('a1');
  });
});
