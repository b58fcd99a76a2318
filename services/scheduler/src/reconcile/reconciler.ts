/**
 * Reconciles one app: places each version over the cells, writes the placements, applies the
 * app's objects to each cell (only what differs), removes what no longer belongs, and reports
 * status per version and cell. Level-triggered: it reads the whole current state each time and
 * compares it with what it wants, so a missed event or a restart changes nothing.
 *
 * Safe switches: a replica count only goes down once everything the app is bringing up is
 * available (rollback, gray steps, moves between cells): the app never drops below its ready count.
 */
import { createHash } from 'node:crypto';
import { casUpdate, DELETE, type Etcd3, UNCHANGED } from '@berth/shared/etcd';
import type { EventInput } from '@berth/shared/events';
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
  type Version,
  type VersionCellStatus,
} from '@berth/shared/model';
import type { V1Deployment } from '@kubernetes/client-node';
import type { CellWriter } from '../apply/cell-writer.ts';
import { deploymentFor, hashOf, type ManifestOptions, namespaceFor, serviceFor } from '../apply/manifests.ts';
import type { CellRuntime } from '../cells/cell-runtime.ts';
import { type CellCandidate, type CellHealth, type PlacementResult, placeReplicas } from '../placement/place.ts';
import type { DesiredState } from '../state/desired-state.ts';

export type ReconcilerOptions = {
  etcd: Etcd3;
  keys: BerthKeys;
  state: DesiredState;
  writer: CellWriter;
  cells: () => Map<string, CellRuntime>;
  health: (cell: string) => CellHealth;
  manifests: ManifestOptions;
  publish: (event: Omit<EventInput, 'actor'>) => Promise<void>;
  logger: Logger;
};

type Target = { version: Version; placement: PlacementResult };

export class Reconciler {
  readonly #o: ReconcilerOptions;
  readonly #logger: Logger;
  /** Placements written in this process, ahead of the watch that will show them. */
  readonly #recent = new Map<string, Record<string, number>>();

  constructor(options: ReconcilerOptions) {
    this.#o = options;
    this.#logger = options.logger.child({ component: 'reconciler' });
  }

  async reconcileApp(name: string): Promise<void> {
    const app = this.#o.state.app(name);
    if (!app) {
      await this.#removeApp(name);
      return;
    }
    const versions = this.#o.state.versions(name);
    const targets: Target[] = [];
    for (const version of versions) {
      const placement = this.#place(app, version);
      targets.push({ version, placement });
      await this.#writePlacement(app, version, placement);
    }
    const settled = this.#settled(app, targets);
    for (const cell of this.#o.cells().values()) {
      if (this.#o.health(cell.name) === 'out' && !cell.reachable) continue;
      if (!cell.reachable) continue; // cannot write; replicas there stay as they are
      await this.#applyToCell(app, targets, cell, settled);
    }
    await this.#writeStatus(app, targets);
  }

  // ---- Placement ------------------------------------------------------------------------------

  #place(app: App, version: Version): PlacementResult {
    const request = { cpuMillis: parseCpuMillis(version.cpu), memoryBytes: parseMemoryBytes(version.memory) };
    const previous =
      this.#recent.get(`${app.name}/${version.name}`) ??
      this.#o.state.placement(app.name, version.name)?.value.cells ??
      {};
    const usage = this.#berthUsage(`${app.name}/${version.name}`);
    const candidates: CellCandidate[] = [];
    for (const cell of this.#o.state.cells()) {
      const runtime = this.#o.cells().get(cell.name);
      const health = this.#o.health(cell.name);
      if (!runtime) {
        candidates.push({ name: cell.name, health: 'out', fits: 0, freeCpuMillis: 0, freeMemoryBytes: 0 });
        continue;
      }
      const cap = runtime.capacity();
      const used = usage.get(cell.name) ?? { cpu: 0, memory: 0 };
      const freeCpuMillis = Math.max(0, cap.allocatableCpuMillis - cap.otherCpuMillis - used.cpu);
      const freeMemoryBytes = Math.max(0, cap.allocatableMemoryBytes - cap.otherMemoryBytes - used.memory);
      const fits = Math.floor(Math.min(freeCpuMillis / request.cpuMillis, freeMemoryBytes / request.memoryBytes));
      candidates.push({ name: cell.name, health, fits: Math.max(0, fits), freeCpuMillis, freeMemoryBytes });
    }
    return placeReplicas({ replicas: version.replicas, minCells: app.minCells, previous, cells: candidates, request });
  }

  /** cpu and memory every other Berth version is placed to use, per cell. */
  #berthUsage(exclude: string): Map<string, { cpu: number; memory: number }> {
    const usage = new Map<string, { cpu: number; memory: number }>();
    const seen = new Set<string>();
    const add = (key: string, cells: Record<string, number>, version: Version | undefined) => {
      if (key === exclude || seen.has(key) || !version) return;
      seen.add(key);
      const cpu = parseCpuMillis(version.cpu);
      const memory = parseMemoryBytes(version.memory);
      for (const [cell, n] of Object.entries(cells)) {
        const u = usage.get(cell) ?? { cpu: 0, memory: 0 };
        u.cpu += n * cpu;
        u.memory += n * memory;
        usage.set(cell, u);
      }
    };
    const versionOf = (app: string, v: string) => this.#o.state.versions(app).find((x) => x.name === v);
    for (const [key, cells] of this.#recent) {
      const [app, v] = key.split('/') as [string, string];
      add(key, cells, versionOf(app, v));
    }
    for (const p of this.#o.state.placements()) add(`${p.app}/${p.version}`, p.cells, versionOf(p.app, p.version));
    return usage;
  }

