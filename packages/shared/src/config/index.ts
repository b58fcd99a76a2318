/**
 * Configuration from the environment: one zod schema per service, parsed once at start.
 *
 * - Every bad variable gets its own line: `HTTP_ADDR: expected host:port (got "x")`. The value of
 *   a secret variable is never echoed.
 * - Fields wrapped in `secret(...)` are registered with the logger's scrubber the moment they are
 *   parsed, and `effectiveConfig()` replaces them, so the effective config can be logged.
 * - Passwords inside URLs (`redis://:pw@host`) are treated as secrets too.
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { z } from 'zod';
import { BerthError, ConfigError, type FieldIssue } from '../errors/index.ts';
import { LOG_LEVELS, REDACTED, redactUrl, registerSecret } from '../logging/index.ts';

const secretSchemas = new WeakSet<z.ZodType>();

/** Marks a config field as secret. Wrap last: `secret(z.string().optional())`. */
export function secret<T extends z.ZodType>(schema: T): T {
  secretSchemas.add(schema);
  return schema;
}

export function isSecretSchema(schema: unknown): boolean {
  return typeof schema === 'object' && schema !== null && secretSchemas.has(schema as z.ZodType);
}

/** "true"/"1"/"yes"/"on" and "false"/"0"/"no"/"off", case-insensitive. */
export function envBool(defaultValue: boolean) {
  return z
    .string()
    .trim()
    .toLowerCase()
    .optional()
    .transform((v, ctx) => {
      if (v === undefined || v === '') return defaultValue;
      if (['true', '1', 'yes', 'on'].includes(v)) return true;
      if (['false', '0', 'no', 'off'].includes(v)) return false;
      ctx.addIssue({ code: 'custom', message: `expected true/false/1/0 (got "${v}")` });
      return z.NEVER;
    });
}

/** An integer within bounds. */
export function envInt(defaultValue: number, bounds: { min?: number; max?: number } = {}) {
  const min = bounds.min ?? Number.MIN_SAFE_INTEGER;
  const max = bounds.max ?? Number.MAX_SAFE_INTEGER;
  return z
    .string()
    .trim()
    .optional()
    .transform((v, ctx) => {
      if (v === undefined || v === '') return defaultValue;
      const n = Number(v);
      if (!Number.isInteger(n) || n < min || n > max) {
        ctx.addIssue({ code: 'custom', message: `expected an integer in [${min}, ${max}] (got "${v}")` });
        return z.NEVER;
      }
      return n;
    });
}

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/;
const DURATION_UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * Parses "250ms", "30s", "5m", "1h", "7d" into milliseconds; undefined when it is not a duration.
 * The one duration parser: env (envDuration) and CLI flags (cnictl) both use it.
 */
export function parseDuration(text: string): number | undefined {
  const m = DURATION.exec(text.trim());
  if (!m?.[1] || !m[2]) return undefined;
  return Math.round(Number(m[1]) * (DURATION_UNIT_MS[m[2]] ?? 1));
}

/** A duration ("250ms", "30s", "5m", "1h") in milliseconds. */
export function envDuration(defaultValue: string) {
  const fallback = parseDuration(defaultValue);
  if (fallback === undefined) throw new BerthError(`bad default duration ${defaultValue}`);
  return z
    .string()
    .optional()
    .transform((v, ctx) => {
      if (v === undefined || v === '') return fallback;
      const ms = parseDuration(v);
      if (ms === undefined) {
        ctx.addIssue({ code: 'custom', message: `expected a duration like 500ms, 30s, 5m, 1h (got "${v}")` });
        return z.NEVER;
      }
      return ms;
    });
}

/** A comma-separated list of URLs with one of the given protocols. */
export function envUrlList(protocols: string[], defaultValue?: string) {
  return z
    .string()
    .optional()
    .transform((v, ctx) => {
      const text = v === undefined || v === '' ? defaultValue : v;
      if (text === undefined) {
        ctx.addIssue({ code: 'custom', message: 'required' });
        return z.NEVER;
      }
      const items = text
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
      for (const item of items) {
        let url: URL;
        try {
          url = new URL(item);
        } catch {
          ctx.addIssue({ code: 'custom', message: `not a URL: "${redactUrl(item)}"` });
          return z.NEVER;
        }
        if (!protocols.includes(url.protocol.replace(/:$/, ''))) {
          ctx.addIssue({
            code: 'custom',
            message: `expected ${protocols.join(' or ')} URL (got "${redactUrl(item)}")`,
          });
          return z.NEVER;
        }
      }
      if (items.length === 0) {
        ctx.addIssue({ code: 'custom', message: 'expected at least one URL' });
        return z.NEVER;
      }
      return items;
    });
}

