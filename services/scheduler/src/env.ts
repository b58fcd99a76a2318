import { isIP } from 'node:net';
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
import { secretsKeyringSchema } from '@berth/shared/secrets';
import { z } from 'zod';

/** A comma-separated list of CIDRs (`10.0.0.0/8,192.0.2.7/32`); empty by default. */
const cidrList = z
  .string()
  .default('')
  .transform((text) =>
    text
      .split(',')
      .map((c) => c.trim())
      .filter(Boolean),
  )
  .refine(
    (cidrs) =>
      cidrs.every((c) => {
        const [ip, bits, extra] = c.split('/');
        const family = isIP(ip ?? '');
        const n = Number(bits);
        return family !== 0 && extra === undefined && Number.isInteger(n) && n >= 0 && n <= (family === 4 ? 32 : 128);
      }),
    'expected CIDRs separated by commas, like 192.0.2.0/24,198.51.100.7/32',
  );

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
  /**
   * The app secrets keyring (`id:hex64[,id:hex64…]`, the API's too; docs/security.md): set, the
   * scheduler opens each app's secrets into a Secret `berth-app-secrets` per app namespace that
   * the pods read by `secretKeyRef`. Unset, no app gets its secrets. `BERTH_SECRETS_KEYS_FILE`
   * reads it from a file.
   */
  BERTH_SECRETS_KEYS: secret(secretsKeyringSchema.optional()),
  /**
   * Where the load balancers connect to pods from, besides each cell's node addresses (which the
   * allow policy always lists): LB hosts that are not the cells' nodes.
   */
  LB_SOURCE_CIDRS: cidrList,
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
