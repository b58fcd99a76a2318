/**
 * Reconciles one app: places each version over the cells, writes the placements, applies the
 * app's objects to each cell (only what differs), removes what no longer belongs, and reports
 * status per version and cell. Level-triggered: it reads the whole current state each time and
 * compares it with what it wants, so a missed event or a restart changes nothing.
 *
 * Safe switches: a replica count only goes down once everything the app is bringing up is
 * available (rollback, gray steps, moves between cells): the app never drops below its ready count.
 */
import { UnavailableError } from '@berth/shared/errors';
import type { BerthEvent, EventInput } from '@berth/shared/events';
import type { BerthKeys } from '@berth/shared/keys';
import type { Logger } from '@berth/shared/logging';
import {
  type App,
  type Condition,
  deploymentName,
  LABELS,
  type Placement,
  parseCpuMillis,
  parseMemoryBytes,
  placementSchema,
  type Version,
  type VersionCellStatus,
} from '@berth/shared/model';
import { DELETE, type Store, transact, UNCHANGED, type UpdateResult } from '@berth/shared/store';
import type { V1Deployment } from '@kubernetes/client-node';
import { type EventRecorder, SCHEDULER_ACTOR } from '../activity/recorder.ts';
import type { CellWriter } from '../apply/cell-writer.ts';
import { deploymentFor, type ManifestOptions, namespaceFor, serviceFor } from '../apply/manifests.ts';
import type { CellCapacity, CellRuntime } from '../cells/cell-runtime.ts';
import { type CellCandidate, type CellHealth, type PlacementResult, placeReplicas } from '../placement/place.ts';
import type { DesiredState } from '../state/desired-state.ts';

export type ReconcilerOptions = {
  /**
   * The store, fenced by the leader election (`store.fenced(() => election.fence())`): every etcd
   * write of the scheduler compares the leader key, so a deposed leader that has not noticed yet
   * cannot overwrite its successor (the commit throws NotLeaderError).
   */
  store: Store;
  keys: BerthKeys;
  state: DesiredState;
  writer: CellWriter;
  cells: () => Map<string, CellRuntime>;
  health: (cell: string) => CellHealth;
  manifests: ManifestOptions;
  /** Events ride the transaction of the change they record (outbox), and are published after it. */
  events: EventRecorder;
  logger: Logger;
};

type Target = { version: Version; placement: PlacementResult };
type Usage = Map<string, { cpu: number; memory: number }>;
/** A placement decided in this process: `revision` once etcd has it (until the watch catches up). */
type Recent = { cells: Record<string, number>; revision?: number };
/** What a placement change decides: the next value, and the events it makes (committed with it). */
type PlacementChange = { next: Placement | typeof UNCHANGED | typeof DELETE; events?: EventInput[] };

/** Values per app and version: the two names stay apart, never joined into one string key. */
class ByVersion<T> {
  readonly #byApp = new Map<string, Map<string, T>>();

  get(app: string, version: string): T | undefined {
    return this.#byApp.get(app)?.get(version);
  }

  has(app: string, version: string): boolean {
    return this.#byApp.get(app)?.has(version) ?? false;
  }

  set(app: string, version: string, value: T): void {
    const byVersion = this.#byApp.get(app) ?? new Map<string, T>();
    byVersion.set(version, value);
    this.#byApp.set(app, byVersion);
  }

  delete(app: string, version: string): void {
    const byVersion = this.#byApp.get(app);
    byVersion?.delete(version);
    if (byVersion?.size === 0) this.#byApp.delete(app);
  }

  deleteApp(app: string): void {
    this.#byApp.delete(app);
  }

  clear(): void {
    this.#byApp.clear();
  }

  *entries(): Generator<{ app: string; version: string; value: T }> {
    for (const [app, byVersion] of this.#byApp) {
      for (const [version, value] of byVersion) yield { app, version, value };
    }
  }
}

export class Reconciler {
  readonly #o: ReconcilerOptions;
  readonly #logger: Logger;
  /** Placements decided in this process, ahead of the watch that will show them. */
  readonly #recent = new ByVersion<Recent>();
  readonly #requests = new WeakMap<Version, { cpu: number; memory: number }>();

