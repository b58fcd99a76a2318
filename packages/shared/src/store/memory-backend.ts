/**
 * An in-memory KvBackend with etcd's revision semantics (one global revision, bumped once per
 * successful transaction; mod and create revisions per key), for unit tests that need a store
 * and no server. Not a test double of a fault: it behaves as etcd does.
 */
import {
  type Compare,
  compareHolds,
  type KeyValue,
  type KvBackend,
  type RangeOptions,
  type TxnResult,
  type Write,
} from './backend.ts';

export class MemoryBackend implements KvBackend {
  readonly #data = new Map<string, KeyValue>();
  #revision = 1;
  /** Transactions attempted, for tests that count round trips. */
  txns = 0;
  /** Called before each transaction is evaluated: a test can race a write in here. */
  beforeTxn: ((backend: MemoryBackend) => void) | undefined;

  get revision(): number {
    return this.#revision;
  }

  async get(key: string): Promise<KeyValue | undefined> {
    const kv = this.#data.get(key);
    return kv ? { ...kv } : undefined;
  }

  async range(prefix: string, options: RangeOptions = {}): Promise<KeyValue[]> {
    return [...this.#data.values()]
      .filter((kv) => kv.key.startsWith(prefix))
      .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
      .map((kv) => (options.keysOnly ? { ...kv, value: '' } : { ...kv }));
  }

  async txn(compares: readonly Compare[], writes: readonly Write[]): Promise<TxnResult> {
    this.txns++;
    const hook = this.beforeTxn;
    this.beforeTxn = undefined;
    hook?.(this);
    const failedKeys = compares.filter((c) => !compareHolds(c, this.#data.get(c.key))).map((c) => c.key);
    if (failedKeys.length > 0) return { succeeded: false, revision: this.#revision, failedKeys };
    this.applyNow(writes);
    return { succeeded: true, revision: this.#revision };
  }

  /** Writes at once, as another client would: one new revision. */
  applyNow(writes: readonly Write[]): number {
    this.#revision++;
    for (const w of writes) {
      if ('put' in w) {
        const old = this.#data.get(w.put);
        this.#data.set(w.put, {
          key: w.put,
          value: w.value,
          modRevision: this.#revision,
          createRevision: old?.createRevision ?? this.#revision,
        });
      } else if ('del' in w) {
        this.#data.delete(w.del);
      } else {
        for (const key of [...this.#data.keys()]) if (key.startsWith(w.delPrefix)) this.#data.delete(key);
      }
    }
    return this.#revision;
  }
}
