import {
  cellsEnv,
  dnsLabel,
  envBool,
  envDuration,
  envHostPort,
  envInt,
  envUrlList,
  etcdEnv,
  eventsEnv,
  natsAuthEnv,
  serviceEnv,
} from '@berth/shared/config';
import { z } from 'zod';

/**
 * The node's IPAM daemon: the resident allocator the thin plugin asks over IPAM_SOCKET, and the
 * checker of BERTH_CELL (`cnictl check` every CHECK_INTERVAL). The plugin reads its network conf.
 */
export const ipamCheckerEnv = z.object({
  ...serviceEnv,
  ...etcdEnv,
  ...cellsEnv,
  HTTP_ADDR: envHostPort('127.0.0.1:7075'),
  /**
   * The resident allocator's unix socket (root only), or `off`. The network conf's `ipam.socket`
   * names the same path for the thin plugin.
   */
  IPAM_SOCKET: z
    .string()
    .default('/run/berth/ipam.sock')
    .refine((v) => v === 'off' || v.startsWith('/'), 'IPAM_SOCKET must be an absolute path, or "off"'),
  /**
   * Requests of one node in one etcd transaction at most. etcd allows 128 operations in one: each
   * request writes two keys and may touch a block of its own (a DEL of a borrowed address), so 40.
   */
  IPAM_BATCH_MAX: envInt(32, { min: 1, max: 40 }),
  /** Run the checker of BERTH_CELL here (one node of a cell is enough; the allocator needs none). */
  IPAM_CHECKER: envBool(true),
  /** The cell whose allocations this checker watches. */
  BERTH_CELL: dnsLabel.default('cell-a'),
  CHECK_INTERVAL: envDuration('30s'),
  /** Release leaks seen in two checks RELEASE_GRACE apart. Off by default. */
  AUTO_RELEASE: envBool(false),
  RELEASE_GRACE: envDuration('10m'),
  /** Release blocks that stayed empty this long. */
  BLOCK_GRACE: envDuration('10m'),
  /** Where ipam.leak-detected events go; none when unset. */
  NATS_URL: envUrlList(['nats', 'tls']).optional(),
  ...natsAuthEnv,
  ...eventsEnv,
});

export type IpamCheckerConfig = z.output<typeof ipamCheckerEnv>;
