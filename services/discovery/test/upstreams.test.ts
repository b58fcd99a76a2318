/**
 * Discovery on the real cells: a real scheduler runs an app's versions in cell-a and cell-b (each
 * a kubelet of its own with real pods on its own bridge and pool); discovery reaches cell-b
 * through a proxy the test can take down. The tests run in order on one app: its upstreams by version and cell, scaling, a cell
 * outage (endpoints kept and marked stale, replaced on return), a leader failover that never
 * writes an empty set, and dropped connections that miss no change.
 */

import type { CuttableProxy } from '@berth/shared/kube/testing';
import { LABELS, type Upstreams } from '@berth/shared/model';
import { uniqueId, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  addressesOf,
  appRecord,
  cellBBehindProxy,
  cells,
  claim,
  countsOf,
  deleteNamespaces,
  putApp,
  scale,
  startDiscovery,
  startScheduler,
  unclaim,
  upstreams,
  versionRecord,
  type World,
  world,
} from './harness.ts';

const app = `disc-${uniqueId(6)}`;
const domain = `${app}.example.test`;
let w: World;
let proxy: CuttableProxy;
let cellsDir: string;
let scheduler: Awaited<ReturnType<typeof startScheduler>>;
let first: Awaited<ReturnType<typeof startDiscovery>>;
let second: Awaited<ReturnType<typeof startDiscovery>> | undefined;

beforeAll(async () => {
  w = await world();
  ({ proxy, kubeconfigDir: cellsDir } = await cellBBehindProxy());
  scheduler = await startScheduler(w);
  first = await startDiscovery(w, { KUBECONFIG_DIR: cellsDir });
  await waitFor(() => first.service.election.isLeader, { timeoutMs: 10_000, message: 'first discovery leads' });
});

afterAll(async () => {
  await second?.service.stop();
  await first?.service.stop();
  await scheduler?.service.stop();
  await proxy?.close();
  await deleteNamespaces(app);
  await w?.close();
});

/** Waits until the public group's upstreams satisfy `check`, and returns them. */
async function upstreamsWhen(check: (up: Upstreams) => boolean, message: string, timeoutMs = 90_000) {
  return waitFor(
    async () => {
      const up = await upstreams(w, 'public', app);
      return up && check(up) ? up : undefined;
    },
    { timeoutMs, intervalMs: 200, message },
  );
}

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

/** A metric of a discovery instance, summed over its labels. */
async function metric(d: Awaited<ReturnType<typeof startDiscovery>>, name: string): Promise<number> {
  const m = await d.service.runtime.metrics.getSingleMetric(name)?.get();
  return (m?.values ?? []).reduce((n, v) => n + v.value, 0);
}

