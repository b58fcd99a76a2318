/**
 * What every long-running Berth service has: an etcd client and its key layout, health and
 * readiness, Prometheus metrics, the HTTP server, and an ordered set of the service's own
 * components. A service class builds one of these from its parsed config and adds its parts.
 *
 * Order: the HTTP server listens first, so /healthz answers and /readyz says what is missing
 * while dependencies come up; then the components start in the order added. On stop the HTTP
 * server drains first (no new requests), then components stop in reverse, then etcd closes.
 */
import type { Express } from 'express';
import { Gauge, type Registry } from 'prom-client';
import type { HostPort } from '../config/index.ts';
import { UnavailableError } from '../errors/index.ts';
import { createEtcdClient, type Etcd3, LeaderElection, pingEtcd } from '../etcd/index.ts';
import type { EventSubjects } from '../events/index.ts';
import { createMetricsRegistry, HealthRegistry, HttpServer } from '../http/index.ts';
import { BerthKeys } from '../keys/index.ts';
import { type Component, Lifecycle } from '../lifecycle/index.ts';
import type { Logger } from '../logging/index.ts';
import { EventsComponent } from '../nats/events.ts';
import type { NatsComponent } from '../nats/index.ts';
import { Etcd3Backend } from '../store/etcd3-backend.ts';
import { Store } from '../store/store.ts';

/** The config fields every service has (from `serviceEnv` and `etcdEnv`). */
export type BaseServiceConfig = {
  HTTP_ADDR: HostPort;
  BERTH_REGION: string;
  ETCD_ENDPOINTS: string[];
  ETCD_PREFIX: string;
  ETCD_USERNAME?: string | undefined;
  ETCD_PASSWORD?: string | undefined;
  ETCD_DIAL_TIMEOUT: number;
  SHUTDOWN_TIMEOUT: number;
  /** From `serviceEnv`; optional here so a test's hand-made config may leave them out. */
  HTTP_REQUEST_TIMEOUT?: number | undefined;
  METRICS_ADDR?: HostPort | undefined;
  METRICS_TOKEN?: string | undefined;
};

export type ServiceRuntimeOptions = {
  name: string;
  config: BaseServiceConfig;
  logger: Logger;
  /** The service's own HTTP routes, mounted between the health endpoints and the 404 handler. */
  routes?: (app: Express) => void;
  /** An etcd client to use instead of making one (tests). */
  etcd?: Etcd3;
};

export class ServiceRuntime {
  readonly name: string;
  readonly logger: Logger;
  readonly etcd: Etcd3;
  readonly keys: BerthKeys;
  /** The typed store every write of this service goes through (../store). */
  readonly store: Store;
  readonly health = new HealthRegistry();
  readonly metrics: Registry;
  readonly http: HttpServer;
  readonly #lifecycle: Lifecycle;
  readonly #ownsEtcd: boolean;
  #started = false;
  #stopping: Promise<void> | undefined;

  constructor(options: ServiceRuntimeOptions) {
    const { config } = options;
    this.name = options.name;
    this.logger = options.logger;
    this.#ownsEtcd = !options.etcd;
    this.etcd =
      options.etcd ??
      createEtcdClient({
        endpoints: config.ETCD_ENDPOINTS,
        username: config.ETCD_USERNAME,
        password: config.ETCD_PASSWORD,
        dialTimeoutMs: config.ETCD_DIAL_TIMEOUT,
      });
    this.keys = new BerthKeys(config.ETCD_PREFIX);
    this.store = new Store(new Etcd3Backend(this.etcd), { logger: options.logger });
    this.metrics = createMetricsRegistry(options.name);
    this.health.add('etcd', () => pingEtcd(this.etcd));
    this.health.add('started', () => {
      if (!this.#started) throw new UnavailableError('still starting');
    });
    this.http = new HttpServer({
      host: config.HTTP_ADDR.host,
      port: config.HTTP_ADDR.port,
      logger: options.logger,
      health: this.health,
      metrics: this.metrics,
      ...(options.routes ? { routes: options.routes } : {}),
      drainTimeoutMs: Math.max(1000, config.SHUTDOWN_TIMEOUT / 2),
      ...(config.HTTP_REQUEST_TIMEOUT !== undefined ? { requestTimeoutMs: config.HTTP_REQUEST_TIMEOUT } : {}),
      metricsAccess: { addr: config.METRICS_ADDR, token: config.METRICS_TOKEN },
    });
    this.#lifecycle = new Lifecycle(options.logger, { stopTimeoutMs: config.SHUTDOWN_TIMEOUT / 2 });
  }

  /** Adds a component; components start in the order added and stop in reverse. */
  add(component: Component): this {
    this.#lifecycle.add(component);
    return this;
  }

  /**
   * Campaigns for leadership of `election` (scheduler, discovery): one instance leads, the others
   * stand by and take over within the lease TTL. Exposes `berth_<service>_leader` (1 while leading).
   */
  addLeaderElection(
    election: string,
    options: {
      candidateId: string;
      ttlSeconds?: number;
      onElected?: () => void | Promise<void>;
      onDeposed?: (reason: string) => void | Promise<void>;
    },
  ): LeaderElection {
    const gauge = new Gauge({
      name: `berth_${this.name.replace(/-/g, '_')}_leader`,
      help: `1 while this ${this.name} instance leads, else 0`,
      registers: [this.metrics],
    });
    gauge.set(0);
    const leaderElection = new LeaderElection({
      client: this.etcd,
      key: this.keys.election(election),
      candidateId: options.candidateId,
      ...(options.ttlSeconds ? { ttlSeconds: options.ttlSeconds } : {}),
      logger: this.logger,
      onElected: async () => {
        gauge.set(1);
        await options.onElected?.();
      },
      onDeposed: async (reason) => {
        gauge.set(0);
        await options.onDeposed?.(reason);
      },
    });
    this.add(leaderElection);
    return leaderElection;
  }

  /**
   * Events through the outbox (../nats/events.ts): recorded in the change's own transaction,
   * published after the commit, and relayed by this instance when that failed. Starts after NATS.
   */
  addEvents(nats: NatsComponent, subjects: EventSubjects, options: { ensureStreams?: boolean } = {}): EventsComponent {
    const events = new EventsComponent({
      nats,
      store: this.store,
      keys: this.keys,
      subjects,
      logger: this.logger,
      metrics: this.metrics,
      metricPrefix: `berth_${this.name.replace(/-/g, '_')}`,
      ...options,
    });
    this.add(events);
    return events;
  }

  async start(): Promise<void> {
    await this.http.start();
    await this.#lifecycle.start();
    this.#started = true;
  }

  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.#started = false;
      await this.http.stop();
      await this.#lifecycle.stop();
      if (this.#ownsEtcd) this.etcd.close();
    })();
    return this.#stopping;
  }
}
