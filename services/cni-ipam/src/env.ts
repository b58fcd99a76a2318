import {
  cellsEnv,
  dnsLabel,
  envBool,
  envDuration,
  envHostPort,
  envUrlList,
  etcdEnv,
  eventsEnv,
  natsAuthEnv,
  serviceEnv,
} from '@berth/shared/config';
import { z } from 'zod';

/** The checker daemon (`cnictl check` every CHECK_INTERVAL, as a service). The plugin reads its network conf. */
export const ipamCheckerEnv = z.object({
  ...serviceEnv,
  ...etcdEnv,
  ...cellsEnv,
  HTTP_ADDR: envHostPort('127.0.0.1:7075'),
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
