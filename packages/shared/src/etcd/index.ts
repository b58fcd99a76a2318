export {
  type CasOptions,
  type CasResult,
  type Codec,
  casUpdate,
  createIfAbsent,
  DELETE,
  getVersioned,
  jsonCodec,
  type Mutator,
  UNCHANGED,
  type Versioned,
} from './cas.ts';
export {
  createEtcdClient,
  type Etcd3,
  type EtcdClientConfig,
  etcdComponent,
  isEtcdUnavailable,
  pingEtcd,
  toBerthError,
} from './client.ts';
export { LeaderElection, type LeaderElectionOptions } from './election.ts';
export { EtcdLease, type EtcdLeaseOptions } from './lease.ts';
export {
  CompactedError,
  openWatchStream,
  PrefixWatcher,
  type PrefixWatcherOptions,
  prefixRangeEnd,
  type WatchChange,
  type WatcherState,
  type WatchStreamHandle,
} from './watch.ts';
