/**
 * List-then-watch over a key prefix, level-triggered:
 *
 * 1. list the prefix (paged, every page pinned to the first page's revision, so the view is one
 *    consistent snapshot) and hand the whole view to `onSync`;
 * 2. watch from the listed revision + 1, applying each change to the view and to `onChange`;
 * 3. when the watch is cancelled because its revision was compacted, or the stream breaks (etcd
 *    restarted, connection lost), list again and emit the difference from the last view as
 *    ordinary changes, so a consumer that missed events still converges.
 *
 * While etcd cannot be reached the last view stays readable and `stale` is true: consumers keep
 * serving what they last knew (gorouter lost routes by doing otherwise).
 *
 * The watch uses etcd's gRPC Watch stream directly, one stream per watcher, rather than etcd3's
 * multiplexing Watcher: its attach queue stalls for good when etcd cancels a watch at creation
 * (which is exactly what a compacted start revision does), and every later watch on that client
 * would hang.
 */
import type { Etcd3, IDuplexStream, IWatchRequest, IWatchResponse } from 'etcd3';
import { CompactedError, UnavailableError } from '../errors/index.ts';
import { deferred } from '../lifecycle/deferred.ts';
import type { Logger } from '../logging/index.ts';
import { prefixRangeEnd } from '../store/backend.ts';
import { type Codec, jsonCodec, type Versioned } from './cas.ts';

export type WatchChange<T> =
  | { type: 'put'; key: string; value: T; modRevision: number; prev: Versioned<T> | undefined }
  | { type: 'delete'; key: string; modRevision: number; prev: Versioned<T> | undefined };

export type WatcherState = 'starting' | 'synced' | 'stale' | 'stopped';

export type PrefixWatcherOptions<T> = {
  client: Etcd3;
  prefix: string;
  codec?: Codec<T>;
  logger?: Logger;
  /** Every change, in revision order; after a re-list, each difference from the last view. */
  onChange?: (change: WatchChange<T>) => void;
  /** After every (re)list, with the whole view and its revision. */
  onSync?: (view: ReadonlyMap<string, Versioned<T>>, revision: number) => void;
  onStateChange?: (state: WatcherState) => void;
  /** A value that does not decode is left out of the view and reported here. */
  onDecodeError?: (key: string, err: unknown) => void;
  /** Keys per list page. Default 1000. */
  pageSize?: number;
  /** Backoff between attempts while etcd is unreachable. */
  retryInitialMs?: number;
  retryMaxMs?: number;
};

export type WatchStreamHandle = {
  /** Resolves when the stream ends by cancel(); rejects on compaction or stream failure. */
  done: Promise<void>;
  cancel(): void;
};

/**
 * One raw watch stream over [key, rangeEnd) from startRevision. `onResponse` gets every
 * response with events (or progress notifications); `onCreated` once etcd accepted the watch.
 */
export async function openWatchStream(
  client: Etcd3,
  request: { key: Buffer; rangeEnd?: Buffer; startRevision: number; prevKv?: boolean },
  onResponse: (res: IWatchResponse) => void,
  onCreated?: () => void,
): Promise<WatchStreamHandle> {
  const stream: IDuplexStream<IWatchRequest, IWatchResponse> = await client.watchClient.watch();
  let cancelled = false;
  // etcd3 marks the host failed on any error of a still-writable watch stream, and our own
  // cancel() surfaces as a CANCELLED error, which it counts as recoverable: it would close every
  // channel of the client (KV, Lease, Watch) each time a watch is stopped, failing calls queued
  // on them with UNAVAILABLE. Half-closing first makes the stream unwritable, so a cancel stays
  // a cancel.
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    stream.end();
    stream.cancel();
  };
  const done = new Promise<void>((resolve, reject) => {
    stream.on('data', (res) => {
      if (res.canceled) {
        const compacted = Number(res.compact_revision);
        if (compacted > 0) reject(new CompactedError(compacted));
        else if (cancelled) resolve();
        else reject(new UnavailableError(`etcd cancelled the watch: ${res.cancel_reason || 'no reason given'}`));
        close();
        return;
      }
      if (res.created) {
        onCreated?.();
        if (res.events.length === 0) return;
      }
      try {
        onResponse(res);
      } catch (err) {
        reject(err);
        close();
      }
    });
    stream.on('error', (err) => (cancelled ? resolve() : reject(err)));
    stream.on('end', () => (cancelled ? resolve() : reject(new UnavailableError('etcd watch stream ended'))));
  });
  stream.write({
    create_request: {
      key: request.key,
      ...(request.rangeEnd ? { range_end: request.rangeEnd } : {}),
      start_revision: request.startRevision,
      prev_kv: request.prevKv ?? true,
      progress_notify: true,
    },
  });
  return {
    done,
    cancel: () => {
      cancelled = true;
      close();
    },
  };
}

