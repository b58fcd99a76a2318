/**
 * The lb-agent's loop (docs/traffic.md, "lb-agent"): one level-triggered watch of its group's
 * tree `{prefix}/slb/{group}/`, and two ways of applying what it sees.
 *
 * - Endpoints and weights (`upstreams/{app}`, `traffic/{app}`): never a reload. Each change marks
 *   its app dirty; a flush on the next turn of the event loop builds that app's routing document
 *   and pushes it to Lua. A document equal to the last one pushed is not sent again.
 * - Domains (`domains/{domain}`): a reload, debounced, through NginxConfigManager (render, `nginx
 *   -t`, swap, signal, confirm). Pending routing documents are pushed first, so new workers find
 *   their data.
 *
 * The agent reports itself at `/slb/{group}/agents/{host}` under a lease. A digest check repairs
 * drift and detects an nginx restart (a new boot id: the shared dict is empty), after which every
 * document is pushed again. When etcd's revision goes backwards (a restore), every document is
 * pushed with force, since Lua refuses older revisions.
 */
import { createHash } from 'node:crypto';
import { type Etcd3, EtcdLease, PrefixWatcher, type WatchChange } from '@berth/shared/etcd';
import type { EventInput } from '@berth/shared/events';
import type { BerthKeys } from '@berth/shared/keys';
import type { Logger } from '@berth/shared/logging';
import {
  type Domain,
  domainSchema,
  type FailedDomain,
  type LbAgentStatus,
  type Traffic,
  trafficSchema,
  type Upstreams,
  upstreamsSchema,
} from '@berth/shared/model';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { NginxConfigManager } from './nginx/config-manager.ts';
import type { ControlClient, LuaStats } from './nginx/control-client.ts';
import { LuaRouteApplier, type RouteApplier } from './routing/applier.ts';
import { buildRoutingDocument } from './routing/document.ts';

export type LbAgentOptions = {
  etcd: Etcd3;
  keys: BerthKeys;
  group: string;
  host: string;
  control: ControlClient;
  /** How documents reach nginx. Default: Lua, through `control` (no reload). */
  applier?: RouteApplier;
  config: NginxConfigManager;
  logger: Logger;
  metrics: Registry;
  /** Domain changes within this window become one reload. */
  debounceMs: number;
  /** How often Lua's documents are compared with the agent's (drift, nginx restarts). */
  digestIntervalMs: number;
  leaseTtlSeconds: number;
  /** Where the API reads this agent's requests per version (`/stats/requests`), put in its status. */
  statsUrl?: () => string | undefined;
  /** Records an app-scoped event (a domain that failed `nginx -t`); absent without NATS. */
  publish?: (event: Omit<EventInput, 'actor'>) => Promise<void>;
};

type Entry<T> = { value: T; modRevision: number };

const RETRY_MS = 500;

export class LbAgent {
  readonly #o: LbAgentOptions;
  readonly #log: Logger;
  readonly #watcher: PrefixWatcher<unknown>;
  readonly #applier: RouteApplier;
  readonly #root: string;
  readonly #domains = new Map<string, Entry<Domain>>();
  readonly #traffic = new Map<string, Entry<Traffic>>();
  readonly #upstreams = new Map<string, Entry<Upstreams>>();
  /** Per app: the revision of its newest change (a deletion's too), and when it was seen. */
  readonly #appRevision = new Map<string, number>();
  readonly #seenAt = new Map<string, number>();
  /** Per app: the body Lua accepted last, and its md5 (Lua's digest). */
  readonly #pushed = new Map<string, { body: string; digest: string }>();
  readonly #dirty = new Set<string>();
  #domainsRevision = 0;
  #lastSyncRevision = 0;
  #forceAll = false;
  #boot: string | undefined;
  #flushScheduled = false;
  #flushing: Promise<void> = Promise.resolve();
  #retryTimer: NodeJS.Timeout | undefined;
  #configTimer: NodeJS.Timeout | undefined;
  #configRunning: Promise<void> | undefined;
  #configAgain = false;
  #digestTimer: NodeJS.Timeout | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #lease: EtcdLease | undefined;
  #running = false;
  #synced = false;
  #status: Omit<LbAgentStatus, 'reportedAt'>;
  #lastPushError: string | null = null;
  #lastConfigError: string | null = null;
  readonly #m;