  constructor(options: ReconcilerOptions) {
    this.#o = options;
    this.#logger = options.logger.child({ component: 'reconciler' });
  }

  /** Forgets what this process decided before (a new term as leader starts from etcd). */
  reset(): void {
    this.#recent.clear();
  }

  async reconcileApp(name: string): Promise<void> {
    const app = this.#o.state.app(name);
    if (!app) {
      await this.#removeApp(name);
      return;
    }
    const versions = this.#o.state.versions(name);
    const targets = await this.#placeVersions(app, versions);
    const settled = this.#settled(app, targets);
    const results = await Promise.allSettled(
      [...this.#o.cells().values()]
        // An unreachable cell cannot be written; a suspect one (back from an outage, within the
        // hold) keeps what runs there untouched until it is trusted again: no churn on a flap.
        .filter((cell) => cell.reachable && this.#o.health(cell.name) !== 'suspect')
        .map((cell) => this.#applyToCell(app, targets, cell, settled)),
    );
    await this.#removeVersionsGone(app, versions);
    await this.#writeStatus(app, targets);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  // ---- Placement ------------------------------------------------------------------------------

  /** Places an app's versions and writes their placements; no cell is touched. */
  async placeApp(name: string): Promise<void> {
    const app = this.#o.state.app(name);
    if (app) await this.#placeVersions(app, this.#o.state.versions(name));
  }

  async #placeVersions(app: App, versions: Version[]): Promise<Target[]> {
    const capacities = new Map<string, CellCapacity>();
    const isOurs = (a: string, v: string) => this.#o.state.placement(a, v) !== undefined || this.#recent.has(a, v);
    for (const [cellName, runtime] of this.#o.cells()) capacities.set(cellName, runtime.capacity(isOurs));
    const usage = this.#berthUsage();
    const targets: Target[] = [];
    for (const version of versions) {
      const placement = this.#place(app, version, capacities, usage);
      targets.push({ version, placement });
      // Decided: count it at once, so concurrent reconciles of other apps see it.
      this.#setUsage(usage, app.name, version, placement.cells);
      this.#recent.set(app.name, version.name, { cells: placement.cells });
      await this.#writePlacement(app, version, placement);
    }
    return targets;
  }

  #place(app: App, version: Version, capacities: Map<string, CellCapacity>, usage: Usage): PlacementResult {
    const request = this.#requestOf(version);
    const previous =
      this.#recent.get(app.name, version.name)?.cells ??
      this.#o.state.placement(app.name, version.name)?.value.cells ??
      {};
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

  /** cpu and memory every Berth version is placed to use, per cell: etcd's placements, overlaid by newer decisions. */
  #berthUsage(): Usage {
    const usage: Usage = new Map();
    for (const { app, version, value: recent } of [...this.#recent.entries()]) {
      const stored = this.#o.state.placement(app, version);
      // The watch has caught up with what we wrote: etcd's copy is the one to read from now on.
      if (stored && recent.revision !== undefined && stored.modRevision >= recent.revision) {
        this.#recent.delete(app, version);
      }
    }
    for (const { app, version: v, stored } of this.#o.state.placements()) {
      if (this.#recent.has(app, v)) continue;
      const version = this.#o.state.version(app, v);
      if (version) this.#addUsage(usage, version, stored.value.cells, 1);
    }
    for (const { app, version: v, value: recent } of this.#recent.entries()) {
      const version = this.#o.state.version(app, v);
      if (version) this.#addUsage(usage, version, recent.cells, 1);
    }
    return usage;
  }

  /** Replaces what the app's version counts for in `usage` with `cells`. */
  #setUsage(usage: Usage, app: string, version: Version, cells: Record<string, number>): void {
    const before =
      this.#recent.get(app, version.name)?.cells ?? this.#o.state.placement(app, version.name)?.value.cells;
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

  async #writePlacement(app: App, version: Version, result: PlacementResult): Promise<void> {
    const now = new Date().toISOString();
    const outcome = await this.#updatePlacement(app.name, version.name, (cur) => {
      const cellsChanged = !cur || !sameCells(cur.cells, result.cells);
      const conditions = mergeConditions(cur?.conditions ?? [], result.conditions, now);
      const conditionsChanged = !cur || !sameConditions(cur.conditions, conditions);
      if (!cellsChanged && !conditionsChanged && cur.desired === version.replicas) return { next: UNCHANGED };
      // Problems that start now (not already recorded) are announced as events.
      const started = conditions.filter(
        (c) =>
          c.status === 'True' &&
          c.type !== 'Available' &&
          !cur?.conditions.some((p) => p.type === c.type && p.status === 'True' && p.message === c.message),
      );
      return {
        next: {
          app: app.name,
          version: version.name,
          cells: result.cells,
          generation: (cur?.generation ?? 0) + (cellsChanged || !cur ? 1 : 0),
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
    });
    const recent = this.#recent.get(app.name, version.name);
    if (recent && recent.cells === result.cells) recent.revision = outcome.modRevision;
  }

  // ---- Fenced etcd writes ---------------------------------------------------------------------

  /**
   * Compare-and-swap of a placement on its mod revision, starting from what the watch knows (no
   * read when it is current). The events the change makes go into the outbox in the same
   * transaction and are published once it commits. Every write is fenced by the store.
   */
  async #updatePlacement(
    app: string,
    version: string,
    mutate: (current: Placement | undefined) => PlacementChange,
  ): Promise<UpdateResult<Placement>> {
    const key = this.#o.keys.placement(app, version);
    const known = this.#o.state.placement(app, version);
    let recorded: BerthEvent[] = [];
    const result = await transact<UpdateResult<Placement>>(
      this.#o.store,
      async (attempt) => {
        // Only the committed attempt's events are published.
        recorded = [];
        // First from what the watch knows (absent included: the create then fails if it is not);
        // after a conflict, from a fresh read.
        const current = attempt === 1 ? known : await this.#o.store.get(key, placementSchema);
        const modRevision = current?.modRevision ?? 0;
        const { next, events = [] } = mutate(current?.value);
        if (next === UNCHANGED || (next === DELETE && !current)) return { done: { outcome: 'unchanged', modRevision } };
        const entries = events.map((e) => this.#o.events.record(e));
        recorded = entries.map((e) => e.event);
        const outbox = entries.map((e) => e.op);
        if (next === DELETE) {
          return {
            ops: [{ op: 'delete', key, modRevision }, ...outbox],
            result: (rev) => ({ outcome: 'deleted', modRevision: rev }),
          };
        }
        return {
          ops: [
            current ? { op: 'update', key, value: next, modRevision } : { op: 'create', key, value: next },
            ...outbox,
          ],
          result: (rev) => ({ outcome: 'written', value: next, modRevision: rev }),
        };
      },
      { what: key },
    );
    if (result.outcome !== 'unchanged') this.#o.events.flush(recorded);
    return result;
  }

  // ---- Apply ----------------------------------------------------------------------------------

  /** True when every replica the app is bringing up is available: decreases may proceed. */
  #settled(app: App, targets: Target[]): boolean {
    for (const { version, placement } of targets) {
      for (const [cellName, want] of Object.entries(placement.cells)) {
        const cell = this.#o.cells().get(cellName);
        const dep = cell?.deployments.get(deploymentName(app.name, version.name), app.name);
        if (
          !dep ||
          (dep.status?.availableReplicas ?? 0) < want ||
          (dep.status?.observedGeneration ?? 0) < (dep.metadata?.generation ?? 0)
        ) {
          return false;
        }
      }
    }
    return true;
  }

  async #applyToCell(app: App, targets: Target[], cell: CellRuntime, settled: boolean): Promise<void> {
    const deployments = cell.deployments.list(app.name);
    const wantsAny = targets.some((t) => (t.placement.cells[cell.name] ?? 0) > 0) || deployments.length > 0;
    if (!wantsAny) return;
    const ns = namespaceFor(app);
    await this.#o.writer.ensure(cell, ns, cell.namespaces.get(app.name));
    const svc = serviceFor(app);
    await this.#o.writer.ensure(cell, svc, cell.services.get(app.name, app.name));

    const wanted = new Set<string>();
    for (const { version, placement } of targets) {
      const name = deploymentName(app.name, version.name);
      const target = placement.cells[cell.name] ?? 0;
      const current = cell.deployments.get(name, app.name);
      const running = current?.spec?.replicas ?? 0;
      // Up at once; down only when everything coming up is available.
      const replicas = target >= running || settled ? target : running;
      if (replicas === 0) continue; // deleted below once settled; never created for nothing
      wanted.add(name);
      const desired = deploymentFor(app, version, replicas, this.#o.manifests);
      await this.#o.writer.ensure(cell, desired, current);
    }
    for (const dep of deployments) {
      const name = dep.metadata?.name as string;
      if (wanted.has(name)) continue;
      const version = dep.metadata?.labels?.[LABELS.version];
      const stillTargeted = targets.some((t) => t.version.name === version);
      // A version scaled to 0 here waits for the switch to settle; a deleted version goes at once.
      if (stillTargeted && !settled) continue;
      await this.#o.writer.delete(cell, withKind(dep, 'apps/v1', 'Deployment'));
    }
  }

  // ---- Status ---------------------------------------------------------------------------------

  async #writeStatus(app: App, targets: Target[]): Promise<void> {
    const keep = new Set<string>();
    for (const { version, placement } of targets) {
      let available = 0;
      for (const cell of this.#o.cells().values()) {
        const dep = cell.deployments.get(deploymentName(app.name, version.name), app.name);
        const desired = placement.cells[cell.name] ?? 0;
        if (!dep && desired === 0) continue;
        const status = statusOf(app.name, version.name, cell, dep, desired);
        available += status.available;
        const key = this.#o.keys.status(app.name, version.name, cell.name);
        keep.add(key);
        const stored = this.#o.state.status(app.name, version.name, cell.name)?.value;
        if (stored && sameStatus(stored, status)) continue;
        // The scheduler is the only writer of status rows: a plain put, fenced.
        await this.#o.store.commit([{ op: 'put', key, value: status }]);
      }
      await this.#updateAvailability(app, version, available);
    }
    for (const key of this.#o.state.statusKeysOf(app.name)) {
      if (!keep.has(key)) await this.#o.store.commit([{ op: 'delete', key }]);
    }
  }

  /** The Available condition of the placement, and version.available / version.degraded events. */
  async #updateAvailability(app: App, version: Version, available: number): Promise<void> {
    const isAvailable = version.replicas > 0 && available >= version.replicas;
    const status = isAvailable ? 'True' : 'False';
    const reason = isAvailable ? 'ReplicasAvailable' : version.replicas === 0 ? 'ScaledToZero' : 'ReplicasUnavailable';
    const known = this.#o.state.placement(app.name, version.name);
    if (known?.value.conditions.some((c) => c.type === 'Available' && c.status === status && c.reason === reason)) {
      return;
    }
    const now = new Date().toISOString();
    await this.#updatePlacement(app.name, version.name, (current) => {
      if (!current) return { next: UNCHANGED };
      const before = current.conditions.find((c) => c.type === 'Available');
      if (before?.status === status && before.reason === reason) return { next: UNCHANGED };
      const condition: Condition = {
        type: 'Available',
        status,
        reason,
        message: `${available} of ${version.replicas} replicas available`,
        lastTransitionTime: before?.status === status ? before.lastTransitionTime : now,
      };
      const others = current.conditions.filter((c) => c.type !== 'Available');
      const next = { ...current, conditions: [...others, condition].sort(byType), updatedAt: now };
      // A version coming up for the first time is not degraded, nor one scaled to zero on purpose;
      // one that was available and is not any more is. Only a change of status is announced.
      const announce =
        before?.status !== status && (isAvailable || (before?.status === 'True' && version.replicas > 0));
      const events = announce
        ? [
            versionEvent(app, version, isAvailable ? 'available' : 'degraded', {
              available,
              desired: version.replicas,
            }),
          ]
        : [];
      return { next, events };
    });
  }

  // ---- Removal --------------------------------------------------------------------------------

  /**
   * A version deleted through the API: its Deployments went in #applyToCell; once no cell (the
   * unreachable ones as last seen) runs it, its placement goes too.
   */
  async #removeVersionsGone(app: App, versions: Version[]): Promise<void> {
    const exists = new Set(versions.map((v) => v.name));
    for (const name of this.#o.state.placementsOf(app.name).keys()) {
      if (exists.has(name)) continue;
      const runs = [...this.#o.cells().values()].some((c) =>
        c.deployments.get(deploymentName(app.name, name), app.name),
      );
      if (runs) continue;
      await this.#updatePlacement(app.name, name, () => ({ next: DELETE }));
      this.#recent.delete(app.name, name);
    }
  }

  async #removeApp(name: string): Promise<void> {
    // Only what this installation placed is removed: an app it never placed (another Berth
    // sharing the cells, or an event about a namespace it does not own) is none of its business.
    const placements = this.#o.state.placementsOf(name);
    if (placements.size === 0) return;
    let pending = false;
    for (const cell of this.#o.cells().values()) {
      const ns = cell.namespaces.get(name);
      if (!ns) continue;
      if (!cell.reachable) {
        pending = true;
        continue;
      }
      if (ns.status?.phase === 'Terminating') continue;
      await this.#o.writer.delete(cell, withKind(ns, 'v1', 'Namespace'));
    }
    if (pending) {
      throw new UnavailableError(`app ${name} is deleted but some of its cells cannot be reached; will retry`);
    }
    for (const key of this.#o.state.statusKeysOf(name)) await this.#o.store.commit([{ op: 'delete', key }]);
    for (const version of [...placements.keys()]) {
      await this.#updatePlacement(name, version, () => ({ next: DELETE }));
    }
    this.#recent.deleteApp(name);
  }
}

