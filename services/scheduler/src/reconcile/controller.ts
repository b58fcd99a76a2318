/**
 * The scheduler's control loop, run only by the leader: watches desired state in etcd and every
 * cell, decides each cell's health with a grace and hysteresis, and feeds app names to the
 * reconcile workers (on every change, on every health change, and a full resync on a timer).
 */
import { randomUUID } from 'node:crypto';
import type { Etcd3 } from '@berth/shared/etcd';
import type { EventInput } from '@berth/shared/events';
import type { BerthKeys } from '@berth/shared/keys';
import { loadCellClient } from '@berth/shared/kube';
import type { Logger } from '@berth/shared/logging';
import { LABELS, MANAGED_BY } from '@berth/shared/model';
import type { CoreV1Event, V1Pod } from '@kubernetes/client-node';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { CellWriter } from '../apply/cell-writer.ts';
import { CellRuntime } from '../cells/cell-runtime.ts';
import type { CellHealth } from '../placement/place.ts';
import { DesiredState } from '../state/desired-state.ts';
import { WorkQueue } from './queue.ts';
import { Reconciler, type ReconcilerOptions, uuidFrom } from './reconciler.ts';

export type ControllerOptions = {
  etcd: Etcd3;
  keys: BerthKeys;
  region: string;
  kubeconfigDir: string;
  registry: string;
  preStopDelaySeconds: number;
  failoverGraceMs: number;
  recoveryHoldMs: number;
  resyncIntervalMs: number;
  workers: number;
  metrics: Registry;
  logger: Logger;
  publish: (event: EventInput) => Promise<void>;
  /** Fences every etcd write with the leader election (see ReconcilerOptions.guard). */
  guard?: ReconcilerOptions['guard'];
};

type Tracker = { health: CellHealth; unreachableSince?: number; reachableSince?: number; wasOut: boolean };

export class SchedulerController {
  readonly #o: ControllerOptions;
  readonly #logger: Logger;
  readonly #state: DesiredState;
  readonly #queue: WorkQueue;
  /**
   * Placement alone (etcd only, milliseconds per app), ahead of the reconcile workers that wait on
   * the cells' API servers: a new or scaled version's placement and its conditions (Unschedulable,
   * MinCellsShortfall) are written at once even when the cells are slow to apply.
   */
  readonly #placeQueue: WorkQueue;
  readonly #cells = new Map<string, CellRuntime>();
  readonly #trackers = new Map<string, Tracker>();
  readonly #reconciler: Reconciler;
  readonly #duration: Histogram;
  readonly #healthGauge: Gauge<'cell' | 'health'>;
  #tick: NodeJS.Timeout | undefined;
  #resync: NodeJS.Timeout | undefined;
  #running = false;

