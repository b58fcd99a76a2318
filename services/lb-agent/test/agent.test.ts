/**
 * The lb-agent against the region's etcd and a private Debian nginx with the agent's Lua: domains
 * become server blocks (reloaded, guarded by `nginx -t`), endpoints and weights reach nginx with
 * no reload, a broken domain keeps its last good config and is reported, and an nginx restart is
 * followed by a full push.
 */
import { createEtcdClient, type Etcd3 } from '@berth/shared/etcd';
import type { LbAgentStatus } from '@berth/shared/model';
import { regionCredentials, regionEnv, uniqueId, uniquePrefix, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type Backend,
  domainRecord,
  endpoint,
  get,
  removeNginx,
  SlbWriter,
  startAgent,
  startBackend,
  startNginx,
  type TestAgent,
  type TestNginx,
  trafficRecord,
  upstreamsRecord,
} from './harness.ts';

const env = regionEnv();
const group = `g${uniqueId(6)}`;
const prefix = uniquePrefix();
let etcd: Etcd3;
let nginx: TestNginx;
let agent: TestAgent;
let w: SlbWriter;
const b: Record<string, Backend> = {};
let url: string;

/** The backends' names answering `n` requests for `host`. */
async function names(host: string, n: number, headers: Record<string, string> = {}): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push((await get(url, host, headers)).body);
  return out;
}

async function status(): Promise<LbAgentStatus> {
  return (await w.agentStatus('lb-test')) as LbAgentStatus;
}

beforeAll(async () => {
  etcd = createEtcdClient({ endpoints: [env.ETCD_ENDPOINTS as string], ...regionCredentials(env).etcd });
  w = new SlbWriter(etcd, prefix, group);
  for (const name of ['a1', 'a2', 'b1']) b[name] = await startBackend(name);
  nginx = await startNginx({ workers: 2 });
  url = `http://127.0.0.1:${nginx.port}/`;
  agent = await startAgent({ etcdEndpoints: env.ETCD_ENDPOINTS as string, prefix, group, nginx });
}, 30_000);

afterAll(async () => {
  await agent?.stop();
  if (nginx) await removeNginx(nginx);
  await Promise.all(Object.values(b).map((x) => x.close()));
  await w?.clear();
  etcd?.close();
});