  constructor(options: LbAgentOptions) {
    this.#o = options;
    this.#log = options.logger.child({ component: 'lb-agent' });
    this.#root = `${options.keys.prefix}/slb/${options.group}/`;
    this.#applier = options.applier ?? new LuaRouteApplier(options.control);
    this.#status = {
      host: options.host,
      group: options.group,
      appliedGeneration: 0,
      lastGoodGeneration: 0,
      failedDomains: [],
      lastError: null,
    };
    this.#watcher = new PrefixWatcher<unknown>({
      client: options.etcd,
      prefix: this.#root,
      logger: options.logger,
      onChange: (c) => this.#onChange(c),
      onSync: (_view, revision) => this.#onSync(revision),
    });
    const r = [options.metrics];
    this.#m = {
      reloads: new Counter({
        name: 'berth_lb_reloads_total',
        help: 'nginx reloads by result: ok, or failed (the signal or the confirmation)',
        labelNames: ['result'],
        registers: r,
      }),
      configTests: new Counter({
        name: 'berth_lb_config_tests_total',
        help: 'Config generations tested, by whether the whole wanted config passed nginx -t',
        labelNames: ['result'],
        registers: r,
      }),
      updates: new Counter({
        name: 'berth_lb_dynamic_updates_total',
        help: 'Routing documents pushed to Lua (no reload), by result',
        labelNames: ['result'],
        registers: r,
      }),
      syncLatency: new Histogram({
        name: 'berth_lb_sync_latency_seconds',
        help: 'From a change arriving on the etcd watch to Lua accepting the app’s new document',
        buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
        registers: r,
      }),
      generation: new Gauge({
        name: 'berth_lb_config_generation',
        help: 'The config generation nginx serves',
        registers: r,
      }),
      failedDomains: new Gauge({
        name: 'berth_lb_failed_domains',
        help: 'Domains whose newest change failed nginx -t',
        registers: r,
      }),
      nginxRestarts: new Counter({
        name: 'berth_lb_nginx_restarts_total',
        help: 'nginx restarts seen (a new boot id in the shared dict), each followed by a full push',
        registers: r,
      }),
      ...luaMetrics(() => this.#o.control.stats(), r),
      dictFree: new Gauge({
        name: 'berth_lb_shared_dict_free_bytes',
        help: 'Free bytes in the Lua shared dicts, as of the last digest check',
        labelNames: ['dict'],
        registers: r,
      }),
    };
  }

  get status(): Readonly<Omit<LbAgentStatus, 'reportedAt'>> {
    return this.#status;
  }
  /** True once the first list was applied: documents pushed and a generation live. */
  get synced(): boolean {
    return this.#synced;
  }
  get watcher(): PrefixWatcher<unknown> {
    return this.#watcher;
  }

  async start(): Promise<void> {
    this.#running = true;
    await this.#o.config.recover();
    await this.#watcher.start();
    await this.#flushNow();
    await this.#runConfig();
    this.#synced = true;
    this.#digestTimer = setInterval(() => void this.#digest(), this.#o.digestIntervalMs);
    this.#digestTimer.unref();
    await this.#register();
    this.#heartbeat = setInterval(() => void this.#report(), Math.max(1000, (this.#o.leaseTtlSeconds * 1000) / 2));
    this.#heartbeat.unref();
  }

  async stop(): Promise<void> {
    this.#running = false;
    clearInterval(this.#digestTimer);
    clearInterval(this.#heartbeat);
    clearTimeout(this.#configTimer);
    clearTimeout(this.#retryTimer);
    await this.#watcher.stop();
    await this.#flushing.catch(() => undefined);
    await this.#configRunning?.catch(() => undefined);
    // The status key goes with the lease: a stopped agent is not listed.
    await this.#lease?.revoke();
    this.#lease = undefined;
  }

  // ---- the watch -------------------------------------------------------------------------------

  #onChange(change: WatchChange<unknown>): void {
    const [kind, name, ...rest] = change.key.slice(this.#root.length).split('/');
    if (!kind || !name || rest.length > 0) return;
    const now = performance.now();
    if (kind === 'domains') {
      this.#apply(this.#domains, domainSchema, change, name);
      this.#domainsRevision = Math.max(this.#domainsRevision, change.modRevision);
      this.#scheduleConfig();
    } else if (kind === 'traffic' || kind === 'upstreams') {
      if (kind === 'traffic') this.#apply(this.#traffic, trafficSchema, change, name);
      else this.#apply(this.#upstreams, upstreamsSchema, change, name);
      this.#appRevision.set(name, Math.max(this.#appRevision.get(name) ?? 0, change.modRevision));
      if (!this.#seenAt.has(name)) this.#seenAt.set(name, now);
      this.#markDirty(name);
    }
  }

  #apply<T>(
    map: Map<string, Entry<T>>,
    schema: { safeParse(v: unknown): { success: true; data: T } | { success: false; error: unknown } },
    change: WatchChange<unknown>,
    name: string,
  ): void {
    if (change.type === 'delete') {
      map.delete(name);
      return;
    }
    const parsed = schema.safeParse(change.value);
    if (!parsed.success) {
      // Keep what was known: a value that does not parse must not take a route away.
      this.#log.warn({ key: change.key, err: parsed.error }, 'value does not match its schema; ignored');
      return;
    }
    map.set(name, { value: parsed.data, modRevision: change.modRevision });
  }

  #onSync(revision: number): void {
    if (revision < this.#lastSyncRevision) {
      // etcd was restored from an older state: Lua holds newer revisions than anything etcd has.
      this.#log.warn(
        { revision, previous: this.#lastSyncRevision },
        "etcd's revision went backwards; pushing everything with force",
      );
      this.#forceAll = true;
      for (const app of this.#apps()) {
        this.#appRevision.set(app, revision);
        this.#markDirty(app);
      }
      this.#domainsRevision = revision;
      this.#scheduleConfig();
    }
    this.#lastSyncRevision = revision;
  }

  #apps(): Set<string> {
    return new Set([...this.#upstreams.keys(), ...this.#traffic.keys(), ...this.#pushed.keys()]);
  }

  // ---- routing documents (no reload) ------------------------------------------------------------

  #markDirty(app: string): void {
    this.#dirty.add(app);
    if (this.#flushScheduled || !this.#running) return;
    this.#flushScheduled = true;
    setImmediate(() => {
      this.#flushScheduled = false;
      void this.#flushNow();
    });
  }

  /** Pushes every dirty app's document; serialized, so pushes of one app never overtake each other. */
  #flushNow(): Promise<void> {
    this.#flushing = this.#flushing.then(() => this.#flush()).catch((err) => this.#log.error({ err }, 'flush failed'));
    return this.#flushing;
  }

  async #flush(): Promise<void> {
    const apps = [...this.#dirty];
    this.#dirty.clear();
    const failed: string[] = [];
    await Promise.all(
      apps.map(async (app) => {
        try {
          await this.#pushApp(app);
        } catch (err) {
          failed.push(app);
          this.#m.updates.inc({ result: 'error' });
          this.#lastPushError = `pushing ${app}'s routes: ${err instanceof Error ? err.message : String(err)}`;
        }
      }),
    );
    if (failed.length > 0) {
      this.#log.warn({ apps: failed, err: this.#lastPushError }, 'routing documents not pushed; retrying');
      for (const app of failed) this.#dirty.add(app);
      this.#retryLater();
    } else if (this.#lastPushError) {
      this.#lastPushError = null;
      void this.#report();
    }
    if (this.#dirty.size === 0) this.#forceAll = false;
  }

  async #pushApp(app: string): Promise<void> {
    const upstreams = this.#upstreams.get(app)?.value;
    const traffic = this.#traffic.get(app)?.value;
    const revision = this.#appRevision.get(app) ?? this.#watcher.revision;
    const seenAt = this.#seenAt.get(app);
    this.#seenAt.delete(app);
    const force = this.#forceAll;
    if (!upstreams && !traffic) {
      if (!this.#pushed.has(app)) return;
      let r = await this.#applier.remove(app, revision, { force });
      if (!r.ok && r.status === 409) {
        // Lua holds a newer revision: etcd went backwards under us, or a newer push overtook
        // this removal (then the app is gone for good anyway). Remove it either way.
        r = await this.#applier.remove(app, revision, { force: true });
      }
      if (!r.ok) throw new Error(`${r.status} ${r.error}`);
      this.#pushed.delete(app);
      this.#m.updates.inc({ result: 'removed' });
      return;
    }
    const doc = buildRoutingDocument(app, upstreams, traffic, revision);
    const body = JSON.stringify(doc);
    const last = this.#pushed.get(app);
    if (last?.body === body) return;
    let r = await this.#applier.push(doc, body, { force });
    if (!r.ok && r.status === 409 && (r.revision ?? 0) > this.#watcher.revision) {
      // Lua holds a revision etcd never reached: etcd went backwards under us.
      r = await this.#applier.push(doc, body, { force: true });
    }
    if (!r.ok) {
      if (r.status === 409) {
        // A newer document is there already (a push that overtook this one): nothing to do.
        this.#m.updates.inc({ result: 'stale' });
        return;
      }
      throw new Error(`${r.status} ${r.error}`);
    }
    this.#pushed.set(app, { body, digest: md5(body) });
    this.#m.updates.inc({ result: 'ok' });
    if (seenAt !== undefined) this.#m.syncLatency.observe((performance.now() - seenAt) / 1000);
  }

  #retryLater(): void {
    if (this.#retryTimer || !this.#running) return;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      void this.#flushNow();
    }, RETRY_MS);
    this.#retryTimer.unref();
  }

  /** Compares what Lua holds with what was pushed: repairs drift, and re-pushes all after an nginx restart. */
  async #digest(): Promise<void> {
    if (!this.#running) return;
    try {
      const lua = await this.#applier.routes();
      this.#m.dictFree.set({ dict: 'berth_routes' }, lua.free);
      if (this.#boot !== undefined && lua.boot !== this.#boot) {
        this.#log.warn({ boot: lua.boot }, 'nginx restarted (its shared dict is new); pushing every document');
        this.#m.nginxRestarts.inc();
        this.#pushed.clear();
        for (const app of this.#apps()) this.#markDirty(app);
      } else {
        for (const [app, pushed] of this.#pushed) {
          if (lua.apps[app]?.digest !== pushed.digest) {
            this.#log.warn({ app }, "Lua's document differs from the one pushed; pushing again");
            this.#pushed.delete(app);
            this.#markDirty(app);
          }
        }
        for (const app of Object.keys(lua.apps)) {
          if (!this.#pushed.has(app) && !this.#upstreams.has(app) && !this.#traffic.has(app)) {
            this.#pushed.set(app, { body: '', digest: '' });
            this.#markDirty(app); // removes it
          }
        }
      }
      this.#boot = lua.boot;
      const generation = await this.#o.control.generation();
      if (generation !== this.#o.config.servedGeneration && this.#o.config.servedGeneration >= 0) {
        this.#log.warn(
          { generation, served: this.#o.config.servedGeneration },
          'nginx serves another generation; reloading',
        );
        this.#scheduleConfig();
      }
    } catch (err) {
      this.#log.warn({ err }, 'digest check failed (is nginx running?)');
    }
  }

  // ---- domain config (reload) ----------------------------------------------------------------

  #scheduleConfig(): void {
    if (!this.#running || !this.#synced) return;
    clearTimeout(this.#configTimer);
    this.#configTimer = setTimeout(() => void this.#runConfig(), this.#o.debounceMs);
    this.#configTimer.unref();
  }

  #runConfig(): Promise<void> {
    if (this.#configRunning) {
      this.#configAgain = true;
      return this.#configRunning;
    }
    this.#configRunning = (async () => {
      do {
        this.#configAgain = false;
        await this.#syncConfig();
      } while (this.#configAgain && this.#running);
    })().finally(() => {
      this.#configRunning = undefined;
    });
    return this.#configRunning;
  }

  async #syncConfig(): Promise<void> {
    const generation = this.#domainsRevision || this.#watcher.revision;
    const wanted = new Map([...this.#domains].map(([name, e]) => [name, e.value]));
    await this.#flushNow();
    try {
      const outcome = await this.#o.config.apply(generation, wanted);
      this.#m.configTests.inc({ result: outcome.passed ? 'passed' : 'failed' });
      if (outcome.reloaded) this.#m.reloads.inc({ result: 'ok' });
      const now = new Date().toISOString();
      const before = new Map(this.#status.failedDomains.map((f) => [f.domain, f]));
      const failedDomains: FailedDomain[] = outcome.failed.map((f) => {
        const prev = before.get(f.domain);
        return prev && prev.message === f.message
          ? prev
          : { domain: f.domain, message: f.message, generation, since: now };
      });
      this.#status = {
        ...this.#status,
        appliedGeneration: generation,
        lastGoodGeneration: outcome.passed ? generation : this.#status.lastGoodGeneration,
        failedDomains,
      };
      this.#lastConfigError = null;
      this.#m.generation.set(generation);
      this.#m.failedDomains.set(failedDomains.length);
      for (const f of failedDomains) {
        if (before.get(f.domain)?.message === f.message) continue;
        this.#log.warn(
          { domain: f.domain, message: f.message },
          "domain's change fails nginx -t; its last good config keeps serving",
        );
        void this.#announce(f);
      }
    } catch (err) {
      this.#m.reloads.inc({ result: 'failed' });
      this.#lastConfigError = err instanceof Error ? err.message : String(err);
      this.#log.error({ err }, 'config not applied; nginx keeps its running config; retrying');
      if (this.#running) {
        clearTimeout(this.#configTimer);
        this.#configTimer = setTimeout(() => void this.#runConfig(), Math.max(RETRY_MS, this.#o.debounceMs));
        this.#configTimer.unref();
      }
    }
    await this.#report();
  }

  async #announce(f: FailedDomain): Promise<void> {
    const domain = this.#domains.get(f.domain)?.value;
    if (!this.#o.publish || !domain) return;
    try {
      const app = await this.#o.etcd.get(this.#o.keys.templates.app.format({ app: domain.app })).json();
      const incarnation = (app as { incarnation?: unknown } | null)?.incarnation;
      await this.#o.publish({
        kind: 'domain',
        resourceId: domain.app,
        ...(typeof incarnation === 'string' ? { incarnation } : {}),
        resourceName: f.domain,
        action: 'config-failed',
        data: { group: this.#o.group, host: this.#o.host, generation: f.generation, message: f.message },
      });
    } catch (err) {
      this.#log.warn({ err, domain: f.domain }, 'could not record the failed domain as an event');
    }
  }

  // ---- status under a lease ---------------------------------------------------------------------

  async #register(): Promise<void> {
    try {
      this.#lease = await EtcdLease.grant(this.#o.etcd, { ttlSeconds: this.#o.leaseTtlSeconds });
      this.#lease.once('lost', (err) => {
        this.#log.warn({ err }, 'status lease lost; registering again');
        this.#lease = undefined;
        if (this.#running) setTimeout(() => void this.#register(), RETRY_MS).unref();
      });
      await this.#report();
    } catch (err) {
      this.#log.warn({ err }, 'cannot register the status key; retrying');
      if (this.#running) setTimeout(() => void this.#register(), RETRY_MS * 4).unref();
    }
  }

  async #report(): Promise<void> {
    const lease = this.#lease;
    if (!lease || !this.#running) return;
    this.#status = { ...this.#status, lastError: this.#lastConfigError ?? this.#lastPushError };
    const statsUrl = this.#o.statsUrl?.();
    const status: LbAgentStatus = {
      ...this.#status,
      ...(statsUrl ? { statsUrl } : {}),
      reportedAt: new Date().toISOString(),
    };
    const key = this.#o.keys.templates.lbAgent.format({ group: this.#o.group, host: this.#o.host });
    try {
      await this.#o.etcd.put(key).value(JSON.stringify(status)).lease(lease.id).exec();
    } catch (err) {
      this.#log.warn({ err }, 'status not reported');
    }
  }
}

