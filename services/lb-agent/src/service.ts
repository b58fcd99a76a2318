import { UnavailableError } from '@berth/shared/errors';
import type { EventInput } from '@berth/shared/events';
import { EventSubjects } from '@berth/shared/events';
import type { Logger } from '@berth/shared/logging';
import { NatsComponent } from '@berth/shared/nats';
import { ServiceRuntime } from '@berth/shared/service';
import { LbAgent } from './agent.ts';
import type { LbAgentConfig } from './env.ts';
import { NginxConfigManager } from './nginx/config-manager.ts';
import { ControlClient } from './nginx/control-client.ts';
import { type MainConfOptions, paths } from './nginx/main-conf.ts';

/**
 * The lb-agent: runs on each Nginx host of an LB group. It renders the group's domains into
 * nginx config (reloaded, guarded by `nginx -t`) and pushes every app's endpoints and weights to
 * nginx's Lua (never a reload). nginx itself runs on its own (infra/region.sh here): an agent
 * restart never interrupts traffic.
 */
export class LbAgentService {
  readonly runtime: ServiceRuntime;
  readonly agent: LbAgent;

  private constructor(runtime: ServiceRuntime, agent: LbAgent) {
    this.runtime = runtime;
    this.agent = agent;
  }

  static create(config: LbAgentConfig, logger: Logger): LbAgentService {
    const log = logger.child({ group: config.LB_GROUP, host: config.LB_HOST });
    const runtime = new ServiceRuntime({ name: 'lb-agent', config, logger: log });
    const main: MainConfOptions = {
      prefix: config.NGINX_PREFIX,
      listen: config.LB_LISTEN,
      pidFile: config.NGINX_PID_FILE,
      errorLog: config.NGINX_ERROR_LOG,
      accessLog: config.NGINX_ACCESS_LOG,
      workerProcesses: config.NGINX_WORKERS,
      ...(config.NGINX_USER ? { user: config.NGINX_USER } : {}),
    };
    const control = new ControlClient(paths(config.NGINX_PREFIX).controlSocket);
    const nginx = new NginxConfigManager({
      nginxBin: config.NGINX_BIN,
      main,
      control,
      logger: log,
      render: { listen: [config.LB_LISTEN] },
    });
    let publish: ((event: Omit<EventInput, 'actor'>) => Promise<void>) | undefined;
    if (config.NATS_URL) {
      const nats = new NatsComponent({
        servers: config.NATS_URL,
        token: config.NATS_TOKEN,
        user: config.NATS_USER,
        pass: config.NATS_PASSWORD,
        name: 'lb-agent',
        logger: log,
      });
      runtime.add(nats);
      const events = runtime.addEvents(nats, new EventSubjects(config.EVENT_SUBJECT_ROOT));
      // Through the outbox: a failure seen while NATS is down reaches the feed when it is back.
      publish = async (input) => {
        await events.emit({ ...input, actor: { type: 'service', name: 'lb-agent' } } as EventInput);
      };
    }
    const agent = new LbAgent({
      etcd: runtime.etcd,
      keys: runtime.keys,
      group: config.LB_GROUP,
      host: config.LB_HOST,
      control,
      config: nginx,
      logger: log,
      metrics: runtime.metrics,
      debounceMs: config.LB_RELOAD_DEBOUNCE,
      digestIntervalMs: config.LB_DIGEST_INTERVAL,
      leaseTtlSeconds: config.LB_LEASE_TTL_SECONDS,
      ...(publish ? { publish } : {}),
    });
    runtime.health.add('nginx', async () => {
      await control.generation();
    });
    runtime.health.add('synced', () => {
      if (!agent.synced) throw new UnavailableError('first sync not done');
    });
    runtime.add({ name: 'agent', start: () => agent.start(), stop: () => agent.stop() });
    return new LbAgentService(runtime, agent);
  }

  start(): Promise<void> {
    return this.runtime.start();
  }

  stop(): Promise<void> {
    return this.runtime.stop();
  }
}
