/**
 * Requests per version within a window, from the agent's `/stats/requests` (docs/traffic.md,
 * "Requests per version"): requests with known statuses go through a private nginx to two
 * versions, and the agent, found by the `statsUrl` in its status in etcd, counts them per version
 * and status class; a short window counts only the newest; an nginx restart (its counters back at
 * zero) loses nothing; the endpoint wants the agent's metrics token.
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
  startNginx,
  startStatusBackend,
  type TestAgent,
  type TestNginx,
  trafficRecord,
  upstreamsRecord,
} from './harness.ts';

const env = regionEnv();
const group = `g${uniqueId(6)}`;
const prefix = uniquePrefix();
const TOKEN = `stats-token-${uniqueId(12)}`;
const HOST = 'counted.example.test';
let etcd: Etcd3;
let nginx: TestNginx;
let agent: TestAgent;
let w: SlbWriter;
let url: string;
let statsUrl: string;
const backends: Backend[] = [];

type Counts = { total: number; '2xx': number; '3xx': number; '4xx': number; '5xx': number };
type Answer = { windowSeconds: number; from: string | null; to: string; apps: Record<string, Record<string, Counts>> };

async function statusBackend(name: string): Promise<Backend> {
  const b = await startStatusBackend(name);
  backends.push(b);
  return b;
}

/** `n` requests to `version` (forced by header) for `/status/{status}`. */
async function send(version: string, status: number, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const r = await get(`${url}status/${status}`, HOST, { 'x-berth-version': version });
    expect(r.status).toBe(status);
    expect(r.body).toBe(version);
  }
}

async function window(w: string, token: string | null = TOKEN) {
  const u = new URL(statsUrl);
  u.searchParams.set('window', w);
  u.searchParams.set('app', 'counted');
  return fetch(u, token ? { headers: { authorization: `Bearer ${token}` } } : {});
}

async function counts(w: string): Promise<Answer> {
  const res = await window(w);
  expect(res.status).toBe(200);
  return (await res.json()) as Answer;
}

beforeAll(async () => {
  etcd = createEtcdClient({ endpoints: [env.ETCD_ENDPOINTS as string], ...regionCredentials(env).etcd });
  w = new SlbWriter(etcd, prefix, group);
  const v1 = await statusBackend('v1');
  const v2 = await statusBackend('v2');
  nginx = await startNginx({ workers: 2 });
  url = `http://127.0.0.1:${nginx.port}/`;
  agent = await startAgent({
    etcdEndpoints: env.ETCD_ENDPOINTS as string,
    prefix,
    group,
    nginx,
    env: { METRICS_TOKEN: TOKEN, LB_STATS_INTERVAL: '200ms' },
  });
  await w.upstreams(upstreamsRecord('counted', { v1: { 'cell-a': [endpoint(v1)] }, v2: { 'cell-b': [endpoint(v2)] } }));
  await w.traffic(trafficRecord('counted', { v1: 50, v2: 50 }));
  await w.domain(domainRecord(HOST, 'counted', group));
  await waitFor(async () => (await get(url, HOST, { 'x-berth-version': 'v2' })).body === 'v2', {
    message: `${HOST} served by v2`,
  });
  const status = await waitFor(
    async () => {
      const s = (await w.agentStatus('lb-test')) as LbAgentStatus | null;
      return s?.statsUrl ? s : undefined;
    },
    { message: 'the agent’s statsUrl in its status' },
  );
  statsUrl = status.statsUrl as string;
}, 30_000);

afterAll(async () => {
  await agent?.stop();
  if (nginx) await removeNginx(nginx);
  await Promise.all(backends.map((b) => b.close()));
  await w?.clear();
  etcd?.close();
});

describe('requests per version within a window', () => {
  it('puts where it serves them in its status, on its own listener', () => {
    expect(statsUrl).toBe(`${agent.service.runtime.http.url}/stats/requests`);
  });

  it('counts the requests each version answered, by status class', async () => {
    const before = (await counts('15m')).apps.counted ?? {};
    await send('v1', 200, 7);
    await send('v1', 500, 3);
    await send('v2', 404, 4);
    await send('v2', 302, 2);
    const after = (await counts('15m')).apps.counted ?? {};
    const grew = (version: string, field: keyof Counts) =>
      (after[version]?.[field] ?? 0) - (before[version]?.[field] ?? 0);
    expect(grew('v1', 'total')).toBe(10);
    expect(grew('v1', '2xx')).toBe(7);
    expect(grew('v1', '5xx')).toBe(3);
    expect(grew('v2', 'total')).toBe(6);
    expect(grew('v2', '4xx')).toBe(4);
    expect(grew('v2', '3xx')).toBe(2);
    expect(grew('v2', '5xx')).toBe(0);
  });

  it('a short window counts only the requests within it', async () => {
    await send('v1', 200, 2);
    // Once every earlier request is older than 2 s, the 2 s window is empty of this app…
    await waitFor(async () => (await counts('2s')).apps.counted === undefined, {
      message: 'the 2 s window empty',
    });
    // …and the next requests are all it counts (asked for within those 2 s).
    await send('v2', 500, 3);
    const answer = await counts('2s');
    expect(answer.apps.counted).toEqual({ v2: { total: 3, '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 3 } });
    expect(answer.from).not.toBeNull();
    expect((await counts('15m')).apps.counted?.v1?.total ?? 0).toBeGreaterThanOrEqual(12);
  });

  it('keeps counting across an nginx restart (its counters back at zero)', async () => {
    const before = (await counts('15m')).apps.counted?.v1?.total ?? 0;
    // Let a snapshot see the counters before the restart.
    await waitFor(async () => (await counts('1s')).apps.counted === undefined, { message: 'a quiet second' });
    await nginx.stop();
    await nginx.start();
    await waitFor(async () => (await get(url, HOST, { 'x-berth-version': 'v1' })).body === 'v1', {
      message: 'v1 served again after the restart',
    });
    await send('v1', 200, 2);
    // The probe above may or may not have reached v1's routes (a 503 before the push counts as v1 too).
    const after = (await counts('15m')).apps.counted?.v1?.total ?? 0;
    expect(after).toBeGreaterThanOrEqual(before + 3);
    expect(after).toBeLessThan(before + 50);
  });

  it('wants the agent’s metrics token, and a window it can read', async () => {
    const missing = await window('15m', null);
    expect(missing.status).toBe(401);
    expect(missing.headers.get('content-type')).toMatch(/problem\+json/);
    expect((await window('15m', 'wrong-token-0123456789')).status).toBe(401);
    const bad = await window('15 minutes');
    expect(bad.status).toBe(400);
    const problem = (await bad.json()) as { errors?: { path: string }[] };
    expect(problem.errors?.[0]?.path).toBe('$.window');
  });
});
