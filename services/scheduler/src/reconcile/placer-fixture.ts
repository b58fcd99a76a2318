/**
 * The placer with a watch view a test controls, on any KV backend: the unit tests run it on the
 * in-memory backend, services/scheduler/test/batch.test.ts on real etcd. `backend.txns` counts the
 * transactions sent; `catchUp` makes the view what the store holds, as the watch would.
 */
import { NotLeaderError } from '@berth/shared/errors';
import type { BerthEvent, EventInput } from '@berth/shared/events';
import { BerthKeys } from '@berth/shared/keys';
import { createLogger } from '@berth/shared/logging';
import { type App, type Placement, placementSchema, type Version } from '@berth/shared/model';
import {
  type Compare,
  type KeyValue,
  type KvBackend,
  MemoryBackend,
  type Op,
  type RangeOptions,
  Store,
  type TxnResult,
  type Write,
} from '@berth/shared/store';
import type { EventRecorder } from '../activity/recorder.ts';
import type { DesiredState, StoredValue } from '../state/desired-state.ts';
import { Placer } from './placer.ts';

export type FixtureOptions = {
  leading?: () => boolean;
  maxTxnOps?: number;
  /** The backend (default: in memory) and the key prefix (default: /t). */
  backend?: KvBackend;
  prefix?: string;
};

export const logger = createLogger({ service: 'test', level: 'silent' });
export const now = '2026-11-29T12:00:00.000Z';

export function appNamed(name: string): App {
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

export function recorder(keys: BerthKeys): EventRecorder & { flushed: BerthEvent[] } {
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

/** Passes every call on to the backend it wraps; tests override what they watch or break. */
export class ForwardingBackend implements KvBackend {
  readonly inner: KvBackend;
  constructor(inner: KvBackend) {
    this.inner = inner;
  }
  get(key: string): Promise<KeyValue | undefined> {
    return this.inner.get(key);
  }
  range(prefix: string, options?: RangeOptions): Promise<KeyValue[]> {
    return this.inner.range(prefix, options);
  }
  txn(compares: readonly Compare[], writes: readonly Write[]): Promise<TxnResult> {
    return this.inner.txn(compares, writes);
  }
}

/** Counts the transactions it passes on to the backend it wraps. */
export class CountingBackend extends ForwardingBackend {
  txns = 0;
  override txn(compares: readonly Compare[], writes: readonly Write[]): Promise<TxnResult> {
    this.txns++;
    return super.txn(compares, writes);
  }
}

export function setupPlacer(names: string[], options: FixtureOptions = {}) {
  const keys = new BerthKeys(options.prefix ?? '/t');
  const backend = new CountingBackend(options.backend ?? new MemoryBackend());
  // The fence as the election gives it; here a compare that holds (the key is absent).
  const store = new Store(backend).fenced(() => {
    if (options.leading && !options.leading()) throw new NotLeaderError('deposed');
    return { key: keys.election('scheduler'), modRevision: 0 };
  });
  const apps = new Map(names.map((n) => [n, appNamed(n)]));
  const placements = new Map<string, Map<string, StoredValue<Placement>>>();
  const state = fakeState(apps, placements);
  const events = recorder(keys);
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
  return { keys, backend, store, placer, events, placed, place, catchUp, apps, placements, state };
}