  async #writePlacement(app: App, version: Version, result: PlacementResult): Promise<void> {
    const key = this.#o.keys.placement(app.name, version.name);
    const now = new Date().toISOString();
    let started: Condition[] = [];
    await casUpdate<Placement>(this.#o.etcd, key, (current) => {
      const cur = current?.value;
      const cellsChanged = !cur || !sameCells(cur.cells, result.cells);
      const conditions = mergeConditions(cur?.conditions ?? [], result.conditions, now);
      const conditionsChanged = !cur || !sameConditions(cur.conditions, conditions);
      if (!cellsChanged && !conditionsChanged && cur.desired === version.replicas) return UNCHANGED;
      // Problems that start now (not already recorded) are announced as events.
      started = conditions.filter(
        (c) =>
          c.status === 'True' &&
          c.type !== 'Available' &&
          !cur?.conditions.some((p) => p.type === c.type && p.status === 'True' && p.message === c.message),
      );
      return {
        app: app.name,
        version: version.name,
        cells: result.cells,
        generation: (cur?.generation ?? 0) + (cellsChanged || !cur ? 1 : 0),
        desired: version.replicas,
        conditions,
        updatedAt: now,
      };
    });
    this.#recent.set(`${app.name}/${version.name}`, result.cells);
    for (const c of started) {
      await this.#o.publish({
        kind: 'version',
        resourceId: app.name,
        resourceName: version.name,
        action: c.type === 'Unschedulable' ? 'unschedulable' : 'min-cells-shortfall',
        data: { reason: c.reason, message: c.message },
      });
    }
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
    if (hashOf(cell.namespaces.get(app.name)) !== hashOf(ns)) await this.#o.writer.apply(cell, ns);
    const svc = serviceFor(app);
    if (hashOf(cell.services.get(app.name, app.name)) !== hashOf(svc)) await this.#o.writer.apply(cell, svc);

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
      if (hashOf(current) !== hashOf(desired) || running !== replicas) await this.#o.writer.apply(cell, desired);
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
        await this.#o.etcd.put(key).value(JSON.stringify(status));
      }
      await this.#updateAvailability(app, version, available);
    }
    for (const key of this.#o.state.statusKeysOf(app.name)) {
      if (!keep.has(key)) await this.#o.etcd.delete().key(key);
    }
  }

  /** The Available condition of the placement, and version.available / version.degraded events. */
  async #updateAvailability(app: App, version: Version, available: number): Promise<void> {
    const isAvailable = version.replicas > 0 && available >= version.replicas;
    const stored = this.#o.state.placement(app.name, version.name)?.value;
    const before = stored?.conditions.find((c) => c.type === 'Available');
    const status = isAvailable ? 'True' : 'False';
    if (before?.status === status) return;
    const now = new Date().toISOString();
    const condition: Condition = {
      type: 'Available',
      status,
      reason: isAvailable ? 'ReplicasAvailable' : 'ReplicasUnavailable',
      message: `${available} of ${version.replicas} replicas available`,
      lastTransitionTime: now,
    };
    const result = await casUpdate<Placement>(
      this.#o.etcd,
      this.#o.keys.placement(app.name, version.name),
      (current) => {
        if (!current) return UNCHANGED;
        const others = current.value.conditions.filter((c) => c.type !== 'Available');
        if (current.value.conditions.find((c) => c.type === 'Available')?.status === status) return UNCHANGED;
        return { ...current.value, conditions: [...others, condition], updatedAt: now };
      },
    );
    if (result.outcome !== 'written') return;
    // A version coming up for the first time is not degraded; one that was available and is not is.
    if (isAvailable || before?.status === 'True') {
      await this.#o.publish({
        kind: 'version',
        resourceId: app.name,
        resourceName: version.name,
        action: isAvailable ? 'available' : 'degraded',
        data: { available, desired: version.replicas },
      });
    }
  }

  // ---- Removal --------------------------------------------------------------------------------

  async #removeApp(name: string): Promise<void> {
    // Only what this installation placed is removed: an app it never placed (another Berth
    // sharing the cells, or an event about a namespace it does not own) is none of its business.
    if (this.#o.state.placementKeysOf(name).length === 0) return;
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
    if (pending) throw new Error(`app ${name} is deleted but some of its cells cannot be reached; will retry`);
    for (const key of [...this.#o.state.placementKeysOf(name), ...this.#o.state.statusKeysOf(name)]) {
      await casUpdate(this.#o.etcd, key, () => DELETE);
      this.#recent.delete(key.slice(this.#o.keys.placements().length));
    }
    for (const key of [...this.#recent.keys()]) if (key.startsWith(`${name}/`)) this.#recent.delete(key);
  }
}

// ---- Helpers ----------------------------------------------------------------------------------

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
  ].sort((a, b) => (a.type < b.type ? -1 : 1));
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

/** A UUID made from a string: the same input, the same id (JetStream de-duplicates by it). */
export function uuidFrom(text: string): string {
  const h = createHash('sha256').update(text).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-8${h.slice(17, 20)}-${h.slice(20, 32)}`;
}
