/**
 * Placement's etcd write path against the in-memory backend: every app that changed together is
 * placed in one pass and written in as few transactions as etcd allows, each placement guarded by
 * its own revision, its events in the same transaction and published only after it commits; a
 * conflict re-plans only the app that lost it; a deposed leader writes nothing. No cells: the
 * apply path needs real API servers (services/scheduler/test).
 */
import { UnavailableError } from '@berth/shared/errors';
import { BerthKeys } from '@berth/shared/keys';
import { placementSchema } from '@berth/shared/model';
import { type Compare, MemoryBackend, type TxnResult, type Write } from '@berth/shared/store';
import { waitFor } from '@berth/shared/testing';
import { describe, expect, it } from 'vitest';
import type { CellWriter } from '../apply/cell-writer.ts';
import { StatusReporter } from '../status/reporter.ts';
import { appNamed, ForwardingBackend, logger, now, recorder, setupPlacer as setup } from './placer-fixture.ts';
import { Reconciler } from './reconciler.ts';

const keys = new BerthKeys('/t');

/** A test double for a fault not caused for real here: etcd refusing transactions until `up`. */
class UnreachableEtcdDouble extends ForwardingBackend {
  up = false;
  refused = 0;
  override txn(compares: readonly Compare[], writes: readonly Write[]): Promise<TxnResult> {
    if (!this.up) {
      this.refused++;
      return Promise.reject(new UnavailableError('etcd unreachable (test double)'));
    }
    return super.txn(compares, writes);
  }
}

describe('the placer', () => {
  it('writes a placement and the events of the problems it starts in one transaction, then publishes them', async () => {
    const { backend, store, events, place, placed } = setup(['shop']);
    await place('shop');

    const placement = await store.get(keys.placement('shop', 'v1'), placementSchema);
    expect(placement?.value.conditions.find((c) => c.type === 'Unschedulable')?.status).toBe('True');
    const outbox = await backend.range(keys.outboxes());
    expect(outbox.length).toBeGreaterThan(0);
    for (const kv of outbox) expect(kv.modRevision).toBe(placement?.modRevision);
    expect(events.flushed.map((e) => e.action)).toContain('unschedulable');
    for (const e of events.flushed) expect(e.incarnation).toBe(appNamed('shop').incarnation);
    expect(placed).toEqual(['shop']);
  });

  it('places every app that changed together in one transaction', async () => {
    const names = Array.from({ length: 20 }, (_, i) => `app-${String(i).padStart(2, '0')}`);
    const { backend, store, place } = setup(names);
    await place(...names);
    expect(backend.txns).toBe(1);
    expect(await store.list(keys.placements(), placementSchema)).toHaveLength(20);
  });

  it('splits a batch at the transaction limit, never one app across two', async () => {
    const names = Array.from({ length: 20 }, (_, i) => `app-${String(i).padStart(2, '0')}`);
    const { backend, store, place } = setup(names, { maxTxnOps: 16 });
    await place(...names);
    // Each app writes its placement and its events (3 ops); 15 ops fit beside the fence: 5 apps.
    expect(backend.txns).toBe(4);
    expect(await store.list(keys.placements(), placementSchema)).toHaveLength(20);
  });

  it('its own write coming back through the watch is no change; a second pass writes nothing', async () => {
    const { backend, store, placer, events, place, catchUp } = setup(['shop']);
    await place('shop');
    const stored = await store.get(keys.placement('shop', 'v1'), placementSchema);
    expect(placer.isOwnWrite(keys.placement('shop', 'v1'), stored?.modRevision ?? 0)).toBe(true);
    await catchUp();
    const txns = backend.txns;
    const flushed = events.flushed.length;
    await place('shop');
    expect(backend.txns).toBe(txns);
    expect(events.flushed.length).toBe(flushed);
  });

  it('a conflict re-plans only the app that lost it; the rest of the batch is written at once', async () => {
    const { backend, store, events, place } = setup(['a-shop', 'b-shop']);
    // A previous term wrote a-shop's placement; the watch has not shown it yet.
    const key = keys.placement('a-shop', 'v1');
    await store.commit([
      {
        op: 'create',
        key,
        value: { app: 'a-shop', version: 'v1', cells: {}, generation: 3, desired: 2, conditions: [], updatedAt: now },
      },
    ]);
    await place('a-shop', 'b-shop');
    // The seed; the batch that failed on a-shop; b-shop alone; a-shop again on a fresh read.
    expect(backend.txns).toBe(4);
    const a = await store.get(key, placementSchema);
    expect(a?.value.generation).toBe(3); // cells unchanged ({}), conditions added
    expect(a?.value.conditions.some((c) => c.type === 'Unschedulable')).toBe(true);
    expect(await store.get(keys.placement('b-shop', 'v1'), placementSchema)).toBeDefined();
    // Only committed attempts' events are published: one unschedulable event per app.
    expect(
      events.flushed
        .filter((e) => e.action === 'unschedulable')
        .map((e) => e.resourceId)
        .sort(),
    ).toEqual(['a-shop', 'b-shop']);
  });

  it('is "placing" while it works, and not while it waits out an etcd failure (reconciles do not wait for it then)', async () => {
    const down = new UnreachableEtcdDouble(new MemoryBackend());
    const { placer, store } = setup(['shop'], { backend: down });
    expect(placer.placing).toBe(false);
    placer.add('shop');
    expect(placer.placing).toBe(true);
    await waitFor(() => down.refused > 0 && !placer.placing, { timeoutMs: 5000, message: 'placer pausing' });
    down.up = true;
    await waitFor(async () => (await store.get(keys.placement('shop', 'v1'), placementSchema)) !== undefined, {
      timeoutMs: 5000,
      message: 'placed once etcd answers',
    });
    await placer.idle();
    expect(placer.placing).toBe(false);
  });

  it('a deposed leader writes nothing: no placement, no outbox entry, nothing published', async () => {
    let leading = true;
    const { backend, events, place, placed } = setup(['shop'], { leading: () => leading });
    leading = false;
    await place('shop');
    expect(await backend.range('/t/')).toEqual([]);
    expect(events.flushed).toEqual([]);
    expect(placed).toEqual([]);
  });

  it('a deleted app has its placements removed by the reconcile (no cell runs it)', async () => {
    const { store, placer, place, catchUp, apps, state } = setup(['shop']);
    await place('shop');
    await catchUp();
    apps.delete('shop');
    const reconciler = new Reconciler({
      store,
      keys,
      state,
      placer,
      status: new StatusReporter({ store, events: recorder(keys), logger }),
      writer: {} as CellWriter,
      cells: () => new Map(),
      health: () => 'out',
      manifests: { registry: 'registry', preStopDelaySeconds: 0 },
      events: recorder(keys),
      logger,
    });
    await reconciler.reconcileApp('shop');
    expect(await store.get(keys.placement('shop', 'v1'), placementSchema)).toBeUndefined();
  });
});
