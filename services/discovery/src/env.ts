import {
  cellsEnv,
  defaultInstanceId,
  envDuration,
  envHostPort,
  envInt,
  etcdEnv,
  serviceEnv,
} from '@berth/shared/config';
import { z } from 'zod';

export const discoveryEnv = z.object({
  ...serviceEnv,
  ...etcdEnv,
  ...cellsEnv,
  HTTP_ADDR: envHostPort('127.0.0.1:7074'),
  /** Candidate id in the leader election. */
  BERTH_INSTANCE_ID: z.string().min(1).default(defaultInstanceId),
  LEADER_TTL_SECONDS: envInt(10, { min: 2, max: 120 }),
  /** Changes within this window become one write per app. */
  DISCOVERY_COALESCE: envDuration('100ms'),
  /** How long a new leader waits for the cells' first lists before its first writes. */
  DISCOVERY_FIRST_LIST_WAIT: envDuration('10s'),
  /** A cell watch that sent nothing, not even a bookmark, for this long is restarted. */
  DISCOVERY_WATCH_STALL: envDuration('120s'),
});

export type DiscoveryConfig = z.output<typeof discoveryEnv>;
