/**
 * Placement, once per change, for every app that changed together. Watch handlers add app names;
 * one loop takes every waiting app, places their versions in one pass (capacity and usage counted
 * once for the whole batch, each decision counted at once so the next app sees it), and writes
 * the placements that changed in as few etcd transactions as the server allows. Each placement in
 * a transaction compares its own mod revision; the leader fence and the events the change makes
 * (outbox) ride the same transaction. When a compare fails, only the apps whose keys changed are
 * read again and placed anew; the rest of the batch is written at once without them.
 *
 * The reconcile workers never place: they read the placement this stage made (`cellsOf`). A
 * placement this scheduler wrote, coming back through its watch at the revision it wrote, starts
 * no second pass (`isOwnWrite`).
 */
import { CompareFailedError, NotLeaderError } from '@berth/shared/errors';
import type { BerthEvent, EventInput } from '@berth/shared/events';
import type { BerthKeys } from '@berth/shared/keys';
import type { Logger } from '@berth/shared/logging';
import {
  type App,
  type Condition,
  type Placement,
  parseCpuMillis,
  parseMemoryBytes,
  placementSchema,
  type Version,
} from '@berth/shared/model';
import type { Op, Store } from '@berth/shared/store';
import type { Counter } from 'prom-client';
import { type EventRecorder, SCHEDULER_ACTOR } from '../activity/recorder.ts';
import type { CellCapacity, CellRuntime } from '../cells/cell-runtime.ts';
import {
  type CellCandidate,
  type CellHealth,
  type PlacementCondition,
  type PlacementResult,
  placeReplicas,
} from '../placement/place.ts';
import type { DesiredState, StoredValue } from '../state/desired-state.ts';

export type PlacerOptions = {
  /** Fenced by the leader election: a deposed leader's batch fails as a whole (NotLeaderError). */
  store: Store;
  keys: BerthKeys;
  state: DesiredState;
  cells: () => Map<string, CellRuntime>;
  health: (cell: string) => CellHealth;
  events: EventRecorder;
  logger: Logger;
  /** Operations etcd accepts in one transaction (its `--max-txn-ops`, 128 by default). */
  maxTxnOps?: number;
  /** Apps placed (written or unchanged): their reconcile may run now. */
  onPlaced: (apps: string[]) => void;
  /** Placement transactions, for the benchmark's etcd writes per version. */
  transactions?: Counter | undefined;
  /**
   * False while a cell that was just added has not listed yet: placing then would find no room
   * anywhere and announce the app Unschedulable for a moment. Placement waits (a little).
   */
  cellsReady?: () => boolean;
};

type Usage = Map<string, { cpu: number; memory: number }>;
/** What this process decided and wrote, until its watch shows the same revision or a newer one. */
type Recent = { cells: Record<string, number>; value?: Placement; revision?: number };
/** One app's placement writes of a batch. */
type Planned = {
  app: string;
  ops: Op[];
  events: BerthEvent[];
  writes: { version: string; key: string; value: Placement }[];
};

const MAX_APPS_PER_BATCH = 500;

export class Placer {
  readonly #o: PlacerOptions;
  readonly #logger: Logger;
  readonly #recent = new Map<string, Map<string, Recent>>();
  readonly #requests = new WeakMap<Version, { cpu: number; memory: number }>();
  /** key → the revision this process wrote it at (until its watch shows it). */
  readonly #ownWrites = new Map<string, number>();
  readonly #pending = new Set<string>();
  /** Apps whose placements must be read from etcd, not the watch (they lost a compare). */
  readonly #fresh = new Set<string>();
  #running: Promise<void> | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  #retryDelayMs = 0;
  #stopped = true;
  #idleWaiters: (() => void)[] = [];

  constructor(options: PlacerOptions) {
    this.#o = options;
    this.#logger = options.logger.child({ component: 'placer' });
  }

  start(): void {
    this.#stopped = false;
    this.#kick();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#retryTimer);
    this.#pending.clear();
    await this.#running;
    this.#wakeIdle();
  }

