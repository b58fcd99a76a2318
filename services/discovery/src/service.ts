import { resolve } from 'node:path';
import { NotLeaderError } from '@berth/shared/errors';
import type { LeaderElection } from '@berth/shared/etcd';
import type { Logger } from '@berth/shared/logging';
import { ServiceRuntime } from '@berth/shared/service';
import type { DiscoveryConfig } from './env.ts';
import { DiscoveryController } from './upstreams/controller.ts';

/**
 * Discovery: one leader (elected on etcd) watches the EndpointSlices of Berth's Services in every
 * cell of the region and writes each app's routable endpoints to `/slb/{group}/upstreams/{app}`
 * for every group the app has a domain in; standbys wait to take over.
 */
export class DiscoveryService {
  readonly runtime: ServiceRuntime;
  readonly controller: DiscoveryController;
  readonly election: LeaderElection;

  private constructor(runtime: ServiceRuntime, controller: DiscoveryController, election: LeaderElection) {
    this.runtime = runtime;
    this.controller = controller;
    this.election = election;
  }

  static create(config: DiscoveryConfig, logger: Logger): DiscoveryService {
    const runtime = new ServiceRuntime({ name: 'discovery', config, logger });
    let election: LeaderElection | undefined;
    // Every write compares the leader key: a deposed leader cannot overwrite its successor.
    const store = runtime.store.fenced(() => {
      if (!election) throw new NotLeaderError('discovery has no leader election yet');
      return election.fence();
    });
    const controller = new DiscoveryController({
      etcd: runtime.etcd,
      store,
      keys: runtime.keys,
      region: config.BERTH_REGION,
      kubeconfigDir: resolve(config.KUBECONFIG_DIR),
      cellIdentity: config.CELL_IDENTITY ?? 'discovery',
      logger,
      metrics: runtime.metrics,
      coalesceMs: config.DISCOVERY_COALESCE,
      firstListWaitMs: config.DISCOVERY_FIRST_LIST_WAIT,
      stallMs: config.DISCOVERY_WATCH_STALL,
    });
    const leader = runtime.addLeaderElection('discovery', {
      candidateId: config.BERTH_INSTANCE_ID,
      ttlSeconds: config.LEADER_TTL_SECONDS,
      onElected: () => controller.start(),
      onDeposed: () => controller.stop(),
    });
    election = leader;
    runtime.add({ name: 'controller', stop: () => controller.stop() });
    return new DiscoveryService(runtime, controller, leader);
  }

  start(): Promise<void> {
    return this.runtime.start();
  }

  stop(): Promise<void> {
    return this.runtime.stop();
  }
}
