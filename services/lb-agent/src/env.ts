import { hostname } from 'node:os';
import {
  dnsLabel,
  envDuration,
  envHostPort,
  envInt,
  envUrl,
  envUrlList,
  etcdEnv,
  eventsEnv,
  natsAuthEnv,
  serviceEnv,
} from '@berth/shared/config';
import { lbHostSchema } from '@berth/shared/model';
import { z } from 'zod';

export const lbAgentEnv = z.object({
  ...serviceEnv,
  ...etcdEnv,
  HTTP_ADDR: envHostPort('127.0.0.1:7073'),
  /** The Nginx group this host serves. */
  LB_GROUP: dnsLabel.default('default'),
  /** This host's name in `/slb/{group}/agents/{host}`. */
  LB_HOST: lbHostSchema.default(() => hostname()),
  /** nginx's prefix directory: its main config (`nginx.conf`), generations, `live`, the control socket. */
  NGINX_PREFIX: z.string().min(1),
  /** The master's pid file, as the main config names it. */
  NGINX_PID_FILE: z.string().min(1),
  /** nginx's error log, as the main config names it (candidates are tested with the same config). */
  NGINX_ERROR_LOG: z.string().min(1),
  NGINX_ACCESS_LOG: z.string().min(1).default('off'),
  NGINX_BIN: z.string().min(1).default('nginx'),
  NGINX_WORKERS: z.union([z.literal('auto'), z.coerce.number().int().min(1).max(64)]).default(1),
  /** Set when nginx's master runs as root (the `user` directive). */
  NGINX_USER: z.string().min(1).optional(),
  /** Where nginx takes traffic; every domain's server block listens here. */
  LB_LISTEN: z
    .string()
    .regex(/^([0-9.]+:|\[[0-9a-fA-F:.]+\]:)?[0-9]{1,5}$/, 'expected PORT, ADDRESS:PORT or [V6]:PORT')
    .default('127.0.0.1:8080'),
  /** Domain changes within this window become one reload. */
  LB_RELOAD_DEBOUNCE: envDuration('200ms'),
  /** How often Lua's documents are compared with the agent's (drift, nginx restarts). */
  LB_DIGEST_INTERVAL: envDuration('5s'),
  LB_LEASE_TTL_SECONDS: envInt(10, { min: 2, max: 120 }),
  /**
   * Where the API reaches this agent's `/stats/requests` (written into the agent's status); default
   * the HTTP listener's own URL, which is right when the API runs on the same host or the listener
   * is on an address the API reaches.
   */
  LB_STATS_URL: envUrl(['http', 'https']).optional(),
  /** How often the request counters are kept for windows (`/stats/requests`), and for how long. */
  LB_STATS_INTERVAL: envDuration('10s'),
  LB_STATS_KEEP: envDuration('1h'),
  /** Where failed-domain events go; none when unset. */
  NATS_URL: envUrlList(['nats', 'tls']).optional(),
  ...natsAuthEnv,
  ...eventsEnv,
});

export type LbAgentConfig = z.output<typeof lbAgentEnv>;
