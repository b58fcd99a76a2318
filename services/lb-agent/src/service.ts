import { InputError, UnavailableError } from '@berth/shared/errors';
import type { EventInput } from '@berth/shared/events';
import { EventSubjects } from '@berth/shared/events';
import { requireBearer } from '@berth/shared/http';
import type { Logger } from '@berth/shared/logging';
import { NatsComponent } from '@berth/shared/nats';
import { ServiceRuntime } from '@berth/shared/service';
import { LbAgent } from './agent.ts';
import type { LbAgentConfig } from './env.ts';
import { NginxConfigManager } from './nginx/config-manager.ts';
import { ControlClient } from './nginx/control-client.ts';
import { type MainConfOptions, paths } from './nginx/main-conf.ts';
import { parseWindow, RequestWindow } from './stats/request-window.ts';

export const STATS_PATH = '/stats/requests';

/**
 * The lb-agent: runs on each Nginx host of an LB group. It renders the group's domains into
 * nginx config (reloaded, guarded by `nginx -t`) and pushes every app's endpoints and weights to
 * nginx's Lua (never a reload). nginx itself runs on its own (infra/region.sh here): an agent
 * restart never interrupts traffic.
 */
export class LbAgentService {
  readonly runtime: ServiceRuntime;
  readonly agent: LbAgent;
  readonly requests: RequestWindow;

  private constructor(runtime: ServiceRuntime, agent: LbAgent, requests: RequestWindow) {
    this.runtime = runtime;
    this.agent = agent;
    this.requests = requests;
  }

  static create(config: LbAgentConfig, logger: Logger): LbAgentService {
    const log = logger.child({ group: config.LB_GROUP, host: config.LB_HOST });
    const control = new ControlClient(paths(config.NGINX_PREFIX).controlSocket);
    // Requests per app and version within a window, for the API's metrics route: protected as
    // /metrics is (METRICS_TOKEN when set; the listener is loopback otherwise).
    const requests = new RequestWindow({
      read: async () => {
        const [stats, routes] = await Promise.all([control.stats(), control.routes()]);
        return { boot: routes.boot, stats };
      },
      logger: log,
      intervalMs: config.LB_STATS_INTERVAL,
      keepMs: config.LB_STATS_KEEP,
    });
    const runtime = new ServiceRuntime({
      name: 'lb-agent',
      config,
      logger: log,
      routes: (app) => {
        app.get(STATS_PATH, requireBearer(config.METRICS_TOKEN, STATS_PATH), async (req, res) => {
          const asked = typeof req.query.window === 'string' ? req.query.window : '15m';
          const windowMs = parseWindow(asked);
          if (windowMs === undefined) {
            throw new InputError('window: expected a duration like 30s, 10m or 2h', [
              { path: '$.window', message: 'expected a duration like 30s, 10m or 2h' },
            ]);
          }
          const only = typeof req.query.app === 'string' && req.query.app ? req.query.app : undefined;
          res.json(await requests.requests(windowMs, only));
        });
      },
    });
    const main: MainConfOptions = {
      prefix: config.NGINX_PREFIX,
      listen: config.LB_LISTEN,
      pidFile: config.NGINX_PID_FILE,
      errorLog: config.NGINX_ERROR_LOG,
      accessLog: config.NGINX_ACCESS_LOG,
      workerProcesses: config.NGINX_WORKERS,
      ...(config.NGINX_USER ? { user: config.NGINX_USER } : {}),
    };
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
    let statsUrl: string | undefined;
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
      // The listener's URL once it listens (the port is known then, also when configured as 0).
      statsUrl: () => {
        statsUrl ??= config.LB_STATS_URL ?? `${runtime.http.url}${STATS_PATH}`;
        return statsUrl;
      },
      ...(publish ? { publish } : {}),
    });
    runtime.health.add('nginx', async () => {
      await control.generation();
    });
    runtime.health.add('synced', () => {
      if (!agent.synced) throw new UnavailableError('first sync not done');
    });
    runtime.add({ name: 'request-window', start: () => requests.start(), stop: () => requests.stop() });
    runtime.add({ name: 'agent', start: () => agent.start(), stop: () => agent.stop() });
    return new LbAgentService(runtime, agent, requests);
  }

  start(): Promise<void> {
    return this.runtime.start();
  }

  stop(): Promise<void> {
    return this.runtime.stop();
  }
}
