import { dnsLabel, envHostPort, etcdEnv, serviceEnv } from '@berth/shared/config';
import { z } from 'zod';

/** The checker daemon (`cnictl check --watch` as a service). The plugin and cnictl read their own config. */
export const ipamCheckerEnv = z.object({
  ...serviceEnv,
  ...etcdEnv,
  HTTP_ADDR: envHostPort('127.0.0.1:7075'),
  /** The cell whose allocations this checker watches. */
  BERTH_CELL: dnsLabel.default('cell-a'),
});

export type IpamCheckerConfig = z.output<typeof ipamCheckerEnv>;
