/**
 * Discovery's leader loop: follows the region's cells (one CellSource each) and the domain claims
 * (which groups each app has a domain in), and writes every claimed app's upstreams to each of its
 * groups. Handlers only mark apps dirty; one flush, 100 ms after the first mark, builds each dirty
 * app's value from every cell, compares it with what was last written, and writes only what
 * changed, in one fenced transaction per app. A failed write is retried with backoff.
 *
 * Never dropping what was known: an unreachable cell's informers keep their caches, so its
 * endpoints stay, marked stale, until a relist replaces them. A new leader reads the upstreams
 * already in etcd and carries each cell's part forward until that cell has listed.
 */

import { NotLeaderError } from '@berth/shared/errors';
import { type Etcd3, PrefixWatcher } from '@berth/shared/etcd';
import type { BerthKeys } from '@berth/shared/keys';
import { loadCellClient } from '@berth/shared/kube';
import type { Logger } from '@berth/shared/logging';
import { type Cell, cellSchema, type DomainClaim, domainClaimSchema, upstreamsSchema } from '@berth/shared/model';
import type { Op, Store } from '@berth/shared/store';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { z } from 'zod';
import { CellSource } from '../cells/cell-source.ts';
import { buildUpstreams, type CellPart, partsOf, upstreamsJson } from './build.ts';

export type DiscoveryControllerOptions = {
  etcd: Etcd3;
  /** Fenced: every write compares the leader key. */
  store: Store;
  keys: BerthKeys;
  region: string;
  kubeconfigDir: string;
  /** Whose kubeconfig to use in each cell (`<cell>.<identity>.kubeconfig`, else the cell's own). */
  cellIdentity?: string;
  logger: Logger;
  metrics: Registry;
  /** Bursts of changes within this window become one write per app. */
  coalesceMs?: number;
  /** How long a new leader waits for the cells' first lists before its first writes. */
  firstListWaitMs?: number;
  /** Restart a cell watch silent for this long. */
  stallMs?: number;
};

const RETRY_MAX_MS = 5000;

export class DiscoveryController {
  readonly #o: DiscoveryControllerOptions;
  readonly #logger: Logger;
  readonly #claims: PrefixWatcher<DomainClaim>;
  readonly #cells: PrefixWatcher<Cell>;
  readonly #sources = new Map<string, CellSource>();
  /** app → group → the JSON last written there (or found at start). */
  readonly #written = new Map<string, Map<string, string>>();
  /** app → its cells' parts as found in etcd at start, for cells not listed yet. */
  readonly #carried = new Map<string, Map<string, CellPart>>();
  readonly #dirty = new Set<string>();
  readonly #failures = new Map<string, number>();
  readonly #writes: Counter<'op'>;
  readonly #endpointsGauge: Gauge<'cell'>;
  readonly #staleGauge: Gauge;
  #timer: NodeJS.Timeout | undefined;
  #flushing: Promise<void> | undefined;
  #running = false;
  #writesAllowed = false;
  #idleWaiters: (() => void)[] = [];

