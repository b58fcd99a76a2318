import {
  envDuration,
  envHostPort,
  envInt,
  envUrl,
  etcdEnv,
  eventsEnv,
  natsEnv,
  redisEnv,
  secret,
  serviceEnv,
} from '@berth/shared/config';
import { userNameSchema } from '@berth/shared/model';
import { z } from 'zod';

export const apiEnv = z
  .object({
    ...serviceEnv,
    ...etcdEnv,
    ...natsEnv,
    ...eventsEnv,
    ...redisEnv,
    HTTP_ADDR: envHostPort('127.0.0.1:7070'),
    /** The admin created on first start when missing (with BERTH_ADMIN_PASSWORD). */
    BERTH_ADMIN_USER: userNameSchema.default('admin'),
    BERTH_ADMIN_PASSWORD: secret(z.string().min(8, 'at least 8 characters').optional()),
    /** How long a login session token lives. */
    SESSION_TTL: envDuration('12h'),
    /** Login attempts per minute per (user, client address), and per client address. */
    LOGIN_RATE_LIMIT: envInt(10, { min: 1, max: 10_000 }),
    LOGIN_RATE_LIMIT_PER_ADDRESS: envInt(100, { min: 1, max: 100_000 }),
    /** Largest accepted request body, in bytes. */
    BODY_LIMIT: envInt(256 * 1024, { min: 1024, max: 64 * 1024 * 1024 }),
    /** LDAP login: all of URL, bind DN, bind password and user base DN, or none. */
    LDAP_URL: envUrl(['ldap', 'ldaps']).optional(),
    LDAP_BIND_DN: z.string().min(1).optional(),
    LDAP_BIND_PASSWORD: secret(z.string().min(1).optional()),
    LDAP_USER_BASE_DN: z.string().min(1).optional(),
    LDAP_USER_FILTER: z
      .string()
      .includes('{username}', { message: 'must contain {username}' })
      .default('(uid={username})'),
    LDAP_EMAIL_ATTRIBUTE: z.string().min(1).default('mail'),
  })
  .superRefine((env, ctx) => {
    if (!env.LDAP_URL) return;
    for (const key of ['LDAP_BIND_DN', 'LDAP_BIND_PASSWORD', 'LDAP_USER_BASE_DN'] as const) {
      if (!env[key]) ctx.addIssue({ code: 'custom', path: [key], message: 'required when LDAP_URL is set' });
    }
  });

export type ApiConfig = z.output<typeof apiEnv>;
