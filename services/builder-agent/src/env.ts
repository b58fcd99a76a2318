import { defaultInstanceId, envHostPort, etcdEnv, redisEnv, serviceEnv } from '@berth/shared/config';
import { z } from 'zod';

export const builderAgentEnv = z.object({
  ...serviceEnv,
  ...etcdEnv,
  ...redisEnv,
  HTTP_ADDR: envHostPort('127.0.0.1:7072'),
  /** This build machine's id: its BullMQ queue is `builds-<id>`. */
  BUILDER_ID: z
    .string()
    .regex(/^[A-Za-z0-9_.-]+$/, 'letters, digits, ".", "_" and "-" only')
    .default(defaultInstanceId),
});

export type BuilderAgentConfig = z.output<typeof builderAgentEnv>;
