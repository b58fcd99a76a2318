/**
 * Requests per version, end to end through the API: an app bound to a domain of an LB group, two
 * lb-agents of that group (each with its own nginx), requests through both, and the API's
 * `GET /apps/{app}/metrics` summing what each agent counted per version and status class. An agent
 * that stops answering is counted as missing; with none answering, `requests` is null.
 */
import { regionEnv, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appBody, ensureRegion, startApi, type TestApi } from '../../api/test/harness.ts';
import {
  type Backend,
  endpoint,
  get,
  removeNginx,
  SlbWriter,
  startAgent,
  startNginx,
  startStatusBackend,
  type TestAgent,
  type TestNginx,
  upstreamsRecord,
} from './harness.ts';

const env = regionEnv();
const app = 'countme';
const DOMAIN = 'countme.example.test';
let api: TestApi;
let reporter: string;
const nginxes: TestNginx[] = [];
const agents: TestAgent[] = [];
const backends: Backend[] = [];

type Metrics = {
  window: string;
  requests: { version: string; total: number; '2xx': number; '3xx': number; '4xx': number; '5xx': number }[] | null;
  agents: { answered: number; missing: number };
};

async function statusBackend(name: string): Promise<Backend> {
  const b = await startStatusBackend(name);
  backends.push(b);
  return b;
}

async function metrics(query = ''): Promise<Metrics> {
  const res = await api.call('GET', `/apps/${app}/metrics?window=15m${query}`, { token: reporter });
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return res.json;
}

/** `n` requests through `nginx` to `version` for `/status/{status}`. */
async function send(nginx: TestNginx, version: string, status: number, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const r = await get(`http://127.0.0.1:${nginx.port}/status/${status}`, DOMAIN, { 'x-berth-version': version });
    expect(r.status).toBe(status);
  }
}

beforeAll(async () => {
  api = await startApi();
  await ensureRegion(api);
  expect((await api.call('POST', '/lb-groups', { token: api.adminToken, body: { name: 'edge' } })).status).toBe(201);
  expect((await api.call('POST', '/apps', { token: api.adminToken, body: appBody(app) })).status).toBe(201);
  const bound = await api.call('POST', `/apps/${app}/domains`, {
    token: api.adminToken,
    body: { domain: DOMAIN, group: 'edge' },
  });
  expect(bound.status).toBe(201);
  reporter = await api.user('rep');
  expect(
    (await api.call('PUT', `/apps/${app}/members/rep`, { token: api.adminToken, body: { role: 'Reporter' } })).status,
  ).toBeLessThan(300);
  // Discovery's part: the versions' endpoints in the group's tree.
  const v1 = await statusBackend('v1');
  const v2 = await statusBackend('v2');
  await new SlbWriter(api.service.runtime.etcd, api.prefix, 'edge').upstreams(
    upstreamsRecord(app, { v1: { 'cell-a': [endpoint(v1)] }, v2: { 'cell-b': [endpoint(v2)] } }),
  );
  for (const host of ['edge-1', 'edge-2']) {
    const nginx = await startNginx({ workers: 1 });
    nginxes.push(nginx);
    agents.push(
      await startAgent({ etcdEndpoints: env.ETCD_ENDPOINTS as string, prefix: api.prefix, group: 'edge', host, nginx }),
    );
  }
  for (const nginx of nginxes) {
    await waitFor(
      async () => (await get(`http://127.0.0.1:${nginx.port}/`, DOMAIN, { 'x-berth-version': 'v2' })).body === 'v2',
      { message: `${DOMAIN} served by nginx on ${nginx.port}` },
    );
  }
  await waitFor(async () => (await metrics()).agents.answered === 2, { message: 'both agents answering the API' });
}, 60_000);

afterAll(async () => {
  for (const a of agents) await a.stop();
  for (const n of nginxes) await removeNginx(n);
  await Promise.all(backends.map((b) => b.close()));
  await api?.stop();
});

describe('requests per version through the API', () => {
  it('sums what every agent of the group counted, per version and status class', async () => {
    const before = await metrics();
    const [a, b] = nginxes as [TestNginx, TestNginx];
    await send(a, 'v1', 200, 6);
    await send(b, 'v1', 200, 4);
    await send(b, 'v1', 500, 2);
    await send(a, 'v2', 404, 3);
    const after = await metrics();
    expect(after.agents).toEqual({ answered: 2, missing: 0 });
    const grew = (version: string, field: 'total' | '2xx' | '4xx' | '5xx') =>
      (after.requests?.find((r) => r.version === version)?.[field] ?? 0) -
      (before.requests?.find((r) => r.version === version)?.[field] ?? 0);
    expect(grew('v1', 'total')).toBe(12);
    expect(grew('v1', '2xx')).toBe(10);
    expect(grew('v1', '5xx')).toBe(2);
    expect(grew('v2', 'total')).toBe(3);
    expect(grew('v2', '4xx')).toBe(3);

    const only = await metrics('&version=v2');
    expect(only.requests?.map((r) => r.version)).toEqual(['v2']);
  });

  it('keeps where the agents serve their counts out of GET /lb-groups/{group}/agents', async () => {
    const res = await api.call('GET', '/lb-groups/edge/agents', { token: api.adminToken });
    expect(res.json.items.map((a: { host: string }) => a.host)).toEqual(['edge-1', 'edge-2']);
    for (const a of res.json.items) expect(a).not.toHaveProperty('statsUrl');
  });

  it('counts an agent that stops answering as missing, and says null when none answers', async () => {
    // An agent's status outlives its listener until its lease ends: stop the HTTP server only.
    await agents[1]?.service.runtime.http.stop();
    const one = await metrics();
    expect(one.agents).toEqual({ answered: 1, missing: 1 });
    expect(one.requests).not.toBeNull();
    await agents[0]?.service.runtime.http.stop();
    const none = await metrics();
    expect(none.agents).toEqual({ answered: 0, missing: 2 });
    expect(none.requests).toBeNull();
  });
});