  constructor(options: ControllerOptions) {
    this.#o = options;
    this.#logger = options.logger.child({ component: 'controller' });
    this.#state = new DesiredState({
      etcd: options.etcd,
      keys: options.keys,
      region: options.region,
      logger: options.logger,
      onAppChange: (app) => this.#enqueue(app),
      onCellsChange: () => this.#syncCells(),
    });
    this.#queue = new WorkQueue({ concurrency: options.workers, logger: options.logger });
    this.#placeQueue = new WorkQueue({ concurrency: 2, logger: options.logger });
    const writes = (options.metrics.getSingleMetric('berth_scheduler_cell_writes_total') ??
      new Counter({
        name: 'berth_scheduler_cell_writes_total',
        help: 'Writes to cells (server-side applies and deletes), by cell, kind and verb',
        labelNames: ['cell', 'kind', 'verb'],
        registers: [options.metrics],
      })) as Counter<'cell' | 'kind' | 'verb'>;
    this.#duration = (options.metrics.getSingleMetric('berth_scheduler_reconcile_duration_seconds') ??
      new Histogram({
        name: 'berth_scheduler_reconcile_duration_seconds',
        help: 'Time to reconcile one app',
        buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
        registers: [options.metrics],
      })) as Histogram;
    this.#healthGauge = (options.metrics.getSingleMetric('berth_scheduler_cell_health') ??
      new Gauge({
        name: 'berth_scheduler_cell_health',
        help: '1 for the health each cell is in (ok, suspect, out)',
        labelNames: ['cell', 'health'],
        registers: [options.metrics],
      })) as Gauge<'cell' | 'health'>;
    this.#reconciler = new Reconciler({
      etcd: options.etcd,
      keys: options.keys,
      state: this.#state,
      writer: new CellWriter(writes),
      cells: () => this.#cells,
      health: (cell) => this.#trackers.get(cell)?.health ?? 'out',
      manifests: { registry: options.registry, preStopDelaySeconds: options.preStopDelaySeconds },
      publish: (event) => this.#publish({ ...event, actor: { type: 'service', name: 'scheduler' } } as EventInput),
      logger: options.logger,
      ...(options.guard ? { guard: options.guard } : {}),
    });
  }

  async start(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    this.#reconciler.reset();
    await this.#state.start();
    this.#syncCells();
    // Wait (a little) for the cells' first lists, so the first decisions are made on real state.
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline && ![...this.#cells.values()].every((c) => c.synced)) {
      await new Promise((r) => setTimeout(r, 100));
    }
    this.#evaluateHealth();
    this.#placeQueue.start((app) => this.#reconciler.placeApp(app));
    this.#queue.start(async (app) => {
      const stop = this.#duration.startTimer();
      try {
        await this.#reconciler.reconcileApp(app);
      } finally {
        stop();
      }
    });
    this.#enqueueAll();
    this.#tick = setInterval(() => this.#evaluateHealth(), 500);
    this.#resync = setInterval(() => this.#enqueueAll(), this.#o.resyncIntervalMs);
    this.#logger.info({ cells: [...this.#cells.keys()] }, 'controller started');
  }

  async stop(): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    clearInterval(this.#tick);
    clearInterval(this.#resync);
    await Promise.all([this.#placeQueue.stop(), this.#queue.stop()]);
    await Promise.all([...this.#cells.values()].map((c) => c.stop()));
    this.#cells.clear();
    this.#trackers.clear();
    await this.#state.stop();
  }

  /** Resolves when no app is waiting to be reconciled (tests, benchmarks). */
  idle(): Promise<void> {
    return Promise.all([this.#placeQueue.idle(), this.#queue.idle()]).then(() => undefined);
  }

  cellHealth(cell: string): CellHealth | undefined {
    return this.#trackers.get(cell)?.health;
  }

  #enqueueAll(): void {
    for (const app of this.#state.appNames()) this.#enqueue(app);
  }

  /** A change to an app's desired state: placed at once, then reconciled. */
  #enqueue(app: string): void {
    this.#placeQueue.add(app);
    this.#queue.add(app);
  }

  /** Cell runtimes follow the cells registered for the region. */
  #syncCells(): void {
    if (!this.#running) return;
    const wanted = new Set(this.#state.cells().map((c) => c.name));
    for (const name of wanted) {
      if (this.#cells.has(name)) continue;
      try {
        const runtime = new CellRuntime({
          client: loadCellClient(this.#o.kubeconfigDir, name),
          logger: this.#o.logger,
          onChange: (app) => {
            if (app) this.#queue.add(app);
          },
          onWarningEvent: (e) => void this.#recordKubeEvent(name, e),
          onPodEvent: (event, pod) => {
            if (event === 'update') void this.#recordOomKill(name, pod);
          },
        });
        this.#cells.set(name, runtime);
        runtime.start();
      } catch (err) {
        this.#logger.error({ err, cell: name }, 'cell has no usable kubeconfig; treated as out');
      }
    }
    for (const [name, runtime] of this.#cells) {
      if (!wanted.has(name)) {
        this.#cells.delete(name);
        this.#trackers.delete(name);
        void runtime.stop();
      }
    }
    this.#evaluateHealth();
    this.#enqueueAll();
  }

  /**
   * ok: place replicas here. suspect: unreachable for less than the grace, or back for less than
   * the hold: keep what runs, add nothing. out: cordoned, no kubeconfig, or unreachable past the grace.
   */
  #evaluateHealth(): void {
    if (!this.#running) return;
    const now = Date.now();
    let changed = false;
    for (const cell of this.#state.cells()) {
      const runtime = this.#cells.get(cell.name);
      const t = this.#trackers.get(cell.name) ?? { health: 'suspect' as CellHealth, wasOut: false };
      let health: CellHealth;
      if (!runtime) {
        health = 'out';
      } else if (!runtime.reachable) {
        t.unreachableSince ??= now;
        t.reachableSince = undefined;
        if (now - t.unreachableSince > this.#o.failoverGraceMs) {
          t.wasOut = true;
          health = 'out';
        } else {
          health = 'suspect';
        }
      } else {
        t.unreachableSince = undefined;
        t.reachableSince ??= now;
        if (t.wasOut && now - t.reachableSince < this.#o.recoveryHoldMs) health = 'suspect';
        else {
          t.wasOut = false;
          health = 'ok';
        }
      }
      if (cell.state === 'cordoned') health = 'out';
      if (health !== t.health) {
        this.#logger.info({ cell: cell.name, from: t.health, to: health }, 'cell health changed');
        changed = true;
      }
      t.health = health;
      this.#trackers.set(cell.name, t);
      for (const h of ['ok', 'suspect', 'out'] as const)
        this.#healthGauge.set({ cell: cell.name, health: h }, h === health ? 1 : 0);
    }
    if (changed) this.#enqueueAll();
  }

  /**
   * Publishes an event; when NATS is down it retries in the background (same event id, so
   * JetStream stores it once) rather than failing the reconcile that made it. Never rejects.
   */
  async #publish(event: EventInput, attempt = 0): Promise<void> {
    const withId = { ...event, id: event.id ?? randomUUID(), time: event.time ?? new Date().toISOString() };
    try {
      await this.#o.publish(withId);
    } catch (err) {
      if (!this.#running || attempt >= 8) {
        this.#logger.warn({ err, kind: event.kind, action: event.action }, 'could not publish an event; dropped');
        return;
      }
      const delay = 500 * 2 ** attempt * (0.5 + Math.random() / 2);
      this.#logger.warn({ err, retryInMs: Math.round(delay) }, 'could not publish an event; will retry');
      setTimeout(() => void this.#publish(withId, attempt + 1), delay).unref();
    }
  }

  /** A Warning event about an app's pod goes to the app's activity feed. */
  async #recordKubeEvent(cell: string, e: CoreV1Event): Promise<void> {
    const app = e.metadata?.namespace;
    if (!app || !this.#state.app(app)) return;
    const reason = e.reason ?? 'Warning';
    await this.#publish({
      // Kubernetes counts repeats of one event; the feed gets it at 1, 2, 4, 8… repeats, not each time.
      id: uuidFrom(`k8s/${cell}/${e.metadata?.uid}/${Math.floor(Math.log2(e.count ?? 1))}`),
      actor: { type: 'system', name: `kubernetes/${cell}` },
      kind: 'pod',
      resourceId: app,
      resourceName: e.involvedObject?.name ?? 'unknown',
      action: kebab(reason),
      data: {
        cell,
        reason,
        message: e.message ?? '',
        object: `${e.involvedObject?.kind ?? ''}/${e.involvedObject?.name ?? ''}`,
        count: e.count ?? 1,
      },
    });
  }

  /** An OOM kill shows in a pod's container status; it goes to the feed too. */
  async #recordOomKill(cell: string, pod: V1Pod): Promise<void> {
    if (pod.metadata?.labels?.[LABELS.managedBy] !== MANAGED_BY) return;
    const app = pod.metadata?.labels?.[LABELS.app];
    if (!app) return;
    for (const c of pod.status?.containerStatuses ?? []) {
      if (c.lastState?.terminated?.reason !== 'OOMKilled') continue;
      await this.#publish({
        id: uuidFrom(`oom/${cell}/${pod.metadata?.uid}/${c.name}/${c.restartCount}`),
        actor: { type: 'system', name: `kubernetes/${cell}` },
        kind: 'pod',
        resourceId: app,
        resourceName: pod.metadata?.name ?? 'unknown',
        action: 'oom-killed',
        data: { cell, container: c.name, restarts: c.restartCount, version: pod.metadata?.labels?.[LABELS.version] },
      });
    }
  }
}

function kebab(reason: string): string {
  const k = reason
    .replace(/([a-z0-9])([A-Z])/g, '$1-$2')
    .replace(/[^A-Za-z0-9]+/g, '-')
    .toLowerCase()
    .replace(/^-+|-+$/g, '');
  return /^[a-z]/.test(k) ? k.slice(0, 63) : `event-${k}`.slice(0, 63);
}
