import type { Logger } from '@berth/shared/logging';
import { NatsComponent } from '@berth/shared/nats';
import { ServiceRuntime } from '@berth/shared/service';
import type { SchedulerConfig } from './env.ts';

/**
 * The scheduler: leader-elected; places each version's replicas over the region's cells and keeps
 * them applied. Placement and apply arrive with the scheduler issue; today it campaigns for
 * leadership and serves health, readiness and metrics.
 */
export class SchedulerService {
  readonly runtime: ServiceRuntime;

  private constructor(runtime: ServiceRuntime) {
    this.runtime = runtime;
  }

  static create(config: SchedulerConfig, logger: Logger): SchedulerService {
    const runtime = new ServiceRuntime({ name: 'scheduler', config, logger });
    const nats = new NatsComponent({ servers: config.NATS_URL, token: config.NATS_TOKEN, name: 'scheduler', logger });
    runtime.health.add('nats', nats.ready);
    runtime.add(nats);
    runtime.addLeaderElection('scheduler', {
      candidateId: config.BERTH_INSTANCE_ID,
      ttlSeconds: config.LEADER_TTL_SECONDS,
    });
    return new SchedulerService(runtime);
  }

  start(): Promise<void> {
    return this.runtime.start();
  }

  stop(): Promise<void> {
    return this.runtime.stop();
  }
}