  /** Forgets what this process decided before (a new term as leader starts from etcd). */
  reset(): void {
    this.#recent.clear();
    this.#ownWrites.clear();
    this.#fresh.clear();
  }

  add(app: string): void {
    if (this.#stopped) return;
    this.#pending.add(app);
    this.#kick();
  }

  /** Resolves when no app waits to be placed. */
  /**
   * Working through apps now (not stopped, not waiting out a retry pause after an etcd failure,
   * not waiting for a new cell's first list).
   */
  get placing(): boolean {
    if (this.#stopped || this.#retryTimer) return false;
    return this.#running !== undefined || this.#pending.size > 0;
  }

  idle(): Promise<void> {
    if (!this.#running && this.#pending.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /** True when the change is this process's own placement write, at the revision it made. */
  isOwnWrite(key: string, modRevision: number): boolean {
    const own = this.#ownWrites.get(key);
    if (own === undefined || own > modRevision) return false;
    this.#ownWrites.delete(key);
    return own === modRevision;
  }

  /** The replicas per cell a version is placed at: this process's latest decision, else etcd's. */
  cellsOf(app: string, version: string): Record<string, number> | undefined {
    return this.#current(app, version)?.value.cells;
  }

  /** True when this installation placed the version (its pods are not "other workloads"). */
  placed(app: string, version: string): boolean {
    return this.#o.state.placement(app, version) !== undefined || this.#recent.get(app)?.has(version) === true;
  }

  forget(app: string, version?: string): void {
    if (version === undefined) this.#recent.delete(app);
    else this.#recent.get(app)?.delete(version);
  }

  // ---- The loop ---------------------------------------------------------------------------------

  #kick(): void {
    if (this.#running || this.#stopped || this.#retryTimer || this.#pending.size === 0) return;
    // After the current turn: a burst of watch events (one etcd watch response) lands in one batch.
    this.#running = new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => this.#loop())
      .finally(() => {
        this.#running = undefined;
        if (this.#pending.size > 0 && !this.#stopped && !this.#retryTimer) this.#kick();
        else this.#wakeIdle();
      });
  }

  async #loop(): Promise<void> {
    if (this.#o.cellsReady && !this.#o.cellsReady()) {
      this.#retryTimer = setTimeout(() => {
        this.#retryTimer = undefined;
        this.#kick();
      }, 100);
      return;
    }
    while (this.#pending.size > 0 && !this.#stopped) {
      const apps = [...this.#pending].sort().slice(0, MAX_APPS_PER_BATCH);
      for (const app of apps) this.#pending.delete(app);
      try {
        await this.#placeBatch(apps);
        this.#retryDelayMs = 0;
      } catch (err) {
        if (err instanceof NotLeaderError) {
          this.#logger.info('not the leader any more: placement stops');
          return;
        }
        // etcd unreachable, or the like: the whole batch again, after a growing pause.
        for (const app of apps) this.#pending.add(app);
        this.#retryDelayMs = Math.min(5000, Math.max(200, this.#retryDelayMs * 2));
        this.#logger.warn({ err: (err as Error).message, apps: apps.length }, 'placement failed; will retry');
        this.#retryTimer = setTimeout(() => {
          this.#retryTimer = undefined;
          this.#kick();
        }, this.#retryDelayMs);
        return;
      }
    }
  }

  async #placeBatch(names: string[]): Promise<void> {
    const fresh = new Map<string, Map<string, StoredValue<Placement>>>();
    for (const app of names.filter((a) => this.#fresh.has(a))) {
      const stored = await this.#o.store.list(this.#o.keys.appPlacements(app), placementSchema);
      fresh.set(app, new Map(stored.map((s) => [s.value.version, { value: s.value, modRevision: s.modRevision }])));
      this.#fresh.delete(app);
    }
    const capacities = new Map<string, CellCapacity>();
    const isOurs = (a: string, v: string) => this.placed(a, v);
    for (const [cellName, runtime] of this.#o.cells()) capacities.set(cellName, runtime.capacity(isOurs));
    const usage = this.#berthUsage();
    const planned: Planned[] = [];
    const placed: string[] = [];
    for (const name of names) {
      const app = this.#o.state.app(name);
      if (!app) {
        placed.push(name); // deleted: the reconcile removes what runs
        continue;
      }
      const plan = this.#planApp(app, capacities, usage, fresh.get(name));
      if (plan.ops.length > 0) planned.push(plan);
      else placed.push(name);
    }
    const { written, conflicted } = await this.#commit(planned);
    for (const app of conflicted) {
      this.#fresh.add(app);
      this.#pending.add(app);
      this.forget(app);
    }
    this.#o.onPlaced([...placed, ...written]);
  }

  /** Places an app's versions; its usage is counted at once, so the next app of the batch sees it. */
  #planApp(
    app: App,
    capacities: Map<string, CellCapacity>,
    usage: Usage,
    fresh: Map<string, StoredValue<Placement>> | undefined,
  ): Planned {
    const plan: Planned = { app: app.name, ops: [], events: [], writes: [] };
    const now = new Date().toISOString();
    for (const version of this.#o.state.versions(app.name)) {
      const current = fresh ? fresh.get(version.name) : this.#current(app.name, version.name);
      const result = this.#place(app, version, capacities, usage, current?.value.cells ?? {});
      this.#setUsage(usage, version, current?.value.cells, result.cells);
      this.#remember(app.name, version.name, { cells: result.cells });
      const change = nextPlacement(app, version, current?.value, result, now);
      if (!change) continue;
      const key = this.#o.keys.placement(app.name, version.name);
      plan.ops.push(
        current
          ? { op: 'update', key, value: change.next, modRevision: current.modRevision }
          : { op: 'create', key, value: change.next },
      );
      for (const input of change.events) {
        const { op, event } = this.#o.events.record(input);
        plan.ops.push(op);
        plan.events.push(event);
      }
      plan.writes.push({ version: version.name, key, value: change.next });
    }
    return plan;
  }

  /**
   * Writes the planned apps in transactions of at most maxTxnOps operations (one is the fence).
   * A failed compare drops the apps whose keys changed and writes the rest again at once.
   */
  /**
   * Writes the planned apps in transactions of at most maxTxnOps operations, sent together (etcd
   * pipelines them; on a loaded machine one after another took seconds for a burst of 1000
   * versions). Each transaction stands alone: a compare that fails drops only its own apps.
   */
  async #commit(planned: Planned[]): Promise<{ written: string[]; conflicted: string[] }> {
    const limit = Math.max(2, (this.#o.maxTxnOps ?? 128) - 1);
    const written: string[] = [];
    const conflicted: string[] = [];
    const chunks: Planned[][] = [];
    let chunk: Planned[] = [];
    let size = 0;
    for (const p of planned) {
      // One app's writes stay together; an app larger than a transaction gets one of its own.
      if (size > 0 && size + p.ops.length > limit) {
        chunks.push(chunk);
        chunk = [];
        size = 0;
      }
      chunk.push(p);
      size += p.ops.length;
    }
    if (chunk.length > 0) chunks.push(chunk);
    const send = async (first: Planned[]) => {
      let batch = first;
      while (batch.length > 0) {
        try {
          this.#o.transactions?.inc();
          const revision = await this.#o.store.commit(batch.flatMap((p) => p.ops));
          for (const p of batch) this.#committed(p, revision);
          written.push(...batch.map((p) => p.app));
          return;
        } catch (err) {
          if (!(err instanceof CompareFailedError)) throw err;
          const failed = new Set(err.failedKeys);
          const lost = batch.filter((p) => p.writes.some((w) => failed.has(w.key)));
          // A compare we cannot attribute (it should not happen): the whole batch is read again.
          const drop = lost.length > 0 ? lost : batch;
          conflicted.push(...drop.map((p) => p.app));
          batch = batch.filter((p) => !drop.includes(p));
        }
      }
    };
    const results = await Promise.allSettled(chunks.map(send));
    // What committed is recorded above; any other failure (etcd, leadership) retries the batch.
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    return { written, conflicted };
  }

  #committed(p: Planned, revision: number): void {
    for (const w of p.writes) {
      this.#remember(p.app, w.version, { cells: w.value.cells, value: w.value, revision });
      this.#ownWrites.set(w.key, revision);
    }
    this.#o.events.flush(p.events);
  }

  // ---- What is placed where ---------------------------------------------------------------------

  /** The newer of etcd's placement (as the watch shows it) and this process's last write. */
  #current(app: string, version: string): StoredValue<Placement> | undefined {
    const stored = this.#o.state.placement(app, version);
    const recent = this.#recent.get(app)?.get(version);
    if (recent?.value && recent.revision !== undefined && (!stored || stored.modRevision < recent.revision)) {
      return { value: recent.value, modRevision: recent.revision };
    }
    return stored;
  }

  #remember(app: string, version: string, recent: Recent): void {
    const byVersion = this.#recent.get(app) ?? new Map<string, Recent>();
    const before = byVersion.get(version);
    // A decision not written yet keeps the last written value and revision to compare against.
    byVersion.set(version, recent.value ? recent : { ...before, cells: recent.cells });
    this.#recent.set(app, byVersion);
  }

