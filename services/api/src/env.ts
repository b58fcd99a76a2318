import { isIP } from 'node:net';
import {
  cellsEnv,
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
import { cpuQuantitySchema, memoryQuantitySchema, userNameSchema } from '@berth/shared/model';
import { robotKeySchema } from '@berth/shared/registry';
import { secretsKeyringSchema } from '@berth/shared/secrets';
import { z } from 'zod';
import { parseSigningKey } from './registry/signing-key.ts';

export const apiEnv = z
  .object({
    ...serviceEnv,
    ...etcdEnv,
    ...natsEnv,
    ...eventsEnv,
    ...redisEnv,
    /** The cells' kubeconfigs: the API reads instances and logs and execs as `<cell>.api.kubeconfig`. */
    ...cellsEnv,
    HTTP_ADDR: envHostPort('127.0.0.1:7070'),
    /** The admin created on first start when missing (with BERTH_ADMIN_PASSWORD). */
    BERTH_ADMIN_USER: userNameSchema.default('admin'),
    BERTH_ADMIN_PASSWORD: secret(z.string().min(8, 'at least 8 characters').optional()),
    /** How long a login session token lives. */
    SESSION_TTL: envDuration('12h'),
    /** Failed logins per minute per (user, client address), and per client address. */
    LOGIN_RATE_LIMIT: envInt(10, { min: 1, max: 10_000 }),
    LOGIN_RATE_LIMIT_PER_ADDRESS: envInt(100, { min: 1, max: 100_000 }),
    /** Failed logins in a row an account takes, from any address, before each waits 2^k s. */
    LOGIN_ACCOUNT_FAILURES: envInt(5, { min: 1, max: 10_000 }),
    /** The longest wait of that back-off. */
    LOGIN_BACKOFF_MAX: envDuration('15m'),
    /**
     * The proxies in front of the API whose X-Forwarded-For is believed (comma-separated addresses
     * or CIDRs). Default none: the client address is the socket's, even from loopback.
     */
    TRUSTED_PROXIES: z
      .string()
      .default('')
      .transform((s) =>
        s
          .split(',')
          .map((p) => p.trim())
          .filter(Boolean),
      )
      .pipe(z.array(z.string().refine(isAddressOrCidr, 'expected an IP address or a CIDR like 10.0.0.0/8'))),
    /** Personal access tokens one user may hold. */
    MAX_TOKENS_PER_USER: envInt(50, { min: 1, max: 10_000 }),
    /** Password hashes at once (default twice the cores), and how many may wait (then 503). */
    PASSWORD_HASH_CONCURRENCY: envInt(0, { min: 0, max: 1024 }),
    PASSWORD_HASH_QUEUE: envInt(64, { min: 0, max: 100_000 }),
    /** scrypt's N as a power of two: 17 is OWASP's minimum; lower only in tests. */
    PASSWORD_HASH_LOG_N: envInt(17, { min: 10, max: 20 }),
    /**
     * The quota of a user who has none of their own (admins excepted): apps owned, and cpu and
     * memory of all their apps' replicas. `none` lifts that limit.
     */
    DEFAULT_QUOTA_APPS: z
      .string()
      .default('20')
      .transform((s) => (s === 'none' || s === '' ? undefined : Number(s)))
      .pipe(z.number().int().min(0).max(100_000).optional()),
    DEFAULT_QUOTA_CPU: z
      .string()
      .default('16')
      .transform((s) => (s === 'none' || s === '' ? undefined : s))
      .pipe(cpuQuantitySchema.optional()),
    DEFAULT_QUOTA_MEMORY: z
      .string()
      .default('32Gi')
      .transform((s) => (s === 'none' || s === '' ? undefined : s))
      .pipe(memoryQuantitySchema.optional()),
    /**
     * Long-lived streams one user may hold open at once in one API process (docs/api.md, "Streams
     * per user"): followed logs (an app's logs with follow=true, a build's SSE log), and exec
     * sessions. One more is a 429 naming the setting.
     */
    MAX_FOLLOWS_PER_USER: envInt(10, { min: 1, max: 10_000 }),
    MAX_EXEC_PER_USER: envInt(5, { min: 1, max: 10_000 }),
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
    /**
     * The registry token server (docs/registry.md): the PEM of an EC P-256 private key and its
     * certificate, best from REGISTRY_TOKEN_KEY_FILE (infra/registry-token-key.sh makes one).
     * Unset: no token endpoint.
     */
    REGISTRY_TOKEN_KEY: secret(z.string().min(1).optional()),
    /** The registry's `auth.token.issuer` and `auth.token.service` (the tokens' audience). */
    REGISTRY_TOKEN_ISSUER: z.string().min(1).max(255).default('berth'),
    REGISTRY_TOKEN_SERVICE: z.string().min(1).max(255).default('berth-registry'),
    /** How long a registry token lives (at least 60 s, as the token spec asks). */
    REGISTRY_TOKEN_TTL: envDuration('5m'),
    /**
     * The master key of the registry's robot credentials (docs/registry.md): the cells pull and
     * each build pushes with an HMAC the token server recomputes from it; 64 hex digits. Unset:
     * only users get registry tokens.
     */
    REGISTRY_ROBOT_KEY: secret(robotKeySchema.optional()),
    /**
     * Derives build webhook secrets (HMAC keys of GitHub and Gitea), so etcd keeps only their
     * hashes; at least 32 characters. Unset: one is made on first use and kept in etcd.
     */
    BUILD_WEBHOOK_KEY: secret(z.string().min(32).optional()),
    /**
     * How long after an agent's lease ended its active builds are failed as agent-lost and
     * retried elsewhere: at least the agents' BullMQ lockDuration, so no lock is still held.
     */
    BUILD_AGENT_LOST_AFTER: envDuration('120s'),
    /** A home queue with this many waiting jobs per slot spills to the next agent. */
    BUILD_SPILL_FACTOR: envInt(2, { min: 1, max: 1000 }),
    /** The registry as the API reaches it, for repositories and tags (with REGISTRY_TOKEN_KEY). */
    REGISTRY_URL: envUrl(['http', 'https']).optional(),
    /**
     * The bearer secret the registry sends with its notifications (docs/registry.md, "Who pushed a
     * tag"), best from REGISTRY_NOTIFY_TOKEN_FILE. Unset: no notification endpoint.
     */
    REGISTRY_NOTIFY_TOKEN: secret(z.string().min(16, 'at least 16 characters').max(4096).optional()),
    /**
     * The bearer token the lb-agents want for their request counts (`/stats/requests`, protected
     * as their /metrics: their METRICS_TOKEN), best from LB_STATS_TOKEN_FILE. Unset: none sent.
     */
    LB_STATS_TOKEN: secret(z.string().min(16, 'at least 16 characters').max(4096).optional()),
    /**
     * The keyring that seals app secrets (docs/secrets.md): `id:hex64[,id:hex64…]`, the first key
     * seals, every key opens; best from BERTH_SECRETS_KEYS_FILE. The scheduler needs the same one.
     * Unset: setting a secret answers 503 (names can still be listed and secrets deleted).
     */
    BERTH_SECRETS_KEYS: secret(secretsKeyringSchema.optional()),
  })
  .superRefine((env, ctx) => {
    if (env.REGISTRY_TOKEN_TTL < 60_000) {
      ctx.addIssue({ code: 'custom', path: ['REGISTRY_TOKEN_TTL'], message: 'at least 60s (token spec)' });
    }
    if (env.REGISTRY_URL && !env.REGISTRY_TOKEN_KEY) {
      ctx.addIssue({ code: 'custom', path: ['REGISTRY_URL'], message: 'needs REGISTRY_TOKEN_KEY (or _FILE)' });
    }
    if (env.REGISTRY_TOKEN_KEY) {
      try {
        parseSigningKey(env.REGISTRY_TOKEN_KEY);
      } catch (err) {
        ctx.addIssue({ code: 'custom', path: ['REGISTRY_TOKEN_KEY'], message: (err as Error).message });
      }
    }
    if (!env.LDAP_URL) return;
    for (const key of ['LDAP_BIND_DN', 'LDAP_BIND_PASSWORD', 'LDAP_USER_BASE_DN'] as const) {
      if (!env[key]) ctx.addIssue({ code: 'custom', path: [key], message: 'required when LDAP_URL is set' });
    }
  });

export type ApiConfig = z.output<typeof apiEnv>;

function isAddressOrCidr(value: string): boolean {
  const [address, bits, ...rest] = value.split('/');
  if (!address || rest.length > 0) return false;
  const family = isIP(address);
  if (family === 0) return false;
  if (bits === undefined) return true;
  const n = Number(bits);
  return /^\d{1,3}$/.test(bits) && n >= 0 && n <= (family === 4 ? 32 : 128);
}