/** One URL with one of the given protocols. */
export function envUrl(protocols: string[], defaultValue?: string) {
  return envUrlList(protocols, defaultValue).transform((items, ctx) => {
    if (items.length !== 1) {
      ctx.addIssue({ code: 'custom', message: 'expected exactly one URL' });
      return z.NEVER;
    }
    return items[0] as string;
  });
}

export type HostPort = { host: string; port: number };

/** `host:port` for a listener; port 0 picks a free port. */
export function envHostPort(defaultValue: string) {
  return z
    .string()
    .optional()
    .transform((v, ctx): HostPort => {
      const text = v === undefined || v === '' ? defaultValue : v;
      const m = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(text.trim());
      const port = m?.[2] === undefined ? Number.NaN : Number(m[2]);
      if (!m?.[1] || !Number.isInteger(port) || port > 65535) {
        ctx.addIssue({ code: 'custom', message: `expected host:port (got "${text}")` });
        return z.NEVER;
      }
      return { host: m[1].replace(/^\[|\]$/g, ''), port };
    });
}

/** A DNS-1123 label: what region, cell, app and node names are. */
export const dnsLabel = z
  .string()
  .regex(/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/, 'expected a DNS-1123 label (lowercase letters, digits, -)');

/** A key prefix: starts with `/`, no trailing `/`. */
export const keyPrefix = z.string().regex(/^(\/[A-Za-z0-9_.-]+)+$/, 'expected a key prefix like /berth');

// ---- Fragments every service composes its schema from --------------------------------------

export const serviceEnv = {
  HTTP_ADDR: envHostPort('127.0.0.1:0'),
  LOG_LEVEL: z.enum(LOG_LEVELS).default('info'),
  BERTH_REGION: dnsLabel.default('local'),
  SHUTDOWN_TIMEOUT: envDuration('20s'),
  /** OTLP/HTTP traces endpoint; tracing exports nothing unless this is set. */
  OTEL_EXPORTER_OTLP_ENDPOINT: envUrl(['http', 'https']).optional(),
  /** A request not answered in this long gets 503 (streams excepted); 0 turns it off. */
  HTTP_REQUEST_TIMEOUT: envDuration('30s'),
  /** /metrics on this listener only (host:port), not on HTTP_ADDR. */
  METRICS_ADDR: envHostPort('127.0.0.1:0').optional(),
  /** /metrics needs `Authorization: Bearer <METRICS_TOKEN>` (or METRICS_TOKEN_FILE). */
  METRICS_TOKEN: secret(z.string().min(16).optional()),
};

/**
 * The region's servers take a user and password per service (docs/security.md). Every
 * password may come from a file instead (`ETCD_PASSWORD_FILE`, `NATS_PASSWORD_FILE`,
 * `REDIS_PASSWORD_FILE`): what `make up` passes, so no password is in an environment listing.
 */
export const etcdEnv = {
  ETCD_ENDPOINTS: envUrlList(['http', 'https']),
  ETCD_PREFIX: keyPrefix.default('/berth'),
  ETCD_USERNAME: z.string().min(1).optional(),
  ETCD_PASSWORD: secret(z.string().min(1).optional()),
  ETCD_DIAL_TIMEOUT: envDuration('3s'),
};

/** NATS credentials: a user and password (or a token), for services that declare NATS_URL themselves. */
export const natsAuthEnv = {
  NATS_TOKEN: secret(z.string().min(1).optional()),
  NATS_USER: z.string().min(1).optional(),
  NATS_PASSWORD: secret(z.string().min(1).optional()),
};

export const natsEnv = {
  NATS_URL: envUrlList(['nats', 'tls', 'ws', 'wss']),
  ...natsAuthEnv,
};

