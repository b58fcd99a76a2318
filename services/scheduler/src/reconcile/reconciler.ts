/**
 * Reconciles one app: reads the placement the placer made (./placer.ts; it never places), applies
 * the app's objects to each cell (only what differs), removes what no longer belongs, and reports
 * status per version and cell and each version's availability, in batched, fenced writes.
 * Level-triggered: it reads the whole current state each time and compares it with what it wants,
 * so a missed event or a restart changes nothing.
 *
 * Safe switches: a replica count only goes down once everything the app is bringing up is
 * available (rollback, gray steps, moves between cells): the app never drops below its ready count.
 */
import { UnavailableError } from '@berth/shared/errors';
import type { EventInput } from '@berth/shared/events';
import type { BerthKeys } from '@berth/shared/keys';
import type { Logger } from '@berth/shared/logging';
import {
  type App,
  type Availability,
  type Condition,
  deploymentName,
  type Version,
  type VersionCellStatus,
} from '@berth/shared/model';
import type { Op, Store } from '@berth/shared/store';
import type { V1Deployment } from '@kubernetes/client-node';
import type { EventRecorder } from '../activity/recorder.ts';
import type { AppSecretSet, AppSecretsOpener } from '../apply/app-secrets.ts';
import type { CellWriter } from '../apply/cell-writer.ts';
import type { ManifestOptions } from '../apply/manifests.ts';
import { type CellRuntime, restartsOf } from '../cells/cell-runtime.ts';
import type { CellHealth } from '../placement/place.ts';
import { type CellPlan, planApp, type Target } from '../plan/app-plan.ts';
import type { DesiredState } from '../state/desired-state.ts';
import type { StatusReporter } from '../status/reporter.ts';
import { type Placer, versionEvent } from './placer.ts';

export type ReconcilerOptions = {
  /**
   * The store, fenced by the leader election (`store.fenced(() => election.fence())`): every etcd
   * write of the scheduler compares the leader key, so a deposed leader that has not noticed yet
   * cannot overwrite its successor (the commit throws NotLeaderError).
   */
  store: Store;
  keys: BerthKeys;
  state: DesiredState;
  placer: Placer;
  /** Status rows and availability go out in batches across apps. */
  status: StatusReporter;
  writer: CellWriter;
  cells: () => Map<string, CellRuntime>;
  health: (cell: string) => CellHealth;
  manifests: ManifestOptions;
  /** Opens the apps' secrets (a keyring from BERTH_SECRETS_KEYS, or none). */
  secrets?: AppSecretsOpener;
  /** Events ride the transaction of the change they record (outbox), and are published after it. */
  events: EventRecorder;
  logger: Logger;
  /** Operations etcd accepts in one transaction. */
  maxTxnOps?: number;
};

