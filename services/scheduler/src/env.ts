import { defaultInstanceId, envHostPort, envInt, etcdEnv, natsEnv, serviceEnv } from '@berth/shared/config';
import { z } from 'zod';

export const schedulerEnv = z.object({
  ...serviceEnv,
  ...etcdEnv,
  ...natsEnv,
  HTTP_ADDR: envHostPort('127.0.0.1:7071'),
  /** Candidate id in the leader election. */
  BERTH_INSTANCE_ID: z.string().min(1).default(defaultInstanceId),
  /** How long a dead leader holds the seat before a standby takes over. */
  LEADER_TTL_SECONDS: envInt(10, { min: 2, max: 120 }),
});

export type SchedulerConfig = z.output<typeof schedulerEnv>;