  #place(
    app: App,
    version: Version,
    capacities: Map<string, CellCapacity>,
    usage: Usage,
    previous: Record<string, number>,
  ): PlacementResult {
    const request = this.#requestOf(version);
    const candidates: CellCandidate[] = [];
    for (const cell of this.#o.state.cells()) {
      const cap = capacities.get(cell.name);
      if (!cap) {
        candidates.push({ name: cell.name, health: 'out', fits: 0, freeCpuMillis: 0, freeMemoryBytes: 0 });
        continue;
      }
      // What every other Berth version is placed to use here (this version's own share is free to it).
      const used = usage.get(cell.name) ?? { cpu: 0, memory: 0 };
      const own = previous[cell.name] ?? 0;
      const freeCpuMillis = Math.max(0, cap.allocatableCpuMillis - cap.otherCpuMillis - used.cpu + own * request.cpu);
      const freeMemoryBytes = Math.max(
        0,
        cap.allocatableMemoryBytes - cap.otherMemoryBytes - used.memory + own * request.memory,
      );
      const fits = Math.floor(Math.min(freeCpuMillis / request.cpu, freeMemoryBytes / request.memory));
      candidates.push({
        name: cell.name,
        health: this.#o.health(cell.name),
        fits: Math.max(0, fits),
        freeCpuMillis,
        freeMemoryBytes,
      });
    }
    return placeReplicas({
      replicas: version.replicas,
      minCells: app.minCells,
      previous,
      cells: candidates,
      request: { cpuMillis: request.cpu, memoryBytes: request.memory },
    });
  }

  #requestOf(version: Version): { cpu: number; memory: number } {
    let r = this.#requests.get(version);
    if (!r) {
      r = { cpu: parseCpuMillis(version.cpu), memory: parseMemoryBytes(version.memory) };
      this.#requests.set(version, r);
    }
    return r;
  }

  /** cpu and memory every Berth version is placed to use, per cell. */
  #berthUsage(): Usage {
    const usage: Usage = new Map();
    // The watch has caught up with what we wrote: etcd's copy is the one to read from now on.
    for (const [app, byVersion] of this.#recent) {
      for (const [version, recent] of byVersion) {
        const stored = this.#o.state.placement(app, version);
        if (stored && recent.revision !== undefined && stored.modRevision >= recent.revision) byVersion.delete(version);
      }
      if (byVersion.size === 0) this.#recent.delete(app);
    }
    for (const { app, version: v, stored } of this.#o.state.placements()) {
      if (this.#recent.get(app)?.has(v)) continue;
      const version = this.#o.state.version(app, v);
      if (version) this.#addUsage(usage, version, stored.value.cells, 1);
    }
    for (const [app, byVersion] of this.#recent) {
      for (const [v, recent] of byVersion) {
        const version = this.#o.state.version(app, v);
        if (version) this.#addUsage(usage, version, recent.cells, 1);
      }
    }
    return usage;
  }

  /** Replaces what the version counts for in `usage` (`before`) with `cells`. */
  #setUsage(usage: Usage, version: Version, before: Record<string, number> | undefined, cells: Record<string, number>) {
    if (before) this.#addUsage(usage, version, before, -1);
    this.#addUsage(usage, version, cells, 1);
  }

  #addUsage(usage: Usage, version: Version, cells: Record<string, number>, sign: 1 | -1): void {
    const r = this.#requestOf(version);
    for (const [cell, n] of Object.entries(cells)) {
      const u = usage.get(cell) ?? { cpu: 0, memory: 0 };
      u.cpu += sign * n * r.cpu;
      u.memory += sign * n * r.memory;
      usage.set(cell, u);
    }
  }

  #wakeIdle(): void {
    if (this.#running || this.#pending.size > 0) return;
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const w of waiters) w();
  }
}