export class Reconciler {
  readonly #o: ReconcilerOptions;
  readonly #logger: Logger;
  /** Sets whose failures were logged already (one line per change of an app's secrets). */
  readonly #reported = new WeakSet<AppSecretSet>();

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
    // A version the placer has not placed yet keeps what runs of it, untouched, until it has.
    const unplaced = new Set<string>();
    for (const version of versions) {
      const cells = this.#o.placer.cellsOf(name, version.name);
      if (cells) targets.push({ version, cells });
      else unplaced.add(version.name);
    }
    const cells = [...this.#o.cells().values()];
    // An unreachable cell cannot be written; a suspect one (back from an outage, within the hold)
    // keeps what runs there untouched until it is trusted again: no churn on a flap.
    const writable = new Set(
      cells.filter((c) => c.reachable && this.#o.health(c.name) !== 'suspect').map((c) => c.name),
    );
    const secrets = this.#o.secrets?.open(name, this.#o.state.secretsOf(name));
    if (secrets && secrets.failed.length > 0 && !this.#reported.has(secrets)) {
      this.#reported.add(secrets);
      // Names and the keyring's reason (a key id) only: never a value.
      this.#logger.error(
        { app: name, secrets: secrets.failed, errors: Object.values(secrets.errors) },
        'app secrets do not open; its cells keep the secrets they have',
      );
    }
    const plan = planApp({ app, targets, unplaced, cells, writable, manifests: this.#o.manifests, secrets });
    const results = await Promise.allSettled(
      plan.cells.map((cellPlan) => this.#execute(this.#o.cells().get(cellPlan.cell) as CellRuntime, cellPlan)),
    );
    await this.#removeVersionsGone(app, versions);
    this.#writeStatus(app, targets, secrets);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  // ---- Apply ----------------------------------------------------------------------------------

  /** Executes one cell's part of the plan: the Namespace and Service, then the Deployments, then deletes. */
  async #execute(cell: CellRuntime, plan: CellPlan): Promise<void> {
    for (const item of plan.first) await this.#o.writer.ensure(cell, item.desired, item.current);
    await Promise.all(plan.deployments.map((item) => this.#o.writer.ensure(cell, item.desired, item.current)));
    for (const dep of plan.delete) await this.#o.writer.delete(cell, withKind(dep, 'apps/v1', 'Deployment'));
  }

  // ---- Status ----------------------------------------------------------------------------------

  /**
   * Status rows per version and cell, and each version's availability: the rows that changed go to
   * the status reporter, which writes them with other apps' in batched, fenced transactions.
   */
  #writeStatus(app: App, targets: Target[], secrets: AppSecretSet | undefined): void {
    const reporter = this.#o.status;
    const secretsCondition = secretsConditionOf(secrets);
    const keep = new Set<string>();
    for (const { version, cells } of targets) {
      let available = 0;
      for (const cell of this.#o.cells().values()) {
        const dep = cell.deployments.get(deploymentName(app.name, version.name), app.name);
        const desired = cells[cell.name] ?? 0;
        if (!dep && desired === 0) continue;
        const status = statusOf(app.name, version.name, cell, dep, desired);
        if (secretsCondition) status.conditions.push(secretsCondition);
        available += status.available;
        const key = this.#o.keys.status(app.name, version.name, cell.name);
        keep.add(key);
        const waiting = reporter.pending(key) as VersionCellStatus | null | undefined;
        const latest = waiting === undefined ? this.#o.state.status(app.name, version.name, cell.name)?.value : waiting;
        if (latest && sameStatus(latest, status)) continue;
        reporter.put(key, status);
      }
      const availability = this.#availability(app, version, available);
      if (availability) reporter.put(availability.key, availability.value, availability.events);
    }
    for (const key of this.#o.state.statusKeysOf(app.name)) {
      if (!keep.has(key) && reporter.pending(key) !== null) reporter.delete(key);
    }
  }

  /** The version's availability when it changed, and the available / degraded event it announces. */
  #availability(
    app: App,
    version: Version,
    available: number,
  ): { key: string; value: Availability; events: EventInput[] } | undefined {
    const isAvailable = version.replicas > 0 && available >= version.replicas;
    const status = isAvailable ? 'True' : 'False';
    const reason = isAvailable ? 'ReplicasAvailable' : version.replicas === 0 ? 'ScaledToZero' : 'ReplicasUnavailable';
    const key = this.#o.keys.availability(app.name, version.name);
    const waiting = this.#o.status.pending(key) as Availability | null | undefined;
    const before =
      waiting ?? (waiting === null ? undefined : this.#o.state.availability(app.name, version.name)?.value);
    if (
      before?.condition.status === status &&
      before.condition.reason === reason &&
      before.available === available &&
      before.desired === version.replicas
    ) {
      return undefined;
    }
    const now = new Date().toISOString();
    const condition: Condition = {
      type: 'Available',
      status,
      reason,
      message: `${available} of ${version.replicas} replicas available`,
      lastTransitionTime: before?.condition.status === status ? before.condition.lastTransitionTime : now,
    };
    const value: Availability = {
      app: app.name,
      version: version.name,
      condition,
      available,
      desired: version.replicas,
    };
    // A version coming up for the first time is not degraded, nor one scaled to zero on purpose;
    // one that was available and is not any more is. Only a change of status is announced.
    const was = before?.condition.status;
    const announce = was !== status && (isAvailable || (was === 'True' && version.replicas > 0));
    const events = announce
      ? [versionEvent(app, version, isAvailable ? 'available' : 'degraded', { available, desired: version.replicas })]
      : [];
    return { key, value, events };
  }

  /** Fenced writes in transactions of at most maxTxnOps operations (one is the fence). */
  async #commitInBatches(ops: Op[]): Promise<void> {
    const limit = Math.max(2, (this.#o.maxTxnOps ?? 128) - 1);
    for (let i = 0; i < ops.length; i += limit) await this.#o.store.commit(ops.slice(i, i + limit));
  }

  // ---- Removal --------------------------------------------------------------------------------

  /**
   * A version deleted through the API: its Deployments went in #applyToCell; once no cell (the
   * unreachable ones as last seen) runs it, its placement and availability go too.
   */
  async #removeVersionsGone(app: App, versions: Version[]): Promise<void> {
    const exists = new Set(versions.map((v) => v.name));
    const ops: Op[] = [];
    for (const name of this.#o.state.placementsOf(app.name).keys()) {
      if (exists.has(name)) continue;
      const runs = [...this.#o.cells().values()].some((c) =>
        c.deployments.get(deploymentName(app.name, name), app.name),
      );
      if (runs) continue;
      this.#o.status.forget(this.#o.keys.versionStatus(app.name, name));
      this.#o.status.forget(this.#o.keys.availability(app.name, name));
      ops.push({ op: 'delete', key: this.#o.keys.placement(app.name, name) });
      ops.push({ op: 'delete', key: this.#o.keys.availability(app.name, name) });
      this.#o.placer.forget(app.name, name);
    }
    await this.#commitInBatches(ops);
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
    this.#o.status.forget(this.#o.keys.appStatus(name));
    this.#o.status.forget(this.#o.keys.appAvailability(name));
    await this.#commitInBatches([
      ...this.#o.state.statusKeysOf(name).map((key): Op => ({ op: 'delete', key })),
      ...this.#o.state.availabilityKeysOf(name).map((key): Op => ({ op: 'delete', key })),
      ...[...placements.keys()].map((version): Op => ({ op: 'delete', key: this.#o.keys.placement(name, version) })),
    ]);
    this.#o.placer.forget(name);
  }
}

// ---- Helpers ----------------------------------------------------------------------------------

function withKind<T extends { apiVersion?: string; kind?: string }>(obj: T, apiVersion: string, kind: string): T {
  return { ...obj, apiVersion, kind };
}

function statusOf(
  app: string,
  version: string,
  cell: CellRuntime,
  dep: V1Deployment | undefined,
  desired: number,
): VersionCellStatus {
  const restarts = cell.podsOf(app, version).reduce((n, p) => n + restartsOf(p), 0);
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

/**
 * A condition on every status row of an app whose secrets do not all open: the names (never a
 * value) and what to do. Its time is when the records last changed, so the row is stable.
 */
function secretsConditionOf(secrets: AppSecretSet | undefined): Condition | undefined {
  if (!secrets || secrets.failed.length === 0) return undefined;
  const reasons = [...new Set(Object.values(secrets.errors))];
  return {
    type: 'SecretsApplied',
    status: 'False',
    reason: 'SecretsDoNotOpen',
    message: `secrets ${secrets.failed.join(', ')} do not open with the scheduler's keys (${reasons.join('; ')}); the cells keep the secrets they have`,
    lastTransitionTime: secrets.since,
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
