/**
 * The compare/write vocabulary every Berth component speaks to etcd with, and the one interface
 * behind which a transport sits (Calico's `libcalico-go/lib/backend/api` is the model: every
 * component races through one backend). Three transports implement it: etcd3's gRPC client for
 * the services (./etcd3-backend.ts), etcd's JSON gateway over node:http for the CNI plugin, which
 * starts at every pod start (./gateway-backend.ts), and an in-memory map with etcd's revision
 * semantics for unit tests (./memory-backend.ts).
 */

/** One key as etcd holds it. Revisions are etcd's: 0 means "never written". */
export type KeyValue = { key: string; value: string; modRevision: number; createRevision: number };

/** What must hold for a transaction's writes to happen. */
export type Compare =
  /** The key is unchanged since it was read at this mod revision (0: it is absent). */
  | { key: string; modRevision: number }
  /** The key does not exist. */
  | { key: string; absent: true }
  /** The key exists with this create revision (a leader's seat: the fence). */
  | { key: string; createRevision: number };

export type Write =
  | { put: string; value: string; lease?: string | undefined }
  | { del: string }
  | { delPrefix: string };

export type TxnResult =
  | { succeeded: true; revision: number }
  /** `failedKeys`: the compared keys whose compare did not hold, read back in the same call. */
  | { succeeded: false; revision: number; failedKeys: string[] };

export type RangeOptions = { keysOnly?: boolean };

export interface KvBackend {
  get(key: string): Promise<KeyValue | undefined>;
  /** Every key with the prefix, in key order (values empty with keysOnly). */
  range(prefix: string, options?: RangeOptions): Promise<KeyValue[]>;
  /** All writes if every compare holds, else none. */
  txn(compares: readonly Compare[], writes: readonly Write[]): Promise<TxnResult>;
}

/** Whether a key's current state satisfies a compare. */
export function compareHolds(compare: Compare, current: KeyValue | undefined): boolean {
  if ('absent' in compare) return current === undefined;
  if ('createRevision' in compare) return (current?.createRevision ?? 0) === compare.createRevision;
  return (current?.modRevision ?? 0) === compare.modRevision;
}

/** The exclusive end of the range of every key with this prefix (etcd's `range_end`). */
export function prefixRangeEnd(prefix: string): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    const byte = end[i] as number;
    if (byte < 0xff) {
      end[i] = byte + 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}