  constructor(options: DiscoveryControllerOptions) {
    this.#o = options;
    this.#logger = options.logger.child({ component: 'discovery' });
    const { keys, etcd } = options;
    this.#claims = new PrefixWatcher({
      client: etcd,
      prefix: keys.domainClaims(),
      codec: schemaCodec(domainClaimSchema),
      logger: options.logger,
      onChange: (change) => {
        const app = change.type === 'put' ? change.value.app : undefined;
        if (app) this.#mark(app);
        if (change.prev) this.#mark(change.prev.value.app);
      },
    });
    this.#cells = new PrefixWatcher({
      client: etcd,
      prefix: keys.cells(options.region),
      codec: schemaCodec(cellSchema),
      logger: options.logger,
      onChange: (change) => {
        if (keys.parse('cell', change.key)) this.#syncCells();
      },
    });
    const metric = <T>(name: string, make: () => T): T => (options.metrics.getSingleMetric(name) as T) ?? make();
    this.#writes = metric(
      'berth_discovery_upstream_writes_total',
      () =>
        new Counter({
          name: 'berth_discovery_upstream_writes_total',
          help: 'Upstream keys written (put) or removed (delete) in etcd',
          labelNames: ['op'],
          registers: [options.metrics],
        }),
    );
    this.#endpointsGauge = metric(
      'berth_discovery_endpoints',
      () =>
        new Gauge({
          name: 'berth_discovery_endpoints',
          help: "Endpoints of Berth's EndpointSlices per cell, as last read (stale cells: the last known)",
          labelNames: ['cell'],
          registers: [options.metrics],
        }),
    );
    this.#staleGauge = metric(
      'berth_discovery_stale_cells',
      () =>
        new Gauge({
          name: 'berth_discovery_stale_cells',
          help: 'Cells whose endpoints are the last known ones (unreachable, or not listed yet)',
          registers: [options.metrics],
        }),
    );
  }

  async start(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    this.#writesAllowed = false;
    try {
      await this.#loadWritten();
      // Deposed meanwhile: stop() has run, nothing may start after it.
      if (!this.#running) return;
      await Promise.all([this.#claims.start(), this.#cells.start()]);
    } catch (err) {
      await this.stop();
      throw err;
    }
    if (!this.#running) {
      await Promise.all([this.#claims.stop(), this.#cells.stop()]);
      return;
    }
    this.#syncCells();
    // The first writes wait (a little) for the cells' first lists, so a cell that is merely slow
    // to list is not written as stale; one that is down keeps its carried endpoints.
    const deadline = Date.now() + (this.#o.firstListWaitMs ?? 10_000);
    while (this.#running && Date.now() < deadline && ![...this.#sources.values()].every((s) => s.listed)) {
      await new Promise((r) => setTimeout(r, 50));
    }
    this.#writesAllowed = true;
    this.#markAll();
    this.#logger.info({ cells: [...this.#sources.keys()] }, 'discovery started');
  }

  async stop(): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#flushing;
    await Promise.all([this.#claims.stop(), this.#cells.stop()]);
    await Promise.all([...this.#sources.values()].map((s) => s.stop()));
    this.#sources.clear();
    this.#written.clear();
    this.#carried.clear();
    this.#dirty.clear();
    this.#failures.clear();
    this.#resolveIdle();
  }

  /** Resolves when no app waits to be written (tests). */
  idle(): Promise<void> {
    if (this.#dirty.size === 0 && !this.#flushing && !this.#timer) return Promise.resolve();
    return new Promise((r) => this.#idleWaiters.push(r));
  }

  /** Whether the named cell is listed and connected (tests, metrics). */
  cellReachable(cell: string): boolean {
    return this.#sources.get(cell)?.reachable ?? false;
  }

  /** What etcd holds already: written values are compared against, and carried forward. */
  async #loadWritten(): Promise<void> {
    const stored = await this.#o.store.list(this.#o.keys.slbRoot(), upstreamsSchema, {
      keyFilter: (key) => this.#o.keys.parse('slbUpstream', key) !== undefined,
    });
    for (const entry of stored) {
      const parsed = this.#o.keys.parse('slbUpstream', entry.key);
      if (!parsed) continue;
      const byGroup = this.#written.get(parsed.app) ?? new Map<string, string>();
      byGroup.set(parsed.group, upstreamsJson(entry.value));
      this.#written.set(parsed.app, byGroup);
      // Every group holds the same content; the newest write is the best knowledge.
      const carried = this.#carried.get(parsed.app) ?? new Map<string, CellPart>();
      for (const part of partsOf(entry.value)) carried.set(part.cell, part);
      this.#carried.set(parsed.app, carried);
    }
  }

  /** Cell sources follow the cells registered for the region. */
  #syncCells(): void {
    if (!this.#running) return;
    const wanted = new Set<string>();
    for (const [key] of this.#cells.view) {
      const parsed = this.#o.keys.parse('cell', key);
      if (parsed) wanted.add(parsed.cell);
    }
    for (const name of wanted) {
      if (this.#sources.has(name)) continue;
      try {
        const source = new CellSource({
          client: loadCellClient(this.#o.kubeconfigDir, name, this.#o.cellIdentity),
          logger: this.#o.logger,
          ...(this.#o.stallMs ? { stallMs: this.#o.stallMs } : {}),
          onAppChange: (app) => this.#mark(app),
          onReachableChange: (reachable) => {
            this.#logger.info(
              { cell: name, reachable },
              reachable ? 'cell listed' : 'cell unreachable; endpoints kept',
            );
            this.#markAll();
          },
        });
        this.#sources.set(name, source);
        source.start();
      } catch (err) {
        this.#logger.error({ err, cell: name }, 'cell has no usable kubeconfig; its endpoints are carried as stale');
      }
    }
    for (const [name, source] of this.#sources) {
      if (wanted.has(name)) continue;
      this.#sources.delete(name);
      void source.stop();
    }
    this.#markAll();
  }

  #groupsOf(app: string): Set<string> {
    const groups = new Set<string>();
    for (const [, claim] of this.#claims.view) if (claim.value.app === app) groups.add(claim.value.group);
    return groups;
  }

  #markAll(): void {
    for (const [, claim] of this.#claims.view) this.#mark(claim.value.app);
    for (const app of this.#written.keys()) this.#mark(app);
  }

  #mark(app: string): void {
    if (!this.#running) return;
    this.#dirty.add(app);
    this.#schedule(this.#o.coalesceMs ?? 100);
  }

  #schedule(delayMs: number): void {
    if (this.#timer || !this.#running || !this.#writesAllowed) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (this.#flushing) {
        // One flush at a time; the next one starts when this one ends.
        return;
      }
      this.#flushing = this.#flush().finally(() => {
        this.#flushing = undefined;
        if (this.#dirty.size > 0) this.#schedule(this.#o.coalesceMs ?? 100);
        else this.#resolveIdle();
      });
    }, delayMs);
  }

  #resolveIdle(): void {
    if (this.#dirty.size > 0 && this.#running) return;
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const w of waiters) w();
  }

  async #flush(): Promise<void> {
    const apps = [...this.#dirty];
    this.#dirty.clear();
    const cells = [...this.#cells.view.keys()]
      .map((k) => this.#o.keys.parse('cell', k)?.cell)
      .filter((c): c is string => c !== undefined);
    let stale = 0;
    for (const cell of cells) {
      const source = this.#sources.get(cell);
      if (!source?.reachable) stale++;
      if (source?.listed) this.#endpointsGauge.set({ cell }, source.endpointCount());
    }
    this.#staleGauge.set(stale);
    for (const app of apps) {
      if (!this.#running) return;
      try {
        await this.#writeApp(app, cells);
        this.#failures.delete(app);
      } catch (err) {
        if (err instanceof NotLeaderError) {
          this.#logger.warn({ err }, 'not the leader any more; writes stop');
          return;
        }
        const failures = (this.#failures.get(app) ?? 0) + 1;
        this.#failures.set(app, failures);
        const delay = Math.min(RETRY_MAX_MS, 100 * 2 ** Math.min(failures, 6)) * (0.5 + Math.random() / 2);
        this.#logger.warn({ err, app, retryInMs: Math.round(delay) }, 'writing upstreams failed; retrying');
        setTimeout(() => this.#mark(app), delay).unref();
      }
    }
  }

  /** Builds one app's upstreams from every cell and writes what changed to each of its groups. */
  async #writeApp(app: string, cells: string[]): Promise<void> {
    const parts: CellPart[] = [];
    for (const cell of cells) {
      const source = this.#sources.get(cell);
      if (source?.listed) {
        const mine = source.endpointsOf(app);
        if (!mine) continue;
        parts.push({
          cell,
          stale: !source.reachable,
          syncedAt: source.syncedAt,
          revision: mine.revision,
          endpoints: mine.byVersion,
        });
        continue;
      }
      // Not listed since this leader started: what etcd held, until the cell lists.
      const carried = this.#carried.get(app)?.get(cell);
      if (carried) parts.push({ ...carried, stale: true });
    }
    const json = upstreamsJson(buildUpstreams(app, parts));
    const groups = this.#groupsOf(app);
    const written = this.#written.get(app) ?? new Map<string, string>();
    const ops: Op[] = [];
    const puts: string[] = [];
    const deletes: string[] = [];
    for (const group of groups) {
      if (written.get(group) === json) continue;
      ops.push({ op: 'put-raw', key: this.#o.keys.slbUpstream(group, app), raw: json });
      puts.push(group);
    }
    for (const group of written.keys()) {
      if (groups.has(group)) continue;
      ops.push({ op: 'delete', key: this.#o.keys.slbUpstream(group, app) });
      deletes.push(group);
    }
    if (ops.length === 0) return;
    await this.#o.store.commit(ops);
    for (const group of puts) written.set(group, json);
    for (const group of deletes) written.delete(group);
    if (written.size > 0) this.#written.set(app, written);
    else this.#written.delete(app);
    if (puts.length > 0) this.#writes.inc({ op: 'put' }, puts.length);
    if (deletes.length > 0) this.#writes.inc({ op: 'delete' }, deletes.length);
    this.#logger.debug({ app, puts, deletes }, 'upstreams written');
  }
}

function schemaCodec<T>(schema: z.ZodType<T>): { encode: (v: T) => string; decode: (raw: string) => T } {
  return { encode: (value) => JSON.stringify(value), decode: (raw) => schema.parse(JSON.parse(raw)) };
}
