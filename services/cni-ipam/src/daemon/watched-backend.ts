/**
 * The resident allocator's view of one cell's IPAM keys: a KvBackend that answers reads under the
 * cell's prefix from a watched copy and sends every transaction to etcd. The allocator runs on it
 * unchanged, so an ADD costs one transaction and no read.
 *
 * The copy is never trusted for a write: every allocation still compares the block's mod revision
 * and creates the address and handle only if absent, in one transaction. A copy that lags (another
 * node's claim or a direct plugin's write not yet seen) only makes a compare fail; the keys that
 * failed are read again from etcd before the allocator retries, so the retry sees what won.
 *
 * Changes are applied by revision, whatever their source: the watch (list, then watch from that
 * revision, listing again after compaction or a lost stream: ../../../../packages/shared's
 * PrefixWatcher), the daemon's own committed writes (at the revision etcd gave them), and keys read
 * again after a failed compare. A change older than what the copy holds for a key is dropped;
 * deletions stay as tombstones until the watch has passed their revision.
 */
import { type Etcd3, PrefixWatcher, type WatchChange } from '@berth/shared/etcd';
import type { Logger } from '@berth/shared/logging';
import type { Compare, KeyValue, KvBackend, RangeOptions, TxnResult, Write } from '@berth/shared/store';
import { Etcd3Backend } from '@berth/shared/store';

type Entry = { kv: KeyValue | undefined; revision: number };

const RAW = { encode: (s: string) => s, decode: (s: string) => s };

export type WatchedBackendOptions = {
  etcd: Etcd3;
  /** The cell's IPAM prefix (`keys.ipam(cell)`): every key the allocator reads or writes. */
  prefix: string;
  logger?: Logger | undefined;
};

export class WatchedBackend implements KvBackend {
  readonly prefix: string;
  readonly #etcd: Etcd3Backend;
  readonly #watcher: PrefixWatcher<string>;
  readonly #entries = new Map<string, Entry>();
  #tombstones = 0;

  constructor(options: WatchedBackendOptions) {
    this.prefix = options.prefix;
    this.#etcd = new Etcd3Backend(options.etcd);
    this.#watcher = new PrefixWatcher<string>({
      client: options.etcd,
      prefix: options.prefix,
      codec: RAW,
      logger: options.logger,
      onChange: (change) => this.#onWatch(change),
      onSync: (view, revision) => this.#onList(view, revision),
    });
  }

  /** Resolves once the copy is synced with etcd. */
  start(): Promise<void> {
    return this.#watcher.start();
  }

  stop(): Promise<void> {
    return this.#watcher.stop();
  }

  /** Synced with etcd: reads come from the copy. Before the first list, or while etcd is away, from etcd. */
  get synced(): boolean {
    return this.#watcher.state === 'synced';
  }

  /** How many keys of the copy start with `prefix` (cnictl stats shows the blocks). */
  count(prefix: string): number {
    let n = 0;
    for (const [key, e] of this.#entries) if (e.kv && key.startsWith(prefix)) n++;
    return n;
  }

  async get(key: string): Promise<KeyValue | undefined> {
    if (!this.synced || !key.startsWith(this.prefix)) return this.#etcd.get(key);
    return this.#entries.get(key)?.kv;
  }

  async range(prefix: string, options: RangeOptions = {}): Promise<KeyValue[]> {
    if (!this.synced || !prefix.startsWith(this.prefix)) return this.#etcd.range(prefix, options);
    const out: KeyValue[] = [];
    for (const [key, e] of this.#entries) {
      if (e.kv && key.startsWith(prefix)) out.push(options.keysOnly ? { ...e.kv, value: '' } : e.kv);
    }
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async txn(compares: readonly Compare[], writes: readonly Write[]): Promise<TxnResult> {
    const result = await this.#etcd.txn(compares, writes);
    if (result.succeeded) {
      for (const w of writes) {
        if ('put' in w) {
          const createRevision = this.#entries.get(w.put)?.kv?.createRevision || result.revision;
          this.#apply(
            w.put,
            { key: w.put, value: w.value, modRevision: result.revision, createRevision },
            result.revision,
          );
        } else if ('del' in w) {
          this.#apply(w.del, undefined, result.revision);
        } else {
          for (const key of this.#entries.keys())
            if (key.startsWith(w.delPrefix)) this.#apply(key, undefined, result.revision);
        }
      }
    } else {
      // The copy lagged for these keys: read them again, so the retry sees what won.
      await Promise.all(
        result.failedKeys.map(async (key) => {
          const kv = await this.#etcd.get(key);
          this.#apply(key, kv, kv?.modRevision ?? result.revision);
        }),
      );
    }
    this.#pruneTombstones();
    return result;
  }

  #onWatch(change: WatchChange<string>): void {
    const kv =
      change.type === 'put'
        ? {
            key: change.key,
            value: change.value,
            modRevision: change.modRevision,
            createRevision: change.prev?.createRevision ?? change.modRevision,
          }
        : undefined;
    this.#apply(change.key, kv, change.modRevision);
  }

  /**
   * After a (re)list at `revision`: a key the copy holds from before that revision and the list
   * does not have was deleted meanwhile (the watcher reports only what its own view lost).
   */
  #onList(view: ReadonlyMap<string, unknown>, revision: number): void {
    for (const [key, e] of this.#entries) {
      if (e.kv && e.revision <= revision && !view.has(key)) this.#apply(key, undefined, revision);
    }
  }

  /** Keeps the newer of what the copy holds and what arrives. */
  #apply(key: string, kv: KeyValue | undefined, revision: number): void {
    const current = this.#entries.get(key);
    if (current && current.revision > revision) return;
    const wasTombstone = current !== undefined && current.kv === undefined;
    if (!kv && !wasTombstone) this.#tombstones++;
    if (kv && wasTombstone) this.#tombstones--;
    this.#entries.set(key, { kv, revision });
  }

  /** Tombstones the watch has passed can go: no older change of theirs can arrive any more. */
  #pruneTombstones(): void {
    if (this.#tombstones < 1024) return;
    const seen = this.#watcher.revision;
    for (const [key, e] of this.#entries) {
      if (!e.kv && e.revision <= seen) {
        this.#entries.delete(key);
        this.#tombstones--;
      }
    }
  }
}