describe('discovery', () => {
  it('writes an app with a domain its ready endpoints in both cells, by version, to each group it has a domain in', {
    timeout: 150_000,
  }, async () => {
    await claim(w, domain, app, 'public');
    await putApp(w, appRecord(app), [versionRecord(app, 1, { replicas: 4 })]);
    const up = await upstreamsWhen((u) => same(countsOf(u, 'v1'), { 'cell-a': 2, 'cell-b': 2 }), 'v1 2+2');
    for (const e of up.versions.v1?.['cell-a'] ?? []) {
      expect(e.address).toMatch(/^198\.18\./);
      expect(e).toMatchObject({ ready: true, terminating: false, ports: { http: 8080 }, node: 'cell-a-node0' });
      expect(e.pod).toMatch(new RegExp(`^${app}-v1-`));
    }
    for (const e of up.versions.v1?.['cell-b'] ?? []) {
      expect(e.address).toMatch(/^198\.19\.3[2-9]\./); // cell-b's pool, 198.19.32.0/21
      expect(e).toMatchObject({ ready: true, terminating: false, ports: { http: 8080 }, node: 'cell-b-node0' });
    }
    expect(up.cells['cell-a']).toMatchObject({ stale: false });
    expect(up.cells['cell-b']?.syncedAt).not.toBeNull();

    // A domain in a second group: the same upstreams there; its removal deletes that key only.
    await claim(w, `api.${domain}`, app, 'internal');
    await waitFor(async () => same(await upstreams(w, 'internal', app), await upstreams(w, 'public', app)), {
      timeoutMs: 10_000,
      message: 'upstreams copied to the internal group',
    });
    await unclaim(w, `api.${domain}`);
    await waitFor(async () => (await upstreams(w, 'internal', app)) === undefined, {
      timeoutMs: 10_000,
      message: 'internal upstreams deleted',
    });
    expect(await upstreams(w, 'public', app)).toBeDefined();
  });

  it('follows scaling and a new version', { timeout: 150_000 }, async () => {
    await putApp(w, appRecord(app, { lastVersion: 2 }), [
      versionRecord(app, 1, { replicas: 6 }),
      versionRecord(app, 2, { replicas: 2 }),
    ]);
    await upstreamsWhen(
      (u) =>
        same(countsOf(u, 'v1'), { 'cell-a': 3, 'cell-b': 3 }) && same(countsOf(u, 'v2'), { 'cell-a': 1, 'cell-b': 1 }),
      'v1 3+3 and v2 1+1',
    );
  });

  it("keeps an unreachable cell's endpoints, marked stale, and replaces them when it is back", {
    timeout: 150_000,
  }, async () => {
    const before = await upstreams(w, 'public', app);
    const cellBBefore = addressesOf(before, 'v1')['cell-b'];
    proxy.takeDown();
    const stale = await upstreamsWhen((u) => u.cells['cell-b']?.stale === true, 'cell-b marked stale', 30_000);
    expect(addressesOf(stale, 'v1')['cell-b']).toEqual(cellBBefore);
    expect(await metric(first, 'berth_discovery_stale_cells')).toBe(1);

    // cell-a changes meanwhile (the scheduler reaches cell-b directly and scales it down too):
    // discovery follows cell-a and keeps what it last knew of cell-b.
    await scale(w, app, 'v1', 2);
    const shrunk = await upstreamsWhen((u) => countsOf(u, 'v1')['cell-a'] === 1, 'cell-a v1 down to 1');
    expect(addressesOf(shrunk, 'v1')['cell-b']).toEqual(cellBBefore);
    expect(shrunk.cells['cell-b']?.stale).toBe(true);

    proxy.up();
    const back = await upstreamsWhen(
      (u) => u.cells['cell-b']?.stale === false && same(countsOf(u, 'v1'), { 'cell-a': 1, 'cell-b': 1 }),
      'cell-b relisted',
      60_000,
    );
    await waitFor(async () => (await metric(first, 'berth_discovery_stale_cells')) === 0, {
      timeoutMs: 10_000,
      message: 'no stale cell in the metrics',
    });
    expect(await metric(first, 'berth_discovery_upstream_writes_total')).toBeGreaterThan(0);
    expect(Date.parse(back.cells['cell-b']?.syncedAt ?? '')).toBeGreaterThan(
      Date.parse(before?.cells['cell-b']?.syncedAt ?? ''),
    );
  });

  it('a leader failover never writes an empty set, even with a cell the new leader cannot reach', {
    timeout: 150_000,
  }, async () => {
    const seen: Upstreams[] = [];
    const watcher = await w.etcd.watch().key(w.keys.slbUpstream('public', app)).create();
    watcher.on('put', (kv) => seen.push(JSON.parse(kv.value.toString()) as Upstreams));
    watcher.on('delete', () => seen.push({ app, cells: {}, versions: {} }));
    try {
      second = await startDiscovery(w, { KUBECONFIG_DIR: cellsDir, DISCOVERY_FIRST_LIST_WAIT: '2s' });
      expect(second.service.election.isLeader).toBe(false);
      const before = await upstreams(w, 'public', app);
      // The new leader starts while cell-b is unreachable: it has only etcd's word for cell-b.
      proxy.takeDown();
      await first.service.stop();
      await waitFor(() => second?.service.election.isLeader === true, {
        timeoutMs: 15_000,
        message: 'second discovery leads',
      });
      const carried = await upstreamsWhen(
        (u) => u.cells['cell-b']?.stale === true && u.cells['cell-a']?.syncedAt !== before?.cells['cell-a']?.syncedAt,
        'cell-b carried forward, stale',
        30_000,
      );
      expect(addressesOf(carried, 'v1')['cell-b']).toEqual(addressesOf(before, 'v1')['cell-b']);
      proxy.up();
      await upstreamsWhen((u) => u.cells['cell-b']?.stale === false, 'cell-b listed by the new leader', 60_000);
      await scale(w, app, 'v1', 4);
      await upstreamsWhen((u) => same(countsOf(u, 'v1'), { 'cell-a': 2, 'cell-b': 2 }), 'v1 2+2 after failover');
      await second.service.controller.idle();
    } finally {
      proxy.up();
      await watcher.cancel();
    }
    expect(seen.length).toBeGreaterThan(0);
    for (const up of seen) {
      const v1 = countsOf(up, 'v1');
      expect(v1['cell-a'] ?? 0, JSON.stringify(up)).toBeGreaterThan(0);
      expect(v1['cell-b'] ?? 0, JSON.stringify(up)).toBeGreaterThan(0);
    }
  });

  it('a dropped connection misses no change: cell-b matches a fresh list of its EndpointSlices', {
    timeout: 120_000,
  }, async () => {
    const cellB = cells['cell-b'];
    if (!cellB) throw new Error('no cell-b');
    // Every connection to cell-b drops while the app scales: the watch breaks mid-change.
    proxy.cut();
    await scale(w, app, 'v1', 6);
    proxy.cut();
    const fresh = async () => {
      const list = await cellB.discovery.listNamespacedEndpointSlice({ namespace: app });
      const pods = await cellB.core.listNamespacedPod({ namespace: app });
      const v1Pods = new Set(
        pods.items.filter((p) => p.metadata?.labels?.[LABELS.version] === 'v1').map((p) => p.metadata?.name),
      );
      return list.items
        .flatMap((sl) => sl.endpoints ?? [])
        .filter((e) => e.conditions?.ready !== false && v1Pods.has(e.targetRef?.name))
        .map((e) => e.addresses[0])
        .sort();
    };
    await waitFor(
      async () => {
        const up = await upstreams(w, 'public', app);
        const want = await fresh();
        return want.length === 3 && up?.cells['cell-b']?.stale === false && same(addressesOf(up, 'v1')['cell-b'], want);
      },
      { timeoutMs: 90_000, intervalMs: 250, message: "cell-b's v1 endpoints equal a fresh list" },
    );
  });
});