function md5(text: string): string {
  return createHash('md5').update(text).digest('hex');
}

/**
 * Lua's per app and version counters (since nginx started) as gauges, read from the control
 * socket at scrape time; one read serves every gauge of a scrape. The autoscaler reads these.
 */
function luaMetrics(read: () => Promise<LuaStats>, registers: Registry[]) {
  let cached: { at: number; stats: Promise<LuaStats | undefined> } | undefined;
  const stats = () => {
    if (!cached || performance.now() - cached.at > 500) {
      cached = { at: performance.now(), stats: read().catch(() => undefined) };
    }
    return cached.stats;
  };
  const each = async (f: (app: string, version: string, v: LuaStats['apps'][string][string]) => void) => {
    const s = await stats();
    for (const [app, versions] of Object.entries(s?.apps ?? {})) {
      for (const [version, v] of Object.entries(versions)) f(app, version, v);
    }
  };
  return {
    luaRequests: new Gauge({
      name: 'berth_lb_app_requests',
      help: 'Requests per app, version and status class, counted by Lua since nginx started',
      labelNames: ['app', 'version', 'class'],
      registers,
      async collect() {
        this.reset();
        await each((app, version, v) => {
          for (const [klass, n] of Object.entries(v.status)) this.set({ app, version, class: klass }, n);
        });
      },
    }),
    luaLatencySum: new Gauge({
      name: 'berth_lb_app_upstream_seconds_sum',
      help: 'Upstream response time per app and version, summed by Lua since nginx started',
      labelNames: ['app', 'version'],
      registers,
      async collect() {
        this.reset();
        await each((app, version, v) => this.set({ app, version }, v.upstreamLatencySum));
      },
    }),
    luaLatencyCount: new Gauge({
      name: 'berth_lb_app_upstream_seconds_count',
      help: 'Upstream responses per app and version timed by Lua since nginx started',
      labelNames: ['app', 'version'],
      registers,
      async collect() {
        this.reset();
        await each((app, version, v) => this.set({ app, version }, v.upstreamLatencyCount));
      },
    }),
    statsDictFree: new Gauge({
      name: 'berth_lb_stats_dict_free_bytes',
      help: 'Free bytes in the berth_stats shared dict',
      registers,
      async collect() {
        const s = await stats();
        if (s?.free.berth_stats !== undefined) this.set(s.free.berth_stats);
      },
    }),
  };
}
