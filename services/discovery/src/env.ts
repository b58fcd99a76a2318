import { defaultInstanceId, envHostPort, envInt, etcdEnv, serviceEnv } from '@berth/shared/config';
import { z } from 'zod';

export const discoveryEnv = z.object({
  ...serviceEnv,
  ...etcdEnv,
  HTTP_ADDR: envHostPort('127.0.0.1:7074'),
  /** Candidate id in the leader election. */
  BERTH_INSTANCE_ID: z.string().min(1).default(defaultInstanceId),
  LEADER_TTL_SECONDS: envInt(10, { min: 2, max: 120 }),
});

export type DiscoveryConfig = z.output<typeof discoveryEnv>;