// ---- Pure decisions ------------------------------------------------------------------------------

/**
 * The placement to write for a placing result, and the events it announces; undefined when what
 * is stored already says it (a pass that changes nothing writes nothing).
 */
export function nextPlacement(
  app: App,
  version: Version,
  current: Placement | undefined,
  result: PlacementResult,
  now: string,
): { next: Placement; events: EventInput[] } | undefined {
  const cellsChanged = !current || !sameCells(current.cells, result.cells);
  const conditions = mergeConditions(current?.conditions ?? [], result.conditions, now);
  const conditionsChanged = !current || !sameConditions(current.conditions, conditions);
  if (!cellsChanged && !conditionsChanged && current.desired === version.replicas) return undefined;
  // Problems that start now (not already recorded) are announced as events.
  const started = conditions.filter(
    (c) =>
      c.status === 'True' &&
      !current?.conditions.some((p) => p.type === c.type && p.status === 'True' && p.message === c.message),
  );
  return {
    next: {
      app: app.name,
      version: version.name,
      cells: result.cells,
      generation: (current?.generation ?? 0) + (cellsChanged || !current ? 1 : 0),
      desired: version.replicas,
      conditions,
      updatedAt: now,
    },
    events: started.map((c) =>
      versionEvent(app, version, c.type === 'Unschedulable' ? 'unschedulable' : 'min-cells-shortfall', {
        reason: c.reason,
        message: c.message,
      }),
    ),
  };
}

