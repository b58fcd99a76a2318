/**
 * Placement's etcd write path against the in-memory backend: every app that changed together is
 * placed in one pass and written in as few transactions as etcd allows, each placement guarded by
 * its own revision, its events in the same transaction and published only after it commits; a
 * conflict re-plans only the app that lost it; a deposed leader writes nothing. No cells: the
 * apply path needs real API servers (services/scheduler/test).
 */
import { NotLeaderError } from '@berth/shared/errors';
import type { BerthEvent, EventInput } from '@berth/shared/events';
import { BerthKeys } from '@berth/shared/keys';
import { createLogger } from '@berth/shared/logging';
import { type App, type Placement, placementSchema, type Version } from '@berth/shared/model';
import { MemoryBackend, type Op, Store } from '@berth/shared/store';
import { describe, expect, it } from 'vitest';
import type { EventRecorder } from '../activity/recorder.ts';
import type { CellWriter } from '../apply/cell-writer.ts';
import type { DesiredState, StoredValue } from '../state/desired-state.ts';
import { StatusReporter } from '../status/reporter.ts';
import { Placer } from './placer.ts';
import { Reconciler } from './reconciler.ts';

const keys = new BerthKeys('/t');
const logger = createLogger({ service: 'test', level: 'silent' });
const now = '2026-11-29T12:00:00.000Z';

function appNamed(name: string): App {
  return { name, region: 'r1', incarnation: '6f1c2f8e-3c55-4a3a-9d59-0b1b3c1c2f00', minCells: 2 } as App;
}
function v1(app: string): Version {
  return { app, name: 'v1', number: 1, replicas: 2, cpu: '100m', memory: '64Mi' } as Version;
}

/** The watch's view, as a test sets it: apps by name, and etcd's placements once `catchUp` ran. */
function fakeState(apps: Map<string, App>, placements: Map<string, Map<string, StoredValue<Placement>>>) {
  return {
    app: (name: string) => apps.get(name),
    versions: (name: string) => (apps.has(name) ? [v1(name)] : []),
    version: (name: string, v: string) => (apps.has(name) && v === 'v1' ? v1(name) : undefined),
    cells: () => [],
    placement: (a: string, v: string) => placements.get(a)?.get(v),
    placementsOf: (a: string) => placements.get(a) ?? new Map(),
    *placements() {
      for (const [a, byVersion] of placements)
        for (const [v, stored] of byVersion) yield { app: a, version: v, stored };
    },
    status: () => undefined,
    statusKeysOf: () => [],
    availability: () => undefined,
    availabilityKeysOf: () => [],
  } as unknown as DesiredState;
}

function recorder(): EventRecorder & { flushed: BerthEvent[] } {
  let n = 0;
  const flushed: BerthEvent[] = [];
  return {
    flushed,
    record(input: EventInput): { op: Op; event: BerthEvent } {
      const id = `00000000-0000-4000-8000-${String(n++).padStart(12, '0')}`;
      const event = { ...input, v: 1, id, time: now } as BerthEvent;
      return { op: { op: 'put', key: keys.outbox(event.id), value: event }, event };
    },
    flush(events) {
      flushed.push(...events);
    },
  };
}

function setup(names: string[], options: { leading?: () => boolean; maxTxnOps?: number } = {}) {
  const backend = new MemoryBackend();
  // The fence as the election gives it; here a compare that holds (the key is absent).
  const store = new Store(backend).fenced(() => {
    if (options.leading && !options.leading()) throw new NotLeaderError('deposed');
    return { key: keys.election('scheduler'), modRevision: 0 };
  });
  const apps = new Map(names.map((n) => [n, appNamed(n)]));
  const placements = new Map<string, Map<string, StoredValue<Placement>>>();
  const state = fakeState(apps, placements);
  const events = recorder();
  const placed: string[] = [];
  const placer = new Placer({
    store,
    keys,
    state,
    cells: () => new Map(),
    health: () => 'out',
    events,
    logger,
    maxTxnOps: options.maxTxnOps ?? 128,
    onPlaced: (a) => placed.push(...a),
  });
  placer.start();
  const place = async (...which: string[]) => {
    for (const a of which) placer.add(a);
    await placer.idle();
  };
  /** Makes the watch's view what etcd holds (the watch caught up). */
  const catchUp = async () => {
    placements.clear();
    for (const stored of await store.list(keys.placements(), placementSchema)) {
      const byVersion = placements.get(stored.value.app) ?? new Map();
      byVersion.set(stored.value.version, { value: stored.value, modRevision: stored.modRevision });
      placements.set(stored.value.app, byVersion);
    }
  };
  return { backend, store, placer, events, placed, place, catchUp, apps, placements, state };
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
      status: new StatusReporter({ store, events: recorder(), logger }),
      writer: {} as CellWriter,
      cells: () => new Map(),
      health: () => 'out',
      manifests: { registry: 'registry', preStopDelaySeconds: 0 },
      events: recorder(),
      logger,
    });
    await reconciler.reconcileApp('shop');
    expect(await store.get(keys.placement('shop', 'v1'), placementSchema)).toBeUndefined();
  });
});