describe('lb-agent', () => {
  it('serves a domain by its Host, and moves endpoints with no reload', async () => {
    await w.upstreams(upstreamsRecord('shop', { v1: { 'cell-a': [endpoint(b.a1 as Backend)] } }));
    await w.domain(domainRecord('shop.example.test', 'shop', group));
    await waitFor(async () => (await get(url, 'shop.example.test')).body === 'a1', { message: 'shop served by a1' });
    expect((await get(url, 'unknown.example.test')).status).toBe(404);
    const before = await nginx.pids();

    await w.upstreams(
      upstreamsRecord('shop', { v1: { 'cell-a': [endpoint(b.a1 as Backend)], 'cell-b': [endpoint(b.a2 as Backend)] } }),
    );
    await waitFor(async () => new Set(await names('shop.example.test', 6)).size === 2, {
      message: 'both peers answering',
    });
    await w.upstreams(upstreamsRecord('shop', { v1: { 'cell-b': [endpoint(b.a2 as Backend)] } }));
    await waitFor(async () => (await names('shop.example.test', 20)).every((n) => n === 'a2'), {
      message: 'only a2 answering',
    });
    // Endpoint changes never reload: the same master and the same workers.
    expect(await nginx.pids()).toEqual(before);
  });

  it('splits by weight and forces a version by header and by cookie', async () => {
    await w.upstreams(
      upstreamsRecord('shop', {
        v1: { 'cell-a': [endpoint(b.a1 as Backend)] },
        v2: { 'cell-b': [endpoint(b.b1 as Backend)] },
      }),
    );
    await w.traffic(trafficRecord('shop', { v1: 90, v2: 10 }));
    const before = await nginx.pids();
    await waitFor(async () => (await get(url, 'shop.example.test', { 'x-berth-version': 'v2' })).body === 'b1', {
      message: 'v2 forced by header',
    });
    expect((await get(url, 'shop.example.test', { cookie: 'berth_version=v2' })).body).toBe('b1');
    expect((await get(url, 'shop.example.test', { cookie: 'berth_version=v1' })).body).toBe('a1');
    // A forced version with no peer is ignored: the request still gets an answer.
    expect((await get(url, 'shop.example.test', { 'x-berth-version': 'v7' })).status).toBe(200);
    const seen = await names('shop.example.test', 1000);
    const v2 = seen.filter((n) => n === 'b1').length / seen.length;
    expect(v2).toBeGreaterThan(0.07);
    expect(v2).toBeLessThan(0.13);
    const reply = await get(url, 'shop.example.test');
    expect(reply.headers['x-berth-version']).toMatch(/^v[12]$/);
    expect(await nginx.pids()).toEqual(before);
    // Lua's per version counters reach the agent's /metrics.
    const metrics = await agent.service.runtime.metrics.metrics();
    const served = (version: string) =>
      Number(
        new RegExp(`berth_lb_app_requests\\{app="shop",version="${version}",class="2xx"[^}]*\\} (\\d+)`).exec(
          metrics,
        )?.[1],
      );
    expect(served('v1') + served('v2')).toBeGreaterThanOrEqual(1000);
    expect(served('v2')).toBeGreaterThan(50);
  });

  it('answers 503 with Retry-After when an app has no endpoint', async () => {
    await w.upstreams(upstreamsRecord('empty', {}));
    await w.domain(domainRecord('empty.example.test', 'empty', group));
    const reply = await waitFor(
      async () => {
        const r = await get(url, 'empty.example.test');
        return r.status === 503 ? r : undefined;
      },
      { message: 'empty.example.test answering 503' },
    );
    expect(reply.headers['retry-after']).toBeDefined();
  });

  it("removes an app's routes from Lua when its upstreams and traffic are gone", async () => {
    await w.upstreams(upstreamsRecord('gone', { v1: { 'cell-a': [endpoint(b.a1 as Backend)] } }));
    await w.domain(domainRecord('gone.example.test', 'gone', group));
    await waitFor(async () => (await get(url, 'gone.example.test')).status === 200, { message: 'gone served' });
    await w.deleteUpstreams('gone');
    await waitFor(async () => (await get(url, 'gone.example.test')).status === 503, { message: 'gone answering 503' });
    expect(Object.keys((await nginx.control.routes()).apps)).not.toContain('gone');
  });

  it('keeps a broken domain on its last good config, serves every other domain, and reports it', async () => {
    const good = await w.domain(
      domainRecord('raw.example.test', 'shop', group, {
        options: { headers: {}, raw: 'add_header X-Raw good always;' },
      }),
    );
    // The generation is the revision of the newest domain change; it is reported once live.
    await waitFor(async () => (await status()).appliedGeneration === good, { message: `generation ${good} applied` });
    expect((await status()).lastGoodGeneration).toBe(good);
    expect((await get(url, 'raw.example.test')).headers['x-raw']).toBe('good');

    await w.domain(
      domainRecord('raw.example.test', 'shop', group, {
        options: { headers: {}, raw: 'add_header X-Raw bad always;\nthis_is_not_a_directive on;' },
      }),
    );
    const st = await waitFor(
      async () => {
        const s = await status();
        return s.failedDomains.some((f) => f.domain === 'raw.example.test') ? s : undefined;
      },
      { message: 'the failed domain in the agent status' },
    );
    const failure = st.failedDomains.find((f) => f.domain === 'raw.example.test');
    expect(failure?.message).toMatch(/unknown directive "this_is_not_a_directive"/);
    expect(st.lastGoodGeneration).toBe(good);
    expect(st.appliedGeneration).toBeGreaterThan(good);
    // The domain keeps serving its last good config; the others are untouched.
    expect((await get(url, 'raw.example.test')).headers['x-raw']).toBe('good');
    expect((await get(url, 'shop.example.test')).status).toBe(200);

    // Another domain's change still applies while raw.example.test stays failed.
    await w.domain(domainRecord('new.example.test', 'shop', group));
    await waitFor(async () => (await get(url, 'new.example.test')).status === 200, {
      message: 'new.example.test served',
    });
    expect((await status()).failedDomains.map((f) => f.domain)).toEqual(['raw.example.test']);

    // Fixing it clears the failure.
    await w.domain(
      domainRecord('raw.example.test', 'shop', group, {
        options: { headers: {}, raw: 'add_header X-Raw fixed always;' },
      }),
    );
    await waitFor(async () => (await get(url, 'raw.example.test')).headers['x-raw'] === 'fixed', {
      message: 'the fixed raw directive served',
    });
    // The status is written once the reload is confirmed, a moment after nginx serves it.
    const fixed = await waitFor(
      async () => {
        const s = await status();
        return s.failedDomains.length === 0 ? s : undefined;
      },
      { message: 'the failure cleared in the agent status' },
    );
    expect(fixed.lastGoodGeneration).toBe(fixed.appliedGeneration);
  });

  it('pushes every document again after nginx restarts', async () => {
    await nginx.stop();
    await nginx.start();
    // The restarted nginx has an empty shared dict: until the agent notices, shop has no route.
    await waitFor(async () => (await get(url, 'shop.example.test')).status === 200, {
      timeoutMs: 10_000,
      message: 'shop served again after the restart',
    });
    expect(agent.logs()).toMatch(/nginx restarted/);
  });

  it('deletes a domain with a reload and reports under a lease that goes with the agent', async () => {
    await w.deleteDomain('new.example.test');
    await waitFor(async () => (await get(url, 'new.example.test')).status === 404, {
      message: 'new.example.test gone',
    });
    const st = await status();
    expect(st).toMatchObject({ host: 'lb-test', group, lastError: null });
    expect(Date.parse(st.reportedAt)).toBeGreaterThan(Date.now() - 60_000);
    await agent.stop();
    expect(await w.agentStatus('lb-test')).toBeNull();
    // nginx goes on serving what it had.
    expect((await get(url, 'shop.example.test')).status).toBe(200);
  });
});
