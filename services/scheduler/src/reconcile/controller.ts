/**
 * The scheduler's control loop, run only by the leader: watches desired state in etcd and every
 * cell, decides each cell's health with a grace and hysteresis, and feeds app names to the placer
 * (on every change of desired state, on every health change, and a full resync on a timer), which
 * hands what it placed to the reconcile workers; a change in a cell goes to the workers directly.
 */
import type { Etcd3 } from '@berth/shared/etcd';
import type { BerthKeys } from '@berth/shared/keys';
import { loadCellClient } from '@berth/shared/kube';
import type { Logger } from '@berth/shared/logging';
import type { SecretsKeyring } from '@berth/shared/secrets';
import type { Store } from '@berth/shared/store';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { KubeEventFeed } from '../activity/kube-events.ts';
import type { EventRecorder } from '../activity/recorder.ts';
import { AppSecretsOpener } from '../apply/app-secrets.ts';
import { CellWriter } from '../apply/cell-writer.ts';
import { CellPullCredentials } from '../apply/pull-secret.ts';
import { CellRuntime } from '../cells/cell-runtime.ts';
import { CellHealthTracker } from '../cells/health.ts';
import type { CellHealth } from '../placement/place.ts';
import { DesiredState } from '../state/desired-state.ts';
import { StatusReporter } from '../status/reporter.ts';
import { Placer } from './placer.ts';
import { WorkQueue } from './queue.ts';
import { Reconciler } from './reconciler.ts';

export type ControllerOptions = {
  /** For the watches of desired state; every write goes through `store`. */
  etcd: Etcd3;
  /** Fenced by the leader election (see ReconcilerOptions.store). */
  store: Store;
  keys: BerthKeys;
  region: string;
  kubeconfigDir: string;
  /** Whose kubeconfig to use in each cell (`<cell>.<identity>.kubeconfig`, else the cell's own). */
  cellIdentity?: string;
  registry: string;
  /** The cells key: set, every app namespace gets its cell's pull Secret (apply/pull-secret.ts). */
  pullKey?: Buffer;
  /** Opens the apps' secrets into each app namespace (apply/app-secrets.ts); unset, none are. */
  secretsKeyring?: SecretsKeyring;
  /** Where the load balancers connect from besides the cells' nodes (the allow-from-LB policy). */
  lbSourceCidrs?: readonly string[];
  preStopDelaySeconds: number;
  failoverGraceMs: number;
  recoveryHoldMs: number;
  resyncIntervalMs: number;
  workers: number;
  /** Operations etcd accepts in one transaction (`--max-txn-ops`). */
  maxTxnOps: number;
  metrics: Registry;
  logger: Logger;
  events: EventRecorder;
};

/** How long placement waits for a new cell's first list before placing without it. */
const FIRST_LIST_WAIT_MS = 10_000;
/** How long a reconcile waits for the placer to finish the burst it is placing. */
const PLACEMENT_FIRST_MS = 2_000;

