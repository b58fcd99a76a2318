export {
  type Codec,
  createIfAbsent,
  getVersioned,
  jsonCodec,
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
  openWatchStream,
  PrefixWatcher,
  type PrefixWatcherOptions,
  type WatchChange,
  type WatcherState,
  type WatchStreamHandle,
} from './watch.ts';