/** Root of the NATS subjects and streams of events (tests use their own). Declared once, here. */
export const eventsEnv = {
  EVENT_SUBJECT_ROOT: z
    .string()
    .regex(/^[a-z][a-z0-9_-]*$/, 'lowercase letters, digits, "_" and "-"')
    .default('berth'),
};

export const redisEnv = {
  REDIS_URL: envUrl(['redis', 'rediss']),
  /** An ACL user; without one the connection is Redis's `default` user. */
  REDIS_USERNAME: z.string().min(1).optional(),
  REDIS_PASSWORD: secret(z.string().min(1).optional()),
};

/**
 * Where each cell's kubeconfig is: `<KUBECONFIG_DIR>/<cell>.<CELL_IDENTITY>.kubeconfig` when that
 * file exists, else `<KUBECONFIG_DIR>/<cell>.kubeconfig` (never in etcd). CELL_IDENTITY defaults
 * to the service's own (scheduler, discovery, ipam; docs/cells.md "Identities").
 */
export const cellsEnv = {
  KUBECONFIG_DIR: z.string().min(1).default('.local/cells'),
  CELL_IDENTITY: z
    .string()
    .regex(/^[a-z][a-z0-9-]{0,30}$/, 'lowercase letters, digits and "-"')
    .optional(),
};

// ---- Parsing ---------------------------------------------------------------------------------

type Env = Record<string, string | undefined>;

/**
 * Parses the environment once. Throws ConfigError with one issue per bad variable; registers
 * every secret value (and URL password) with the log scrubber.
 */
export function parseEnv<S extends z.ZodObject>(schema: S, env: Env = process.env): z.output<S> {
  const input: Record<string, string | undefined> = {};
  const fileIssues: FieldIssue[] = [];
  for (const key of Object.keys(schema.shape)) {
    input[key] = env[key];
    // A secret can come from a file (`NAME_FILE=/path`), so it is never in a process's
    // environment listing or command line.
    const file = env[`${key}_FILE`];
    if (input[key] === undefined && file && isSecretSchema(schema.shape[key])) {
      try {
        input[key] = readFileSync(file, 'utf8').replace(/\r?\n$/, '');
      } catch (err) {
        fileIssues.push({
          path: `${key}_FILE`,
          message: `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`,
        });
      }
    }
  }
  // Secret values are known before validation, so even a message about them cannot leak them.
  for (const [key, fieldSchema] of Object.entries(schema.shape)) {
    if (isSecretSchema(fieldSchema)) registerSecret(input[key]);
  }
  if (fileIssues.length > 0) throw new ConfigError(fileIssues);
  for (const value of Object.values(input)) registerUrlPasswords(value);

  const result = schema.safeParse(input);
  if (!result.success) {
    const issues: FieldIssue[] = result.error.issues.map((issue) => {
      const name = issue.path.map(String).join('.') || '(env)';
      const value = input[String(issue.path[0])];
      const isSecret = isSecretSchema(schema.shape[String(issue.path[0])]);
      const message = value === undefined && issue.code === 'invalid_type' ? 'required but not set' : issue.message;
      return { path: name, message: isSecret ? message.replace(/\(got .*\)$/, '(value hidden)') : message };
    });
    throw new ConfigError(issues);
  }
  return result.data;
}

function registerUrlPasswords(value: string | undefined): void {
  if (!value?.includes('@')) return;
  for (const item of value.split(',')) {
    try {
      const url = new URL(item.trim());
      if (url.password) registerSecret(decodeURIComponent(url.password));
    } catch {
      // not a URL
    }
  }
}

/** The parsed config with secret fields replaced and URL passwords hidden: safe to log. */
export function effectiveConfig<S extends z.ZodObject>(schema: S, config: z.output<S>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(config as Record<string, unknown>)) {
    if (isSecretSchema(schema.shape[key])) {
      out[key] = value === undefined ? undefined : REDACTED;
    } else if (typeof value === 'string' && value.includes('://')) {
      out[key] = redactUrl(value);
    } else if (Array.isArray(value)) {
      out[key] = value.map((v) => (typeof v === 'string' && v.includes('://') ? redactUrl(v) : v));
    } else {
      out[key] = value;
    }
  }
  return out;
}

/** This instance's id (leader election candidate, build agent id): host name and pid by default. */
export function defaultInstanceId(): string {
  return `${hostname()}-${process.pid}`;
}
