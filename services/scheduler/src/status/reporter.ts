/**
 * Status rows and availability, written in batches across apps: reconciles hand their changed rows
 * here, and the reporter writes the latest value of each key, every few milliseconds, in as few
 * fenced transactions as etcd allows. A rollout changes a row at every step of every Deployment;
 * written one transaction per app and step, those were most of the scheduler's etcd writes. A
 * quarter of a second is late enough to gather a rollout's steps and early enough for a status page.
 *
 * The events a row announces (available, degraded) ride the transaction that writes it and are
 * published after it commits. A batch that fails (etcd away) is kept and written again; a deposed
 * leader's batch is dropped (its successor writes its own).
 */
import { NotLeaderError } from '@berth/shared/errors';
import type { BerthEvent, EventInput } from '@berth/shared/events';
import type { Logger } from '@berth/shared/logging';
import type { Op, Store } from '@berth/shared/store';
import type { EventRecorder } from '../activity/recorder.ts';

export type StatusReporterOptions = {
  store: Store;
  events: EventRecorder;
  logger: Logger;
  /** Operations etcd accepts in one transaction (one is the fence). */
  maxTxnOps?: number;
  /** How long rows gather before they are written. Default 250 ms. */
  flushDelayMs?: number;
};

type Pending = { op: Op; events: EventInput[] };

export class StatusReporter {
  readonly #o: StatusReporterOptions;
  /** key → the latest write of it (a newer row replaces an older one not written yet). */
  #pending = new Map<string, Pending>();
  #timer: NodeJS.Timeout | undefined;
  #flushing: Promise<void> | undefined;
  #failures = 0;
  #stopped = false;
  #idleWaiters: (() => void)[] = [];

  constructor(options: StatusReporterOptions) {
    this.#o = options;
  }

  /** Puts a row (and the events it announces) into the next batch. */
  put(key: string, value: unknown, events: EventInput[] = []): void {
    const before = this.#pending.get(key);
    // Events of a replaced row that was never written are kept: they announced a change that happened.
    this.#pending.set(key, { op: { op: 'put', key, value }, events: [...(before?.events ?? []), ...events] });
    this.#schedule();
  }

  delete(key: string): void {
    this.#pending.set(key, { op: { op: 'delete', key }, events: [] });
    this.#schedule();
  }

  /**
   * What waits to be written for `key`: the row, `null` for a delete, undefined when nothing waits
   * (then the stored copy is the latest). A reconcile compares with this before its stored copy.
   */
  pending(key: string): unknown {
    const p = this.#pending.get(key);
    if (!p) return undefined;
    return p.op.op === 'put' ? p.op.value : null;
  }

  /** Drops what waits under a prefix (an app or version being removed: nothing may write it back). */
  forget(prefix: string): void {
    for (const key of [...this.#pending.keys()]) if (key.startsWith(prefix)) this.#pending.delete(key);
  }

  start(): void {
    this.#stopped = false;
  }

  /** Drops what waits: a new leader writes its own. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#flushing;
    this.#pending.clear();
    this.#wake();
  }

  /** Resolves when every row handed in so far is written (tests, benchmarks). */
  idle(): Promise<void> {
    if (this.#pending.size === 0 && !this.#flushing) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  #schedule(delayMs = this.#o.flushDelayMs ?? 250): void {
    if (this.#stopped || this.#timer || this.#flushing) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#flushing = this.#flush().finally(() => {
        this.#flushing = undefined;
        if (this.#pending.size > 0) this.#schedule(this.#failures > 0 ? Math.min(5000, 200 * 2 ** this.#failures) : 0);
        else this.#wake();
      });
    }, delayMs);
  }

  async #flush(): Promise<void> {
    const batch = this.#pending;
    this.#pending = new Map();
    const limit = Math.max(2, (this.#o.maxTxnOps ?? 128) - 1);
    const entries = [...batch.entries()];
    let i = 0;
    while (i < entries.length) {
      const ops: Op[] = [];
      const published: BerthEvent[] = [];
      const taken: [string, Pending][] = [];
      while (i < entries.length) {
        const [key, p] = entries[i] as [string, Pending];
        const recorded = p.events.map((e) => this.#o.events.record(e));
        if (ops.length > 0 && ops.length + 1 + recorded.length > limit) break;
        ops.push(p.op, ...recorded.map((r) => r.op));
        published.push(...recorded.map((r) => r.event));
        taken.push([key, p]);
        i++;
      }
      try {
        await this.#o.store.commit(ops);
        this.#failures = 0;
        this.#o.events.flush(published);
      } catch (err) {
        if (err instanceof NotLeaderError) {
          this.#pending.clear();
          return;
        }
        // Kept for the next batch, unless a newer row of the same key came in meanwhile.
        this.#failures++;
        for (const [key, p] of [...taken, ...entries.slice(i)]) if (!this.#pending.has(key)) this.#pending.set(key, p);
        this.#o.logger.warn(
          { err: (err as Error).message, rows: ops.length },
          'status rows not written yet; will retry',
        );
        return;
      }
    }
  }

  #wake(): void {
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const w of waiters) w();
  }
}