// ---- Helpers ----------------------------------------------------------------------------------

/** An event about one of the app's versions, decided by the scheduler. */
function versionEvent(app: App, version: Version, action: string, data: Record<string, unknown>): EventInput {
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

function withKind<T extends { apiVersion?: string; kind?: string }>(obj: T, apiVersion: string, kind: string): T {
  return { ...obj, apiVersion, kind };
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

/** The placement's own conditions replaced, others (Available) kept; transition times kept when unchanged. */
function mergeConditions(
  current: Condition[],
  next: { type: string; status: 'True' | 'False'; reason: string; message: string }[],
  now: string,
): Condition[] {
  const types = new Set(next.map((c) => c.type));
  const kept = current.filter((c) => !types.has(c.type));
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

function statusOf(
  app: string,
  version: string,
  cell: CellRuntime,
  dep: V1Deployment | undefined,
  desired: number,
): VersionCellStatus {
  const restarts = cell
    .podsOf(app, version)
    .reduce((n, p) => n + (p.status?.containerStatuses ?? []).reduce((m, c) => m + (c.restartCount ?? 0), 0), 0);
  return {
    app,
    version,
    cell: cell.name,
    desired,
    ready: dep?.status?.readyReplicas ?? 0,
    available: dep?.status?.availableReplicas ?? 0,
    updated: dep?.status?.updatedReplicas ?? 0,
    restarts,
    conditions: (dep?.status?.conditions ?? []).map((c) => ({
      type: c.type,
      status: (['True', 'False'].includes(c.status) ? c.status : 'Unknown') as Condition['status'],
      reason: c.reason ?? '',
      message: c.message ?? '',
      lastTransitionTime: toIso(c.lastTransitionTime),
    })),
    observedAt: new Date().toISOString(),
  };
}

function toIso(t: unknown): string {
  if (t instanceof Date) return t.toISOString();
  if (typeof t === 'string' && !Number.isNaN(Date.parse(t))) return new Date(t).toISOString();
  return new Date(0).toISOString();
}

function sameStatus(a: VersionCellStatus, b: VersionCellStatus): boolean {
  const strip = (s: VersionCellStatus) => JSON.stringify({ ...s, observedAt: '' });
  return strip(a) === strip(b);
}
