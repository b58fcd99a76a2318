/**
 * One informer wrapper for every Kubernetes list-watch Berth runs (scheduler, discovery, cnictl).
 * It wraps client-node's ListWatch (what makeInformer returns) and covers what that class leaves
 * to its users (client-node issues #301, #364, #447, #596, #958, #1933):
 *
 * - a watch that ends with an error stops the ListWatch for good: we restart it after a backoff
 *   with jitter, with a guard so restarts never overlap;
 * - a watch can stall silently (a half-open connection): watches ask for bookmarks, and when
 *   nothing at all (event, bookmark, reconnect) arrives for `stallMs`, the watch is restarted;
 * - a failed connection attempt must not become an unhandled rejection: the watch function given
 *   to ListWatch never throws, it reports through `done`;
 * - reconnect storms after an API server restart: restarts of every informer of the process go
 *   through one token bucket (`maxRestartsPerSecond`);
 * - a source that blinks must not erase what we knew: the cache is kept while disconnected and
 *   `stale` says so; 410 Gone (compacted) makes ListWatch list again, and deletions seen in that
 *   list are delivered as deletes.
 */
import {
  type KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
  ListWatch,
  Watch,
} from '@kubernetes/client-node';
import { deferred } from '../lifecycle/deferred.ts';
import type { Logger } from '../logging/index.ts';

export type InformerEvent = 'add' | 'update' | 'delete';

export type InformerOptions<T extends KubernetesObject> = {
  /** For logs and metrics, e.g. `cell-a/pods`. */
  name: string;
  kubeConfig: KubeConfig;
  /** API path of the watch, e.g. `/api/v1/pods` or `/apis/apps/v1/deployments`. */
  path: string;
  /** Lists with the selectors given (the same the watch uses, so list and watch agree). */
  list: (selectors: { labelSelector?: string; fieldSelector?: string }) => Promise<KubernetesListObject<T>>;
  labelSelector?: string;
  fieldSelector?: string;
  logger?: Logger;
  onEvent?: (event: InformerEvent, obj: T) => void;
  /** Called whenever `stale` changes. */
  onStaleChange?: (stale: boolean) => void;
  /**
   * Restart the watch when nothing arrived for this long. Default 300 s. Bookmarks are asked for,
   * but an API server sends them only as its watch cache progresses, so a quiet resource can be
   * silent for minutes: a restart then is a cheap re-watch from the last resource version.
   */
  stallMs?: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
};

/** Restarts across all informers of the process, per second. */
let maxRestartsPerSecond = 20;
let tokens = maxRestartsPerSecond;
let lastRefill = Date.now();

export function setInformerRestartRate(perSecond: number): void {
  maxRestartsPerSecond = perSecond;
  tokens = Math.min(tokens, perSecond);
}

async function takeRestartToken(): Promise<void> {
  for (;;) {
    const now = Date.now();
    tokens = Math.min(maxRestartsPerSecond, tokens + ((now - lastRefill) / 1000) * maxRestartsPerSecond);
    lastRefill = now;
    if (tokens >= 1) {
      tokens -= 1;
      return;
    }
    await new Promise((r) => setTimeout(r, Math.ceil(((1 - tokens) / maxRestartsPerSecond) * 1000)));
  }
}

type WatchCallback = (phase: string, apiObj: unknown, watchObj?: unknown) => void;
type DoneCallback = (err: unknown) => void;

export class ResilientInformer<T extends KubernetesObject> {
  readonly name: string;
  readonly #options: InformerOptions<T>;
  readonly #logger: Logger | undefined;
  readonly #lw: ListWatch<T>;
  #running = false;
  #synced = false;
  #stale = false;
  #restartPending = false;
  #failures = 0;
  #lastActivity = Date.now();
  #stallTimer: NodeJS.Timeout | undefined;
  #restartTimer: NodeJS.Timeout | undefined;
  #restarts = 0;
  #firstSync: { promise: Promise<void>; resolve: () => void };

