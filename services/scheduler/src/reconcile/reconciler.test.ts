/**
 * The reconciler's etcd write path against the in-memory backend: a placement and the events it
 * makes are one transaction, published only after it commits; a deposed leader writes nothing.
 * No cells: the apply path needs real API servers (services/scheduler/test).
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
import { Reconciler } from './reconciler.ts';

const keys = new BerthKeys('/t');
const logger = createLogger({ service: 'test', level: 'silent' });
const now = '2026-11-29T12:00:00.000Z';

const app = {
  name: 'shop',
  region: 'r1',
  incarnation: '6f1c2f8e-3c55-4a3a-9d59-0b1b3c1c2f00',
  minCells: 2,
} as App;
const version = { app: 'shop', name: 'v1', number: 1, replicas: 2, cpu: '100m', memory: '64Mi' } as Version;

/** The watch's view, as a test sets it. */
function fakeState(placements: Map<string, StoredValue<Placement>>): DesiredState {
  return {
    app: (name: string) => (name === app.name ? app : undefined),
    versions: () => [version],
    version: (_a: string, v: string) => (v === version.name ? version : undefined),
    cells: () => [],
    placement: (_a: string, v: string) => placements.get(v),
    placementsOf: () => placements,
    *placements() {
      for (const [v, stored] of placements) yield { app: app.name, version: v, stored };
    },
    status: () => undefined,
    statusKeysOf: () => [],
  } as unknown as DesiredState;
}

function recorder(): EventRecorder & { flushed: BerthEvent[] } {
  let n = 0;
  const flushed: BerthEvent[] = [];
  return {
    flushed,
    record(input: EventInput): { op: Op; event: BerthEvent } {
      const event = { ...input, v: 1, id: `00000000-0000-4000-8000-00000000000${n++}`, time: now } as BerthEvent;
      return { op: { op: 'put', key: keys.outbox(event.id), value: event }, event };
    },
    flush(events) {
      flushed.push(...events);
    },
  };
}

function setup(options: { leading?: () => boolean } = {}) {
  const backend = new MemoryBackend();
  // The fence as the election gives it; here a compare that holds (the key is absent).
  const store = new Store(backend).fenced(() => {
    if (options.leading && !options.leading()) throw new NotLeaderError('deposed');
    return { key: keys.election('scheduler'), modRevision: 0 };
  });
  const placements = new Map<string, StoredValue<Placement>>();
  const events = recorder();
  const reconciler = new Reconciler({
    store,
    keys,
    state: fakeState(placements),
    writer: {} as CellWriter,
    cells: () => new Map(),
    health: () => 'out',
    manifests: { registry: 'registry', preStopDelaySeconds: 0 },
    events,
    logger,
  });
  /** Makes the watch's view what etcd holds (the watch caught up). */
  const catchUp = async () => {
    const stored = await store.get(keys.placement(app.name, version.name), placementSchema);
    if (stored) placements.set(version.name, stored);
    else placements.delete(version.name);
  };
  return { backend, store, reconciler, events, placements, catchUp };
}

describe('reconciler writes', () => {
  it('writes a placement and the events of the problems it starts in one transaction, then publishes them', async () => {
    const { backend, store, reconciler, events } = setup();
    await reconciler.placeApp(app.name);

    const placement = await store.get(keys.placement(app.name, version.name), placementSchema);
    expect(placement?.value.conditions.find((c) => c.type === 'Unschedulable')?.status).toBe('True');
    const outbox = await backend.range(keys.outboxes());
    expect(outbox.length).toBeGreaterThan(0);
    // Same transaction: the same revision as the placement.
    for (const kv of outbox) expect(kv.modRevision).toBe(placement?.modRevision);
    expect(events.flushed.map((e) => e.action)).toContain('unschedulable');
    expect(new Set(events.flushed.map((e) => e.resourceId))).toEqual(new Set(['shop']));
    // App-scoped events carry the app's incarnation.
    for (const e of events.flushed) expect(e.incarnation).toBe(app.incarnation);
  });

  it('writes nothing and announces nothing again once the watch shows what it wrote', async () => {
    const { backend, reconciler, events, catchUp } = setup();
    await reconciler.placeApp(app.name);
    await catchUp();
    const txns = backend.txns;
    const flushed = events.flushed.length;
    await reconciler.placeApp(app.name);
    expect(backend.txns).toBe(txns);
    expect(events.flushed.length).toBe(flushed);
  });

  it('a placement changed behind the watch is decided again on a fresh read', async () => {
    const { backend, store, reconciler, events } = setup();
    // Someone wrote the placement (a previous term) that the watch has not shown yet.
    const key = keys.placement(app.name, version.name);
    await store.commit([
      {
        op: 'create',
        key,
        value: {
          app: app.name,
          version: version.name,
          cells: {},
          generation: 3,
          desired: 2,
          conditions: [],
          updatedAt: now,
        } satisfies Placement,
      },
    ]);
    await reconciler.placeApp(app.name);
    const placement = await store.get(key, placementSchema);
    expect(placement?.value.generation).toBe(3); // cells unchanged ({}), conditions added
    expect(placement?.value.conditions.some((c) => c.type === 'Unschedulable')).toBe(true);
    expect(backend.txns).toBe(3); // the seed, the create that found the key, the update
    expect(events.flushed.map((e) => e.action)).toContain('unschedulable');
  });

  it('a deposed leader writes nothing: no placement, no outbox entry, nothing published', async () => {
    let leading = true;
    const { backend, reconciler, events } = setup({ leading: () => leading });
    leading = false;
    await expect(reconciler.placeApp(app.name)).rejects.toBeInstanceOf(NotLeaderError);
    expect(await backend.range('/t/')).toEqual([]);
    expect(events.flushed).toEqual([]);
  });

  it('a deleted app has its placements removed (no cell runs it)', async () => {
    const { reconciler, catchUp, store, placements } = setup();
    await reconciler.placeApp(app.name);
    await catchUp();
    const afterDelete = new Reconciler({
      store,
      keys,
      state: { ...fakeState(placements), app: () => undefined } as unknown as DesiredState,
      writer: {} as CellWriter,
      cells: () => new Map(),
      health: () => 'out',
      manifests: { registry: 'registry', preStopDelaySeconds: 0 },
      events: recorder(),
      logger,
    });
    await afterDelete.reconcileApp(app.name);
    expect(await store.get(keys.placement(app.name, version.name), placementSchema)).toBeUndefined();
  });
});
