import type { Logger } from '@berth/shared/logging';
import { ServiceRuntime } from '@berth/shared/service';
import type { DiscoveryConfig } from './env.ts';

/**
 * Discovery: leader-elected; watches EndpointSlices of app Services in every cell and writes
 * each domain's ready upstreams. The watch arrives with its own issue; today it campaigns for
 * leadership and serves health, readiness and metrics.
 */
export class DiscoveryService {
  readonly runtime: ServiceRuntime;

  private constructor(runtime: ServiceRuntime) {
    this.runtime = runtime;
  }

  static create(config: DiscoveryConfig, logger: Logger): DiscoveryService {
    const runtime = new ServiceRuntime({ name: 'discovery', config, logger });
    runtime.addLeaderElection('discovery', {
      candidateId: config.BERTH_INSTANCE_ID,
      ttlSeconds: config.LEADER_TTL_SECONDS,
    });
    return new DiscoveryService(runtime);
  }

  start(): Promise<void> {
    return this.runtime.start();
  }

  stop(): Promise<void> {
    return this.runtime.stop();
  }
}
