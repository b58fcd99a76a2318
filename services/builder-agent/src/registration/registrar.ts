/**
 * The build machine's registration: `{prefix}/builders/{region}/{id}` (`BuilderRegistration`)
 * under a lease (TTL 10 s, kept alive), rewritten every 30 s with free disk and cache size. When
 * the lease is lost the agent takes nothing new (`onLost`: the worker pauses, builds running keep
 * running under their BullMQ locks), registers again with a new lease, and then resumes
 * (`onRegistered`). On stop it says `draining` first, and revokes the lease last.
 */
import { statfs } from 'node:fs/promises';
import type { BuilderRegistration } from '@berth/shared/builds';
import { type Etcd3, EtcdLease } from '@berth/shared/etcd';
import type { BerthKeys } from '@berth/shared/keys';
import type { Logger } from '@berth/shared/logging';

export type BuilderRegistrarOptions = {
  etcd: Etcd3;
  keys: BerthKeys;
  region: string;
  id: string;
  slots: number;
  weight: number;
  labels: Record<string, string>;
  version: string;
  dataDir: string;
  cacheBytes: () => number;
  leaseTtlSeconds: number;
  reportIntervalMs: number;
  logger: Logger;
  onLost?: () => void | Promise<void>;
  onRegistered?: () => void | Promise<void>;
};

const RETRY_MS = 1000;

export class BuilderRegistrar {
  readonly name = 'registration';
  readonly #o: BuilderRegistrarOptions;
  readonly #log: Logger;
  readonly #startedAt = new Date().toISOString();
  #lease: EtcdLease | undefined;
  #timer: NodeJS.Timeout | undefined;
  #retry: NodeJS.Timeout | undefined;
  #running = false;
  #draining = false;
  #registered = false;

  constructor(options: BuilderRegistrarOptions) {
    this.#o = options;
    this.#log = options.logger.child({ component: 'registration' });
  }

  get key(): string {
    return this.#o.keys.builder(this.#o.region, this.#o.id);
  }

  /** True while the registration is in etcd under a live lease. */
  get registered(): boolean {
    return this.#registered && !!this.#lease && !this.#lease.lost;
  }

  async start(): Promise<void> {
    this.#running = true;
    await this.#register(true);
    this.#timer = setInterval(() => void this.report().catch(() => undefined), this.#o.reportIntervalMs);
    this.#timer.unref();
  }

  /** Says "draining" (the dispatcher sends nothing more), keeping the lease. */
  async drain(): Promise<void> {
    this.#draining = true;
    await this.report();
  }

  async stop(): Promise<void> {
    this.#running = false;
    clearInterval(this.#timer);
    clearTimeout(this.#retry);
    this.#registered = false;
    await this.#lease?.revoke();
    this.#lease = undefined;
  }

  /** Writes the registration now (free disk, cache size, draining). */
  async report(): Promise<void> {
    const lease = this.#lease;
    if (!lease || lease.lost || !this.#running) return;
    const value: BuilderRegistration = {
      id: this.#o.id,
      region: this.#o.region,
      slots: this.#o.slots,
      weight: this.#o.weight,
      labels: this.#o.labels,
      draining: this.#draining,
      diskFreeBytes: await diskFree(this.#o.dataDir),
      cacheBytes: Math.round(this.#o.cacheBytes()),
      version: this.#o.version,
      startedAt: this.#startedAt,
      reportedAt: new Date().toISOString(),
    };
    try {
      await this.#o.etcd.put(this.key).value(JSON.stringify(value)).lease(lease.id).exec();
      this.#registered = true;
    } catch (err) {
      this.#log.warn({ err: (err as Error).message }, 'registration not written');
      throw err;
    }
  }

  async #register(first = false): Promise<void> {
    if (!this.#running) return;
    try {
      const lease = await EtcdLease.grant(this.#o.etcd, { ttlSeconds: this.#o.leaseTtlSeconds });
      this.#lease = lease;
      lease.once('lost', (err) => {
        this.#registered = false;
        this.#log.warn({ err: err.message }, 'lease lost: taking no new builds; registering again');
        void Promise.resolve(this.#o.onLost?.()).catch(() => undefined);
        if (this.#running) this.#retry = setTimeout(() => void this.#register(), RETRY_MS);
      });
      await this.report();
      this.#log.info({ key: this.key, lease: lease.id }, 'registered');
      if (!first) await this.#o.onRegistered?.();
    } catch (err) {
      if (first) throw err;
      this.#log.warn({ err: (err as Error).message }, 'cannot register; retrying');
      await this.#lease?.revoke().catch(() => undefined);
      if (this.#running) this.#retry = setTimeout(() => void this.#register(), RETRY_MS * 2);
    }
  }
}

async function diskFree(dir: string): Promise<number> {
  try {
    const s = await statfs(dir);
    return s.bavail * s.bsize;
  } catch {
    return 0;
  }
}