export class PrefixWatcher<T> {
  readonly prefix: string;
  readonly #client: Etcd3;
  readonly #codec: Codec<T>;
  readonly #options: PrefixWatcherOptions<T>;
  readonly #logger: Logger | undefined;
  #view = new Map<string, Versioned<T>>();
  /** The etcd revision the view reflects. 0 before the first list. */
  #revision = 0;
  #state: WatcherState = 'stopped';
  #running = false;
  #stream: WatchStreamHandle | undefined;
  #loop: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  #firstSync: { promise: Promise<void>; resolve: () => void };
  #relists = 0;

  constructor(options: PrefixWatcherOptions<T>) {
    this.prefix = options.prefix;
    this.#client = options.client;
    this.#codec = options.codec ?? jsonCodec<T>();
    this.#options = options;
    this.#logger = options.logger?.child({ component: 'prefix-watcher', prefix: options.prefix });
    this.#firstSync = deferred();
  }

  get state(): WatcherState {
    return this.#state;
  }
  /** True while etcd cannot be reached: the view is the last one known. */
  get stale(): boolean {
    return this.#state === 'stale';
  }
  get revision(): number {
    return this.#revision;
  }
  /** How many times the prefix was listed (first list included). */
  get listCount(): number {
    return this.#relists;
  }
  get view(): ReadonlyMap<string, Versioned<T>> {
    return this.#view;
  }
  get(key: string): Versioned<T> | undefined {
    return this.#view.get(key);
  }

  /**
   * Starts (or resumes) the watcher. A fresh watcher lists first; a resumed one watches from the
   * revision it reached before stop(), and lists again only if that revision was compacted.
   * Resolves once the view is synced with etcd.
   */
  start(): Promise<void> {
    if (this.#running) return this.#firstSync.promise;
    this.#running = true;
    this.#firstSync = deferred();
    this.#setState('starting');
    this.#loop = this.#run();
    return this.#firstSync.promise;
  }

  /** Stops watching; the view and revision stay, so start() can resume. Safe to call twice. */
  async stop(): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    this.#stream?.cancel();
    this.#wake?.();
    await this.#loop;
    this.#setState('stopped');
  }