export class SchedulerController {
  readonly #o: ControllerOptions;
  readonly #logger: Logger;
  readonly #state: DesiredState;
  readonly #queue: WorkQueue;
  /**
   * Placement, once per change, for every app that changed together (etcd only, ahead of the
   * reconcile workers that wait on the cells' API servers).
   */
  readonly #placer: Placer;
  readonly #status: StatusReporter;
  readonly #cells = new Map<string, CellRuntime>();
  /** When each cell runtime was made (for how long placement waits for its first list). */
  readonly #cellsSince = new Map<string, number>();
  readonly #health: CellHealthTracker;
  readonly #kubeEvents: KubeEventFeed;
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
      isOwnWrite: (key, revision) => this.#placer.isOwnWrite(key, revision),
    });
    this.#health = new CellHealthTracker({ graceMs: options.failoverGraceMs, holdMs: options.recoveryHoldMs });
    this.#kubeEvents = new KubeEventFeed({
      store: options.store,
      events: options.events,
      app: (name) => this.#state.app(name),
      logger: options.logger,
    });
    this.#queue = new WorkQueue({ concurrency: options.workers, logger: options.logger });
    const placementTxns = (options.metrics.getSingleMetric('berth_scheduler_placement_transactions_total') ??
      new Counter({
        name: 'berth_scheduler_placement_transactions_total',
        help: 'etcd transactions that wrote placements (many apps each when they changed together)',
        registers: [options.metrics],
      })) as Counter;
    this.#placer = new Placer({
      store: options.store,
      keys: options.keys,
      state: this.#state,
      cells: () => this.#cells,
      health: (cell) => this.#health.health(cell) ?? 'out',
      events: options.events,
      logger: options.logger,
      maxTxnOps: options.maxTxnOps,
      onPlaced: (apps) => {
        for (const app of apps) this.#queue.add(app);
      },
      transactions: placementTxns,
      cellsReady: () => this.#cellsListed(),
    });
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
    this.#status = new StatusReporter({
      store: options.store,
      events: options.events,
      logger: options.logger,
      maxTxnOps: options.maxTxnOps,
    });
    this.#reconciler = new Reconciler({
      store: options.store,
      keys: options.keys,
      state: this.#state,
      placer: this.#placer,
      status: this.#status,
      writer: new CellWriter(writes, { metrics: options.metrics }),
      cells: () => this.#cells,
      health: (cell) => this.#health.health(cell) ?? 'out',
      manifests: {
        registry: options.registry,
        preStopDelaySeconds: options.preStopDelaySeconds,
        ...(options.pullKey
          ? {
              pull: new CellPullCredentials({
                cellsKey: options.pullKey,
                region: options.region,
                registry: options.registry,
              }),
            }
          : {}),
      },
      secrets: new AppSecretsOpener(options.secretsKeyring),
      events: options.events,
      logger: options.logger,
      maxTxnOps: options.maxTxnOps,
    });
  }

  async start(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    this.#placer.reset();
    await this.#state.start();
    this.#syncCells();
    // Wait (a little) for the cells' first lists, so the first decisions are made on real state.
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline && ![...this.#cells.values()].every((c) => c.synced)) {
      await new Promise((r) => setTimeout(r, 100));
    }
    this.#evaluateHealth();
    this.#status.start();
    this.#placer.start();
    this.#queue.start(async (app) => {
      await this.#placementFirst();
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
    await Promise.all([this.#placer.stop(), this.#queue.stop()]);
    await this.#status.stop();
    await Promise.all([...this.#cells.values()].map((c) => c.stop()));
    this.#cells.clear();
    this.#cellsSince.clear();
    this.#health.clear();
    await this.#state.stop();
  }

  /** Resolves when no app is waiting to be reconciled (tests, benchmarks). */
  idle(): Promise<void> {
    // The placer hands its apps to the queue: wait for it first, then for the queue.
    return this.#placer
      .idle()
      .then(() => this.#queue.idle())
      .then(() => this.#status.idle());
  }

  /**
   * Placement goes first: while the placer works through a burst of changes, a reconcile waits
   * for it (at most PLACEMENT_FIRST_MS, so an etcd outage that stalls the placer never stalls
   * applies). Placements are etcd-only and take milliseconds per app when the process has the
   * CPU; on a loaded machine the applies (and the cells' own work they cause) took that CPU and a
   * burst of 1000 versions was placed 14.6 s after its last write.
   */
  async #placementFirst(): Promise<void> {
    // A placer pausing after a failure is not waited for (nor does each reconcile leave a waiter).
    if (!this.#placer.placing) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.#placer.idle(),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, PLACEMENT_FIRST_MS);
      }),
    ]);
    clearTimeout(timer);
  }

  /** Every cell's informers have listed once, or it had the time to (a dead cell must not stop placement). */
  #cellsListed(): boolean {
    const now = Date.now();
    for (const [name, runtime] of this.#cells) {
      if (runtime.synced) continue;
      const since = this.#cellsSince.get(name) ?? now;
      if (now - since < FIRST_LIST_WAIT_MS) return false;
    }
    // A cell that has just listed is ok on its first reachable look: look now, not at the next tick.
    this.#evaluateHealth();
    return true;
  }

  cellHealth(cell: string): CellHealth | undefined {
    return this.#health.health(cell);
  }

  #enqueueAll(): void {
    for (const app of this.#state.appNames()) this.#enqueue(app);
  }

  /** A change to an app's desired state: placed (with every app that changed with it), then reconciled. */
  #enqueue(app: string): void {
    this.#placer.add(app);
  }

  /** Cell runtimes follow the cells registered for the region. */
  #syncCells(): void {
    if (!this.#running) return;
    const wanted = new Set(this.#state.cells().map((c) => c.name));
    for (const name of wanted) {
      if (this.#cells.has(name)) continue;
      try {
        const runtime = new CellRuntime({
          client: loadCellClient(this.#o.kubeconfigDir, name, this.#o.cellIdentity),
          logger: this.#o.logger,
          onChange: (app) => {
            if (app) this.#queue.add(app);
          },
          onWarningEvent: (e) => void this.#kubeEvents.warning(name, e),
          onPodEvent: (event, pod) => {
            if (event === 'update') void this.#kubeEvents.podUpdated(name, pod);
          },
          secrets: this.#o.pullKey !== undefined || this.#o.secretsKeyring !== undefined,
          lbSourceCidrs: this.#o.lbSourceCidrs,
        });
        this.#cells.set(name, runtime);
        this.#cellsSince.set(name, Date.now());
        runtime.start();
      } catch (err) {
        this.#logger.error({ err, cell: name }, 'cell has no usable kubeconfig; treated as out');
      }
    }
    for (const [name, runtime] of this.#cells) {
      if (!wanted.has(name)) {
        this.#cells.delete(name);
        this.#cellsSince.delete(name);
        this.#health.forget(name);
        void runtime.stop();
      }
    }
    this.#evaluateHealth();
    this.#enqueueAll();
  }

  /** Re-evaluates every cell's health (cells/health.ts); any change re-reconciles every app. */
  #evaluateHealth(): void {
    if (!this.#running) return;
    let changed = false;
    for (const cell of this.#state.cells()) {
      const runtime = this.#cells.get(cell.name);
      const change = this.#health.observe(cell.name, {
        known: runtime !== undefined,
        reachable: runtime?.reachable ?? false,
        cordoned: cell.state === 'cordoned',
      });
      if (change) {
        this.#logger.info(change, 'cell health changed');
        changed = true;
      }
      const health = this.#health.health(cell.name);
      for (const h of ['ok', 'suspect', 'out'] as const)
        this.#healthGauge.set({ cell: cell.name, health: h }, h === health ? 1 : 0);
    }
    if (changed) this.#enqueueAll();
  }
}
