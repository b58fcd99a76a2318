import {
  cellsEnv,
  defaultInstanceId,
  envDuration,
  envHostPort,
  envInt,
  etcdEnv,
  eventsEnv,
  natsEnv,
  secret,
  serviceEnv,
} from '@berth/shared/config';
import { robotKeySchema } from '@berth/shared/registry';
import { z } from 'zod';

export const schedulerEnv = z.object({
  ...serviceEnv,
  ...etcdEnv,
  ...natsEnv,
  ...eventsEnv,
  ...cellsEnv,
  HTTP_ADDR: envHostPort('127.0.0.1:7071'),
  /** Candidate id in the leader election. */
  BERTH_INSTANCE_ID: z.string().min(1).default(defaultInstanceId),
  /** How long a dead leader holds the seat before a standby takes over. */
  LEADER_TTL_SECONDS: envInt(10, { min: 2, max: 120 }),
  /** The registry the cells pull from: images are `<REGISTRY_ADDR>/<app image>:<tag>`. */
  REGISTRY_ADDR: z.string().min(1).default('127.0.0.1:5000'),
  /**
   * The cells key (derived from the registry's robot master key, docs/registry.md): when set, each
   * app namespace gets a pull Secret with its cell's credential and every pod pulls with it.
   * Unset: no Secret, pods pull anonymously. `REGISTRY_PULL_KEY_FILE` reads it from a file.
   */
  REGISTRY_PULL_KEY: secret(robotKeySchema.optional()),
  /** A cell unreachable this long has its replicas placed elsewhere. */
  FAILOVER_GRACE: envDuration('60s'),
  /** A cell back from an outage must stay reachable this long before replicas move back to it. */
  RECOVERY_HOLD: envDuration('30s'),
  /** Every app is reconciled at least this often, whatever the watches said. */
  RESYNC_INTERVAL: envDuration('60s'),
  /**
   * Apps reconciled at once (each one's cells are written in parallel). The cells' own write
   * limiters (AIMD, per cell) decide how many writes a cell takes at once, so this can be high.
   */
  SCHEDULER_WORKERS: envInt(32, { min: 1, max: 256 }),
  /** Operations etcd accepts in one transaction: its `--max-txn-ops` (128 unless raised there). */
  ETCD_MAX_TXN_OPS: envInt(128, { min: 8, max: 100_000 }),
  /** Seconds a container keeps serving after it is told to stop, so traffic drains first. */
  PRESTOP_DELAY_SECONDS: envInt(5, { min: 0, max: 300 }),
});

export type SchedulerConfig = z.output<typeof schedulerEnv>;
