import { hostname } from 'node:os';
import { dnsLabel, envHostPort, etcdEnv, serviceEnv } from '@berth/shared/config';
import { z } from 'zod';

export const lbAgentEnv = z.object({
  ...serviceEnv,
  ...etcdEnv,
  HTTP_ADDR: envHostPort('127.0.0.1:7073'),
  /** The Nginx group this host serves. */
  LB_GROUP: dnsLabel.default('default'),
  /** This host's name in `/slb/{group}/agents/{host}`. */
  LB_HOST: z
    .string()
    .min(1)
    .default(() => hostname()),
});

export type LbAgentConfig = z.output<typeof lbAgentEnv>;