  constructor(options: InformerOptions<T>) {
    this.name = options.name;
    this.#options = options;
    this.#logger = options.logger?.child({ component: 'informer', informer: options.name });
    const inner = new Watch(options.kubeConfig);
    // ListWatch awaits this inside a callback nobody awaits: it must never throw.
    const safeWatch = {
      watch: async (path: string, params: Record<string, unknown>, cb: WatchCallback, done: DoneCallback) => {
        const onActivity: WatchCallback = (phase, obj, watchObj) => {
          this.#touch(true);
          return cb(phase, obj, watchObj);
        };
        // Watch.watch reports a failed connection through `done` and returns anyway: only a
        // watch that returned without calling done(err) is connected.
        let failed = false;
        const onDone: DoneCallback = (err) => {
          if (err) failed = true;
          done(err);
        };
        try {
          const controller = await inner.watch(path, { ...params, allowWatchBookmarks: true }, onActivity, onDone);
          if (!failed) this.#touch(true);
          return controller;
        } catch (err) {
          setImmediate(() => done(err));
          return { abort: () => undefined };
        }
      },
    } as unknown as Watch;
    this.#lw = new ListWatch<T>(
      options.path,
      safeWatch,
      async () => {
        const list = await options.list({
          ...(options.labelSelector ? { labelSelector: options.labelSelector } : {}),
          ...(options.fieldSelector ? { fieldSelector: options.fieldSelector } : {}),
        });
        this.#touch(true);
        return list;
      },
      false,
      options.labelSelector,
      options.fieldSelector,
    );
    this.#lw.on('add', (obj) => options.onEvent?.('add', obj));
    this.#lw.on('update', (obj) => options.onEvent?.('update', obj));
    this.#lw.on('delete', (obj) => options.onEvent?.('delete', obj));
    // A (re)connect attempt is not data: it only resets the stall clock.
    this.#lw.on('connect', () => this.#touch(false));
    this.#lw.on('error', (err) => this.#onError(err));
    this.#firstSync = deferred();
  }

  /** True while the watch is broken and being restarted: the cache is the last known state. */
  get stale(): boolean {
    return this.#stale;
  }
  /** True once the first list has been received. */
  get synced(): boolean {
    return this.#synced;
  }
  /** How many times the watch was restarted after an error or a stall. */
  get restarts(): number {
    return this.#restarts;
  }

  list(namespace?: string): readonly T[] {
    return this.#lw.list(namespace);
  }

  get(name: string, namespace?: string): T | undefined {
    return this.#lw.get(name, namespace);
  }

  /** Starts list-watch; resolves after the first list arrived (retrying until it does). */
  start(): Promise<void> {
    if (this.#running) return this.#firstSync.promise;
    this.#running = true;
    const stallMs = this.#options.stallMs ?? 300_000;
    this.#stallTimer = setInterval(() => this.#checkStall(stallMs), Math.max(250, Math.min(10_000, stallMs / 4)));
    this.#stallTimer.unref();
    void this.#startOnce();
    return this.#firstSync.promise;
  }

  async stop(): Promise<void> {
    this.#running = false;
    clearInterval(this.#stallTimer);
    clearTimeout(this.#restartTimer);
    await this.#lw.stop();
  }

  /** Forces a restart of the watch (as after a stall). */
  restart(reason: string): void {
    this.#scheduleRestart(reason, 0);
  }

  async #startOnce(): Promise<void> {
    try {
      // Resolves once the watch request is made: synced is marked when it is connected (above);
      // a failed list or watch fires 'error' instead.
      await this.#lw.start();
    } catch (err) {
      this.#onError(err);
    }
  }

  #markSynced(): void {
    this.#failures = 0;
    if (!this.#synced) {
      this.#synced = true;
      this.#firstSync.resolve();
    }
    this.#setStale(false);
  }

  /**
   * Something arrived; `fromServer` when the server answered with data or a connected watch (a
   * list alone is not enough: the watch after it can still fail).
   */
  #touch(fromServer: boolean): void {
    this.#lastActivity = Date.now();
    if (fromServer && this.#running && this.#lw.latestResourceVersion()) this.#markSynced();
  }

  #onError(err: unknown): void {
    // Our own restarts abort the old watch request; that is not a failure.
    if (!this.#running || (err instanceof Error && err.name === 'AbortError')) return;
    this.#setStale(true);
    this.#failures++;
    const initial = this.#options.backoffInitialMs ?? 500;
    const max = this.#options.backoffMaxMs ?? 30_000;
    const delay = Math.min(max, initial * 2 ** Math.min(this.#failures - 1, 10)) * (0.5 + Math.random() / 2);
    this.#logger?.warn({ err, retryInMs: Math.round(delay) }, 'watch failed; keeping the last known state');
    this.#scheduleRestart('error', delay);
  }

  #checkStall(stallMs: number): void {
    if (!this.#running || this.#restartPending) return;
    if (Date.now() - this.#lastActivity > stallMs) {
      this.#logger?.info({ silentForMs: Date.now() - this.#lastActivity }, 'watch silent for too long; restarting it');
      this.#setStale(true);
      this.#scheduleRestart('stall', 0);
    }
  }

  #scheduleRestart(reason: string, delayMs: number): void {
    if (this.#restartPending || !this.#running) return;
    this.#restartPending = true;
    this.#restartTimer = setTimeout(async () => {
      try {
        await takeRestartToken();
        if (!this.#running) return;
        this.#restarts++;
        this.#logger?.info({ reason, restarts: this.#restarts }, 'restarting watch');
        await this.#lw.stop();
        this.#lastActivity = Date.now();
      } finally {
        this.#restartPending = false;
      }
      await this.#startOnce();
    }, delayMs);
  }

  #setStale(stale: boolean): void {
    if (this.#stale === stale) return;
    this.#stale = stale;
    this.#options.onStaleChange?.(stale);
  }
}
