/**
 * The work queue of the reconcile loop (ingress-nginx's task queue, client-go's workqueue): watch
 * handlers only add keys; a key waiting is not added twice; a key being worked on and added again
 * runs once more afterwards; a failed key comes back after a backoff with jitter that grows per
 * key; a key is never worked on by two workers at once.
 */
import type { Logger } from '@berth/shared/logging';

export type QueueOptions = {
  concurrency: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  logger?: Logger;
  onError?: (key: string, err: unknown) => void;
};

export class WorkQueue {
  readonly #options: QueueOptions;
  readonly #pending: string[] = [];
  readonly #queued = new Set<string>();
  readonly #active = new Set<string>();
  readonly #dirty = new Set<string>();
  readonly #failures = new Map<string, number>();
  readonly #timers = new Map<string, NodeJS.Timeout>();
  #handler: ((key: string) => Promise<void>) | undefined;
  #running = 0;
  #stopped = true;
  #idleWaiters: (() => void)[] = [];

  constructor(options: QueueOptions) {
    this.#options = options;
  }

  start(handler: (key: string) => Promise<void>): void {
    this.#handler = handler;
    this.#stopped = false;
    this.#pump();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    for (const t of this.#timers.values()) clearTimeout(t);
    this.#timers.clear();
    this.#pending.length = 0;
    this.#queued.clear();
    while (this.#running > 0) await new Promise((r) => setTimeout(r, 10));
  }

  add(key: string): void {
    if (this.#stopped) return;
    if (this.#active.has(key)) {
      this.#dirty.add(key);
      return;
    }
    if (this.#queued.has(key)) return;
    this.#queued.add(key);
    this.#pending.push(key);
    this.#pump();
  }

  addAfter(key: string, delayMs: number): void {
    if (this.#stopped || this.#timers.has(key)) return;
    this.#timers.set(
      key,
      setTimeout(() => {
        this.#timers.delete(key);
        this.add(key);
      }, delayMs),
    );
  }

  get length(): number {
    return this.#pending.length + this.#active.size + this.#timers.size;
  }

  /** Resolves when nothing is queued, running or waiting to retry. */
  idle(): Promise<void> {
    if (this.length === 0) return Promise.resolve();
    return new Promise((r) => this.#idleWaiters.push(r));
  }

  #pump(): void {
    while (!this.#stopped && this.#running < this.#options.concurrency) {
      const index = this.#pending.findIndex((k) => !this.#active.has(k));
      if (index < 0) break;
      const [key] = this.#pending.splice(index, 1) as [string];
      this.#queued.delete(key);
      this.#active.add(key);
      this.#running++;
      void this.#work(key);
    }
    if (this.length === 0) {
      for (const w of this.#idleWaiters.splice(0)) w();
    }
  }

  async #work(key: string): Promise<void> {
    try {
      await this.#handler?.(key);
      this.#failures.delete(key);
    } catch (err) {
      const failures = (this.#failures.get(key) ?? 0) + 1;
      this.#failures.set(key, failures);
      const initial = this.#options.backoffInitialMs ?? 200;
      const max = this.#options.backoffMaxMs ?? 30_000;
      const delay = Math.min(max, initial * 2 ** Math.min(failures - 1, 12)) * (0.5 + Math.random() / 2);
      this.#options.logger?.warn({ err, key, failures, retryInMs: Math.round(delay) }, 'reconcile failed; will retry');
      this.#options.onError?.(key, err);
      this.addAfter(key, delay);
    } finally {
      this.#active.delete(key);
      this.#running--;
      if (this.#dirty.delete(key)) this.add(key);
      this.#pump();
    }
  }
}
