import type { Logger } from '@berth/shared/logging';
import { ServiceRuntime } from '@berth/shared/service';
import type { LbAgentConfig } from './env.ts';

/**
 * The lb-agent: runs on each Nginx host; renders its group's domains into nginx config and swaps
 * upstream addresses through Lua. Rendering arrives with its own issue; today it serves health,
 * readiness (etcd) and metrics.
 */
export class LbAgentService {
  readonly runtime: ServiceRuntime;

  private constructor(runtime: ServiceRuntime) {
    this.runtime = runtime;
  }

  static create(config: LbAgentConfig, logger: Logger): LbAgentService {
    const runtime = new ServiceRuntime({
      name: 'lb-agent',
      config,
      logger: logger.child({ group: config.LB_GROUP, host: config.LB_HOST }),
    });
    return new LbAgentService(runtime);
  }

  start(): Promise<void> {
    return this.runtime.start();
  }

  stop(): Promise<void> {
    return this.runtime.stop();
  }
}
