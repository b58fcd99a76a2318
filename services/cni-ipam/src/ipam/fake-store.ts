/**
 * FakeIpStore: an in-memory IpStore with etcd's revision semantics, for the allocator's unit
 * tests only (the real store is etcd: see the integration tests).
 */
import type { Compare, IpStore, KeyValue, Write } from './store.ts';

export class FakeIpStore implements IpStore {
  readonly data = new Map<string, KeyValue>();
  revision = 0;
  /** Transactions attempted, for tests that count conflicts. */
  txns = 0;

  async get(key: string): Promise<KeyValue | undefined> {
    const kv = this.data.get(key);
    return kv ? { ...kv } : undefined;
  }

  async range(prefix: string, options: { keysOnly?: boolean } = {}): Promise<KeyValue[]> {
    return [...this.data.values()]
      .filter((kv) => kv.key.startsWith(prefix))
      .sort((a, b) => (a.key < b.key ? -1 : 1))
      .map((kv) => ({ ...kv, value: options.keysOnly ? '' : kv.value }));
  }

  async txn(compares: Compare[], writes: Write[]): Promise<boolean> {
    this.txns++;
    for (const c of compares) {
      const kv = this.data.get(c.key);
      if ('absent' in c ? kv !== undefined : (kv?.modRevision ?? 0) !== c.modRevision) return false;
    }
    this.revision++;
    for (const w of writes) {
      if ('put' in w) {
        const prev = this.data.get(w.put);
        this.data.set(w.put, {
          key: w.put,
          value: w.value,
          modRevision: this.revision,
          createRevision: prev?.createRevision ?? this.revision,
        });
      } else {
        this.data.delete(w.del);
      }
    }
    return true;
  }

  /** Writes a key directly (test set-up). */
  async put(key: string, value: string): Promise<void> {
    await this.txn([], [{ put: key, value }]);
  }
}
