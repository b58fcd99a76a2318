import type { Logger } from '@berth/shared/logging';
import { RedisComponent } from '@berth/shared/redis';
import { ServiceRuntime } from '@berth/shared/service';
import type { BuilderAgentConfig } from './env.ts';

/**
 * The builder-agent: runs on each build machine; registers under a lease, takes its build jobs
 * from its BullMQ queue, builds and pushes images. Builds arrive with their own issue; today it
 * serves health, readiness (etcd, Redis) and metrics.
 */
export class BuilderAgentService {
  readonly runtime: ServiceRuntime;

  private constructor(runtime: ServiceRuntime) {
    this.runtime = runtime;
  }

  static create(config: BuilderAgentConfig, logger: Logger): BuilderAgentService {
    const runtime = new ServiceRuntime({
      name: 'builder-agent',
      config,
      logger: logger.child({ builder: config.BUILDER_ID }),
    });
    const redis = new RedisComponent({ url: config.REDIS_URL, role: 'worker', name: `builder-${config.BUILDER_ID}` });
    runtime.health.add('redis', redis.ready);
    runtime.add(redis);
    return new BuilderAgentService(runtime);
  }

  start(): Promise<void> {
    return this.runtime.start();
  }

  stop(): Promise<void> {
    return this.runtime.stop();
  }
}
