/**
 * Batched placement on real etcd and real cells: a conflict on one app of a batch re-plans that
 * app alone; a scheduler killed with SIGKILL in the middle of placing and applying a batch leaves
 * nothing the next leader does not converge.
 */
import { createEtcdClient } from '@berth/shared/etcd';
import { deploymentName, LABELS, MANAGED_BY, placementSchema, versionCellStatusSchema } from '@berth/shared/model';
import { Etcd3Backend } from '@berth/shared/store';
import { regionCredentials, uniqueId, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { now, setupPlacer } from '../src/reconcile/placer-fixture.ts';
import {
  appRecord,
  cells,
  cordon,
  deleteNamespaces,
  env,
  placement,
  putApp,
  spawnScheduler,
  startScheduler,
  versionRecord,
  type World,
  world,
} from './harness.ts';

describe('a batch on real etcd', () => {
  const etcd = createEtcdClient({ endpoints: (env.ETCD_ENDPOINTS ?? '').split(','), ...regionCredentials(env).etcd });
  const prefix = `/t-${uniqueId()}`;
  afterAll(async () => {
    await etcd.delete().prefix(prefix);
    etcd.close();
  });

  it('a conflict on one app of 20 re-plans that app alone; the other 19 are written in the first transaction', async () => {
    const names = Array.from({ length: 20 }, (_, i) => `app-${String(i).padStart(2, '0')}`);
    const { keys, backend, store, events, place } = setupPlacer(names, { backend: new Etcd3Backend(etcd), prefix });
    // Another writer (a previous term) placed app-07; the watch has not shown it yet.
    const lost = keys.placement('app-07', 'v1');
    await store.commit([
      {
        op: 'create',
        key: lost,
        value: { app: 'app-07', version: 'v1', cells: {}, generation: 3, desired: 2, conditions: [], updatedAt: now },
      },
    ]);
    const seeded = backend.txns;

    await place(...names);
    // The batch that failed on app-07; the 19 others at once; app-07 again on a fresh read.
    expect(backend.txns - seeded).toBe(3);
    const written = await store.list(keys.placements(), placementSchema);
    expect(written.map((p) => p.value.app).sort()).toEqual(names);
    const others = written.filter((p) => p.value.app !== 'app-07');
    expect(new Set(others.map((p) => p.modRevision)).size).toBe(1);
    const again = written.find((p) => p.value.app === 'app-07');
    // Re-planned from what the other writer left: its generation kept, this pass's conditions added.
    expect(again?.value.generation).toBe(3);
    expect(again?.modRevision).toBeGreaterThan(others[0]?.modRevision ?? 0);
    // Every app's problem is published once: the failed attempt's events were never committed.
    const published = events.flushed.filter((e) => e.action === 'unschedulable').map((e) => e.resourceId);
    expect(published.sort()).toEqual(names);
  });
});

describe('a scheduler killed mid-batch', () => {
  let w: World;
  let scheduler: Awaited<ReturnType<typeof startScheduler>> | undefined;
  const apps = Array.from({ length: 40 }, (_, i) => `batch-${uniqueId(4)}-${String(i).padStart(2, '0')}`);

  beforeAll(async () => {
    w = await world();
    // cell-b alone, one replica per app: 40 real pods on one kubelet, not 80 over two, and a
    // placement that cannot differ between leaders.
    await cordon(w, 'cell-a', 'cordoned');
  });

  afterAll(async () => {
    await scheduler?.service.stop();
    for (const app of apps) await deleteNamespaces(app);
    await w?.etcd.delete().prefix(w.prefix);
    await w?.close();
  });

  it('leaves no half-written state: the next leader places, applies and reports every app exactly once', {
    timeout: 180_000,
  }, async () => {
    for (const app of apps) await putApp(w, appRecord(app, { minCells: 1 }), [versionRecord(app, 1, { replicas: 1 })]);

    const { process: doomed, output } = spawnScheduler(w, 'doomed-batch-leader');
    const ours = new Set(apps.map((a) => deploymentName(a, 'v1')));
    const applied = async () => {
      const list = await cells['cell-b']?.apps.listDeploymentForAllNamespaces({
        labelSelector: `${LABELS.managedBy}=${MANAGED_BY}`,
      });
      return (list?.items ?? []).filter((d) => ours.has(d.metadata?.name ?? '')).length;
    };
    let atKill = 0;
    try {
      // Killed as soon as the first of the batch's Deployments reaches the cell: placements are
      // written, the cell has some of the apps, no status row is written yet.
      atKill = await waitFor(async () => ((await applied()) > 0 ? applied() : undefined), {
        timeoutMs: 60_000,
        intervalMs: 20,
        message: 'the first Deployment applied',
      }).catch((err: Error) => {
        throw new Error(`${err.message}; its output:\n${output()}`);
      });
    } finally {
      doomed.kill('SIGKILL');
    }
    console.log(`[mid-batch] killed with ${atKill} of ${apps.length} Deployments applied`);

    scheduler = await startScheduler(w);
    const service = scheduler.service;
    await waitFor(
      async () => {
        for (const app of apps) {
          const p = await placement(w, app, 'v1');
          if (JSON.stringify(p?.cells) !== '{"cell-b":1}') return undefined;
        }
        return (await applied()) === apps.length ? true : undefined;
      },
      { timeoutMs: 120_000, intervalMs: 500, message: 'every app placed and applied by the next leader' },
    );
    // Exactly one Deployment per app, at the placed size, and nothing in the cordoned cell.
    for (const app of apps) {
      const deps = await cells['cell-b']?.apps.listNamespacedDeployment({ namespace: app });
      expect(deps?.items.map((d) => [d.metadata?.name, d.spec?.replicas])).toEqual([[deploymentName(app, 'v1'), 1]]);
      const inA = await cells['cell-a']?.apps.listNamespacedDeployment({ namespace: app }).catch(() => undefined);
      expect(inA?.items ?? []).toEqual([]);
    }
    // The status rows the killed leader never wrote: every app reported as running in cell-b.
    await waitFor(
      async () => {
        for (const app of apps) {
          const raw = await w.etcd.get(w.keys.status(app, 'v1', 'cell-b')).string();
          if (!raw || versionCellStatusSchema.parse(JSON.parse(raw)).desired !== 1) return undefined;
        }
        return true;
      },
      { timeoutMs: 60_000, intervalMs: 500, message: 'a status row per app' },
    );
    await service.controller.idle();
  });
});
