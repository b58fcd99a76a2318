export {
  type Compare,
  compareHolds,
  type KeyValue,
  type KvBackend,
  prefixRangeEnd,
  type RangeOptions,
  type TxnResult,
  type Write,
} from './backend.ts';
export { Etcd3Backend } from './etcd3-backend.ts';
export { MemoryBackend } from './memory-backend.ts';
export {
  DELETE,
  type Plan,
  type RetryOptions,
  retryOnConflict,
  transact,
  UNCHANGED,
  type UpdateResult,
} from './retry.ts';
export { type Fence, type Op, Store, type Stored, type StoreOptions } from './store.ts';
