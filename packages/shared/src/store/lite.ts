/** The store without the etcd3 client: what the CNI plugin bundles (no gRPC at every pod start). */
export {
  type Compare,
  compareHolds,
  type KeyValue,
  type KvBackend,
  prefixRangeEnd,
  type TxnResult,
  type Write,
} from './backend.ts';
export { GatewayBackend } from './gateway-backend.ts';
export { DELETE, type Plan, type RetryOptions, retryOnConflict, transact, UNCHANGED } from './retry.ts';
export { type Fence, type Op, Store, type Stored } from './store.ts';
