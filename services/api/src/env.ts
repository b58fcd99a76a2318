import { envHostPort, etcdEnv, natsEnv, redisEnv, serviceEnv } from '@berth/shared/config';
import { z } from 'zod';

export const apiEnv = z.object({
  ...serviceEnv,
  ...etcdEnv,
  ...natsEnv,
  ...redisEnv,
  HTTP_ADDR: envHostPort('127.0.0.1:7070'),
});

export type ApiConfig = z.output<typeof apiEnv>;
