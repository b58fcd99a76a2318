/**
 * etcd down for 10 s under load: nginx goes on routing what it had (not one failed request), the
 * agent keeps its view, and when etcd is back it resyncs: a change made after the outage is
 * routed and the agent's status key is back under a new lease.
 */
import { createEtcdClient, type Etcd3 } from '@berth/shared/etcd';
import { type PrivateEtcd, startPrivateEtcd, uniqueId, uniquePrefix, waitFor } from '@berth/shared/testing';
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
  startLoad,
  startNginx,
  type TestAgent,
  type TestNginx,
  upstreamsRecord,
} from './harness.ts';

const group = `g${uniqueId(6)}`;
const prefix = uniquePrefix();
let etcdServer: PrivateEtcd;
let etcd: Etcd3;
let nginx: TestNginx;
let agent: TestAgent;
let w: SlbWriter;
const b: Record<string, Backend> = {};

beforeAll(async () => {
  etcdServer = await startPrivateEtcd();
  etcd = createEtcdClient({ endpoints: [etcdServer.endpoint] });
  w = new SlbWriter(etcd, prefix, group);
  for (const name of ['a1', 'a2']) b[name] = await startBackend(name);
  nginx = await startNginx({ workers: 2 });
  agent = await startAgent({ etcdEndpoints: etcdServer.endpoint, prefix, group, nginx });
}, 30_000);

afterAll(async () => {
  await agent?.stop();
  if (nginx) await removeNginx(nginx);
  await Promise.all(Object.values(b).map((x) => x.close()));
  etcd?.close();
  await etcdServer?.destroy();
});

describe('lb-agent with etcd down', () => {
  it('keeps traffic flowing through a 10 s etcd outage and resyncs after it', async () => {
    const url = `http://127.0.0.1:${nginx.port}/`;
    await w.upstreams(upstreamsRecord('shop', { v1: { 'cell-a': [endpoint(b.a1 as Backend)] } }));
    await w.domain(domainRecord('shop.example.test', 'shop', group));
    await waitFor(async () => (await get(url, 'shop.example.test')).body === 'a1', { message: 'shop served' });
    const pids = await nginx.pids();

    const load = startLoad(url, 'shop.example.test', 4);
    await etcdServer.kill();
    // The outage lasts 10 s of wall time while the load runs; progress is checked, not slept on.
    const outageEnd = Date.now() + 10_000;
    await waitFor(() => Date.now() >= outageEnd, { timeoutMs: 15_000, intervalMs: 200, message: '10 s of outage' });
    const during = load.samples.length;
    await etcdServer.restart();

    // A change after the outage reaches nginx: the agent's watch came back.
    await waitFor(
      async () => (await w.upstreams(upstreamsRecord('shop', { v1: { 'cell-a': [endpoint(b.a2 as Backend)] } }))) > 0,
      {
        timeoutMs: 30_000,
        message: 'etcd writable again',
      },
    );
    await waitFor(async () => (await get(url, 'shop.example.test')).body === 'a2', {
      timeoutMs: 30_000,
      message: 'the change after the outage routed',
    });
    const samples = await load.stop();
    expect(during).toBeGreaterThan(100);
    expect(samples.filter((s) => s.status !== 200)).toEqual([]);
    // Endpoints never reload nginx, outage or not.
    expect(await nginx.pids()).toEqual(pids);
    // The status key is back (the old lease expired with etcd's clock, or survived; either way it is there).
    await waitFor(async () => (await w.agentStatus('lb-test')) !== null, {
      timeoutMs: 30_000,
      message: 'the agent reporting again',
    });
  }, 90_000);
});