/** An event about one of the app's versions, decided by the scheduler. */
export function versionEvent(app: App, version: Version, action: string, data: Record<string, unknown>): EventInput {
  return {
    actor: SCHEDULER_ACTOR,
    kind: 'version',
    resourceId: app.name,
    ...(app.incarnation ? { incarnation: app.incarnation } : {}),
    resourceName: version.name,
    action,
    data,
  };
}

function sameCells(a: Record<string, number>, b: Record<string, number>): boolean {
  const ka = Object.keys(a).filter((k) => (a[k] ?? 0) > 0);
  const kb = Object.keys(b).filter((k) => (b[k] ?? 0) > 0);
  return ka.length === kb.length && ka.every((k) => a[k] === b[k]);
}

function sameConditions(a: Condition[], b: Condition[]): boolean {
  const key = (c: Condition) => `${c.type}|${c.status}|${c.reason}|${c.message}`;
  return JSON.stringify(a.map(key).sort()) === JSON.stringify(b.map(key).sort());
}

/**
 * The placement's own conditions replaced; transition times kept when unchanged. (Availability is
 * not a placement condition: it has its own key, written by the reconcile.)
 */
function mergeConditions(current: Condition[], next: PlacementCondition[], now: string): Condition[] {
  const types = new Set(next.map((c) => c.type));
  const kept = current.filter((c) => !types.has(c.type) && c.type !== 'Available');
  return [
    ...kept,
    ...next.map((c) => {
      const prev = current.find((p) => p.type === c.type);
      return { ...c, lastTransitionTime: prev && prev.status === c.status ? prev.lastTransitionTime : now };
    }),
  ].sort(byType);
}

function byType(a: Condition, b: Condition): number {
  return a.type < b.type ? -1 : a.type > b.type ? 1 : 0;
}