  async #run(): Promise<void> {
    let needList = this.#revision === 0;
    let backoff = this.#options.retryInitialMs ?? 200;
    const maxBackoff = this.#options.retryMaxMs ?? 5000;
    while (this.#running) {
      try {
        // Resuming from a revision etcd may have compacted: ask first (a range at that revision
        // fails if so), because a watch would be created and only cancelled some time later.
        if (!needList && (await this.#compactedSince(this.#revision))) needList = true;
        if (needList) {
          await this.#list();
          needList = false;
        }
        await this.#watch();
        return; // cancelled by stop()
      } catch (err) {
        if (!this.#running) return;
        needList = true;
        if (err instanceof CompactedError) {
          this.#logger?.info({ compactRevision: err.compactRevision }, 'watch revision compacted; listing again');
          continue;
        }
        this.#setState('stale');
        this.#logger?.warn({ err, retryInMs: backoff }, 'etcd watch failed; serving the last view and listing again');
        await this.#sleep(backoff * (0.5 + Math.random() / 2));
        backoff = Math.min(maxBackoff, backoff * 2);
      }
    }
  }

  async #compactedSince(revision: number): Promise<boolean> {
    try {
      await this.#client.kv.range({ key: Buffer.from(this.prefix), revision, limit: 1, count_only: true });
      return false;
    } catch (err) {
      if (err instanceof Error && /compacted/i.test(err.message)) return true;
      throw err;
    }
  }

  async #list(): Promise<void> {
    const pageSize = this.#options.pageSize ?? 1000;
    const rangeEnd = prefixRangeEnd(this.prefix);
    const next = new Map<string, Versioned<T>>();
    let start = Buffer.from(this.prefix);
    let revision = 0;
    for (;;) {
      const res = await this.#client.kv.range({
        key: start,
        range_end: rangeEnd,
        limit: pageSize,
        ...(revision ? { revision } : {}),
      });
      if (!revision) revision = Number(res.header.revision);
      for (const kv of res.kvs) {
        const key = kv.key.toString();
        const decoded = this.#decode(key, kv.value);
        if (decoded === undefined) continue;
        next.set(key, {
          value: decoded.value,
          modRevision: Number(kv.mod_revision),
          createRevision: Number(kv.create_revision),
        });
      }
      const last = res.kvs[res.kvs.length - 1];
      if (!res.more || !last) break;
      start = Buffer.concat([last.key, Buffer.from([0])]);
    }
    this.#relists++;
    const previous = this.#view;
    this.#view = next;
    this.#revision = revision;
    // Differences from the last view are delivered as changes: consumers are level-triggered.
    for (const [key, entry] of next) {
      const prev = previous.get(key);
      if (!prev || prev.modRevision !== entry.modRevision) {
        this.#emit({ type: 'put', key, value: entry.value, modRevision: entry.modRevision, prev });
      }
    }
    for (const [key, prev] of previous) {
      if (!next.has(key)) this.#emit({ type: 'delete', key, modRevision: revision, prev });
    }
    this.#options.onSync?.(this.#view, revision);
  }

  async #watch(): Promise<void> {
    const stream = await openWatchStream(
      this.#client,
      { key: Buffer.from(this.prefix), rangeEnd: prefixRangeEnd(this.prefix), startRevision: this.#revision + 1 },
      (res) => this.#applyResponse(res),
      () => {
        this.#setState('synced');
        this.#firstSync.resolve();
      },
    );
    this.#stream = stream;
    if (!this.#running) stream.cancel();
    await stream.done;
  }

  #applyResponse(res: IWatchResponse): void {
    for (const event of res.events) {
      const key = event.kv.key.toString();
      const modRevision = Number(event.kv.mod_revision);
      const prev = this.#view.get(key);
      if (event.type === 'Delete') {
        this.#view.delete(key);
        this.#emit({ type: 'delete', key, modRevision, prev });
      } else {
        const decoded = this.#decode(key, event.kv.value);
        if (decoded === undefined) {
          if (this.#view.delete(key)) this.#emit({ type: 'delete', key, modRevision, prev });
        } else {
          const entry = { value: decoded.value, modRevision, createRevision: Number(event.kv.create_revision) };
          this.#view.set(key, entry);
          this.#emit({ type: 'put', key, value: entry.value, modRevision, prev });
        }
      }
      if (modRevision > this.#revision) this.#revision = modRevision;
    }
    const headerRevision = Number(res.header.revision);
    if (res.events.length === 0 && headerRevision > this.#revision) this.#revision = headerRevision;
  }

  #decode(key: string, raw: Buffer): { value: T } | undefined {
    try {
      return { value: this.#codec.decode(raw.toString(), key) };
    } catch (err) {
      this.#logger?.warn({ key, err }, 'value in etcd does not decode; left out of the view');
      this.#options.onDecodeError?.(key, err);
      return undefined;
    }
  }

  #emit(change: WatchChange<T>): void {
    if (!this.#options.onChange) return;
    try {
      this.#options.onChange(change);
    } catch (err) {
      this.#logger?.error({ err, key: change.key }, 'watch change handler threw');
    }
  }

  #setState(state: WatcherState): void {
    if (this.#state === state) return;
    this.#state = state;
    this.#options.onStateChange?.(state);
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
