/**
 * Leader election: a campaign on a lease. One key per election; the leader is whoever created it,
 * and it lives under the leader's lease, so it disappears when the leader dies or loses etcd.
 * Standbys watch the key and campaign again the moment it is deleted.
 *
 * A leader steps down (onDeposed) when its lease is lost, when its key is deleted or taken, or on
 * stop(). One that lost its seat waits `recampaignDelayMs` before campaigning again, so the
 * standby takes the seat rather than the failing candidate winning it back. Writes that must not
 * happen after a leader lost its seat can be fenced with `fence()`: a transaction compare that
 * holds only while this candidate's key is still the election's key.
 */
import type { Etcd3 } from 'etcd3';
import { NotLeaderError } from '../errors/index.ts';
import type { Logger } from '../logging/index.ts';
import type { Compare } from '../store/backend.ts';
import { type Codec, createIfAbsent, getVersioned } from './cas.ts';
import { EtcdLease } from './lease.ts';
import { openWatchStream, type WatchStreamHandle } from './watch.ts';

export type LeaderElectionOptions = {
  client: Etcd3;
  /** The election key, e.g. `keys.election('scheduler')`. */
  key: string;
  /** This candidate's id (host name, pod name…): the key's value while it leads. */
  candidateId: string;
  /** Lease TTL: how long a dead leader holds the seat. Default 10 s. */
  ttlSeconds?: number;
  /**
   * How long a leader that lost its seat (lease lost, key deleted) waits before campaigning
   * again, so a standby that was watching takes over instead of the two racing and the seat
   * flapping back to the candidate that just failed. Default half the TTL.
   */
  recampaignDelayMs?: number;
  logger?: Logger;
  onElected?: () => void | Promise<void>;
  onDeposed?: (reason: string) => void | Promise<void>;
};

type Leadership = { value: string; createRevision: number };

const rawCodec: Codec<string> = { encode: (v) => v, decode: (raw) => raw };

export class LeaderElection {
  readonly name = 'leader-election';
  readonly key: string;
  readonly candidateId: string;
  readonly #options: LeaderElectionOptions;
  readonly #logger: Logger | undefined;
  #running = false;
  #loop: Promise<void> | undefined;
  #lease: EtcdLease | undefined;
  #leadership: Leadership | undefined;
  #stream: WatchStreamHandle | undefined;
  #wake: (() => void) | undefined;
  /** Set when this candidate lost its seat: it campaigns again only after this time. */
  #recampaignAt = 0;

  constructor(options: LeaderElectionOptions) {
    this.key = options.key;
    this.candidateId = options.candidateId;
    this.#options = options;
    this.#logger = options.logger?.child({ component: 'leader-election', election: options.key });
  }

  get isLeader(): boolean {
    return this.#leadership !== undefined && !this.#lease?.lost;
  }

  /** The current leader's id as etcd has it, or undefined when the seat is empty. */
  async leader(): Promise<string | undefined> {
    const current = await getVersioned<string>(this.#options.client, this.key, rawCodec);
    return current?.value;
  }

  /**
   * A compare that holds only while this candidate leads (the seat's create revision), for
   * `store.fenced(() => election.fence())`: every transaction of a deposed leader fails. Throws
   * NotLeaderError when this candidate does not lead now.
   */
  fence(): Compare {
    if (!this.#leadership || this.#lease?.lost) {
      throw new NotLeaderError(`${this.candidateId} does not lead ${this.key}`);
    }
    return { key: this.key, createRevision: this.#leadership.createRevision };
  }

  /** Starts campaigning in the background. Safe to call twice. */
  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#loop = this.#campaign();
  }

  /** Resigns (deleting the key if held) and stops campaigning. Safe to call twice. */
  async stop(): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    this.#stream?.cancel();
    this.#wake?.();
    await this.#loop;
  }

  async #campaign(): Promise<void> {
    let backoff = 200;
    while (this.#running) {
      const wait = this.#recampaignAt - Date.now();
      if (wait > 0) {
        await this.#sleep(wait);
        continue;
      }
      try {
        const lease = await EtcdLease.grant(this.#options.client, { ttlSeconds: this.#options.ttlSeconds ?? 10 });
        this.#lease = lease;
        const lost = new Promise<string>((resolve) =>
          lease.once('lost', (err) => resolve(`lease lost: ${err.message}`)),
        );
        await this.#holdOrWait(lease, lost);
        backoff = 200;
      } catch (err) {
        if (this.#leadership) await this.#resign(`campaign failed: ${(err as Error).message}`);
        if (!this.#running) break;
        this.#logger?.warn({ err, retryInMs: backoff }, 'campaign failed; retrying');
        await this.#sleep(backoff * (0.5 + Math.random() / 2));
        backoff = Math.min(5000, backoff * 2);
      }
    }
    await this.#resign('stopped');
  }

  /** Campaign on one lease until it is lost or the election stops. */
  async #holdOrWait(lease: EtcdLease, lost: Promise<string>): Promise<void> {
    try {
      while (this.#running && !lease.lost) {
        const won = await createIfAbsent(this.#options.client, this.key, this.candidateId, lease.id);
        const current = await getVersioned<string>(this.#options.client, this.key, rawCodec);
        if (!current) continue; // deleted between our attempt and the read: try again
        if (won) {
          this.#leadership = { value: current.value, createRevision: current.createRevision };
          this.#logger?.info('elected leader');
          await this.#options.onElected?.();
        }
        // Leader: hold until the lease is lost or the key goes. Standby: wait for the key to go.
        const reason = await Promise.race([lost, this.#waitForKeyChange(current.modRevision)]);
        this.#stream?.cancel();
        if (this.#leadership) {
          await this.#resign(reason, lease);
          return;
        }
      }
    } finally {
      // A standby's lease holds nothing: give it back rather than let it linger for a TTL.
      if (!this.#leadership) await lease.revoke();
    }
  }

  /** Resolves with a reason once the key is deleted or rewritten after `modRevision`. */
  async #waitForKeyChange(modRevision: number): Promise<string> {
    const key = Buffer.from(this.key);
    let reason = 'stopped';
    const stream = await openWatchStream(
      this.#options.client,
      { key, startRevision: modRevision + 1, prevKv: false },
      (res) => {
        for (const event of res.events) {
          reason = event.type === 'Delete' ? 'election key deleted' : 'election key rewritten';
          this.#stream?.cancel();
          return;
        }
      },
    );
    this.#stream = stream;
    if (!this.#running) stream.cancel();
    try {
      await stream.done;
    } catch (err) {
      reason = `watch of election key failed: ${(err as Error).message}`;
    }
    return reason;
  }

  async #resign(reason: string, lease: EtcdLease | undefined = this.#lease): Promise<void> {
    const wasLeader = this.#leadership !== undefined;
    this.#leadership = undefined;
    this.#stream?.cancel();
    if (lease) {
      // Revoking deletes our key at once, so a standby need not wait out the TTL.
      await lease.revoke();
      if (this.#lease === lease) this.#lease = undefined;
    }
    if (wasLeader) {
      if (this.#running) {
        this.#recampaignAt =
          Date.now() + (this.#options.recampaignDelayMs ?? ((this.#options.ttlSeconds ?? 10) * 1000) / 2);
      }
      this.#logger?.info({ reason }, 'no longer leader');
      await this.#options.onDeposed?.(reason);
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.#wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
}
