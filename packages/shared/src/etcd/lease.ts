/**
 * A lease with keep-alive (etcd3's Lease keeps it alive at a third of its TTL). `lost` fires
 * once: when etcd says the lease is gone, or when no keep-alive has succeeded for most of the TTL
 * (by then the lease may already have expired on the server, so whoever holds something under it
 * must act as if it had).
 */
import { EventEmitter } from 'node:events';
import type { Etcd3, Lease } from 'etcd3';
import { UnavailableError } from '../errors/index.ts';
import { toBerthError } from './client.ts';

export type EtcdLeaseOptions = {
  ttlSeconds: number;
  /** Fraction of the TTL without a successful keep-alive after which the lease counts as lost. */
  lostAfterFraction?: number;
};

export class EtcdLease extends EventEmitter<{ lost: [reason: Error] }> {
  readonly id: string;
  readonly ttlSeconds: number;
  readonly #lease: Lease;
  #lastKeepAlive = Date.now();
  #lost = false;
  #timer: NodeJS.Timeout;

  private constructor(lease: Lease, id: string, options: EtcdLeaseOptions) {
    super();
    this.#lease = lease;
    this.id = id;
    this.ttlSeconds = options.ttlSeconds;
    const lostAfterMs = options.ttlSeconds * 1000 * (options.lostAfterFraction ?? 0.8);
    lease.on('keepaliveSucceeded', () => {
      this.#lastKeepAlive = Date.now();
    });
    lease.on('lost', (err: Error) => this.#markLost(err));
    this.#timer = setInterval(
      () => {
        if (Date.now() - this.#lastKeepAlive > lostAfterMs) {
          this.#markLost(
            new UnavailableError(`no keep-alive for ${Math.round((Date.now() - this.#lastKeepAlive) / 1000)}s`),
          );
        }
      },
      Math.max(100, Math.min(1000, lostAfterMs / 4)),
    );
    this.#timer.unref();
  }

  /** Grants a lease and starts keeping it alive. */
  static async grant(client: Etcd3, options: EtcdLeaseOptions): Promise<EtcdLease> {
    const lease = client.lease(options.ttlSeconds, { autoKeepAlive: true });
    let id: string;
    try {
      id = await lease.grant();
    } catch (err) {
      lease.removeAllListeners();
      await lease.revoke().catch(() => undefined);
      throw toBerthError(err, 'granting a lease');
    }
    return new EtcdLease(lease, id, options);
  }

  get lost(): boolean {
    return this.#lost;
  }

  /** Revokes the lease (deleting every key under it). Safe to call twice. */
  async revoke(): Promise<void> {
    clearInterval(this.#timer);
    if (this.#lease.revoked()) return;
    this.#lost = true;
    await this.#lease.revoke().catch(() => undefined);
  }

  /** Stops keeping the lease alive without revoking it: keys under it expire after the TTL. */
  release(): void {
    clearInterval(this.#timer);
    this.#lost = true;
    this.#lease.release();
  }

  #markLost(err: Error): void {
    if (this.#lost) return;
    this.#lost = true;
    clearInterval(this.#timer);
    this.emit('lost', err);
  }
}
