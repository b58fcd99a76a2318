import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import {
  envDuration,
  envHostPort,
  envInt,
  envUrlList,
  etcdEnv,
  eventsEnv,
  natsAuthEnv,
  redisEnv,
  secret,
  serviceEnv,
} from '@berth/shared/config';
import { robotKeySchema } from '@berth/shared/registry';
import { z } from 'zod';

const DEFAULT_DATA_DIR = '.local/data/builder';
const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * The machine's identity: a hash of /etc/machine-id and the data dir, so a restart keeps its
 * affinity (its caches live in that dir) and two agents with their own dirs on one host differ.
 */
export function defaultBuilderId(dataDir: string): string {
  let machine: string;
  try {
    machine = readFileSync('/etc/machine-id', 'utf8').trim();
  } catch {
    machine = hostname();
  }
  return `b${createHash('sha256')
    .update(`${machine}\n${resolve(dataDir)}`)
    .digest('hex')
    .slice(0, 15)}`;
}

/** `k=v,k2=v2` into a record; keys and values as Kubernetes label values (≤ 63 chars). */
const labelsSchema = z
  .string()
  .optional()
  .transform((text, ctx) => {
    const out: Record<string, string> = {};
    for (const item of (text ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)) {
      const m = /^([A-Za-z0-9_./-]{1,63})=([A-Za-z0-9_.-]{0,63})$/.exec(item);
      if (!m?.[1] || m[2] === undefined) {
        ctx.addIssue({ code: 'custom', message: `expected key=value[,key=value…] (got "${item}")` });
        return z.NEVER;
      }
      out[m[1]] = m[2];
    }
    return out;
  });

/** A byte count: `10737418240`, or with a unit (`512Mi`, `10Gi`, `2G`). */
const bytesSchema = (defaultValue: number) =>
  z
    .string()
    .trim()
    .optional()
    .transform((v, ctx) => {
      if (v === undefined || v === '') return defaultValue;
      const m = /^(\d+)(Ki|Mi|Gi|Ti|K|M|G|T)?$/.exec(v);
      if (!m?.[1]) {
        ctx.addIssue({ code: 'custom', message: `expected bytes like 10737418240 or 10Gi (got "${v}")` });
        return z.NEVER;
      }
      const unit: Record<string, number> = {
        Ki: 2 ** 10,
        Mi: 2 ** 20,
        Gi: 2 ** 30,
        Ti: 2 ** 40,
        K: 1e3,
        M: 1e6,
        G: 1e9,
        T: 1e12,
      };
      return Number(m[1]) * (m[2] ? (unit[m[2]] ?? 1) : 1);
    });

export const builderAgentEnv = z
  .object({
    ...serviceEnv,
    ...etcdEnv,
    ...redisEnv,
    ...eventsEnv,
    HTTP_ADDR: envHostPort('127.0.0.1:7072'),
    NATS_URL: envUrlList(['nats', 'tls']),
    ...natsAuthEnv,
    /** Mirrors, workspaces and caches live here (absolute, or relative to the working dir). */
    BUILDER_DATA_DIR: z
      .string()
      .min(1)
      .default(DEFAULT_DATA_DIR)
      .transform((d) => resolve(d)),
    /** This build machine's id (its queue is `builds-<region>-<id>`); default: from the machine and the data dir. */
    BUILDER_ID: z.string().regex(ID_PATTERN, 'letters, digits, "_" and "-" only, at most 64').optional(),
    /** Builds run at once (the worker's concurrency). */
    BUILDER_SLOTS: envInt(2, { min: 1, max: 256 }),
    /** Share of configs this machine is home to; default its slots. */
    BUILDER_WEIGHT: z
      .string()
      .optional()
      .transform((v, ctx) => {
        if (v === undefined || v === '') return undefined;
        const n = Number(v);
        if (!Number.isFinite(n) || n <= 0 || n > 1_000_000) {
          ctx.addIssue({ code: 'custom', message: `expected a positive number (got "${v}")` });
          return z.NEVER;
        }
        return n;
      }),
    BUILDER_LABELS: labelsSchema,
    /** Total bytes of the per-config caches; the least recently used are evicted past it. */
    BUILDER_CACHE_BUDGET: bytesSchema(10 * 2 ** 30),
    BUILDER_LEASE_TTL_SECONDS: envInt(10, { min: 2, max: 120 }),
    /** How often the registration is rewritten with free disk and cache size. */
    BUILDER_REPORT_INTERVAL: envDuration('30s'),
    /** BullMQ's job lock: a build whose lock is not renewed for this long is stalled. */
    BUILDER_LOCK_DURATION: envDuration('120s'),
    BUILD_CLONE_TIMEOUT: envDuration('5m'),
    BUILD_COMPILE_TIMEOUT: envDuration('30m'),
    BUILD_BUILD_TIMEOUT: envDuration('30m'),
    BUILD_PUSH_TIMEOUT: envDuration('15m'),
    /** The region's registry, host:port; images are pushed as `<addr>/<group>/<repo>:<tag>`. */
    REGISTRY_ADDR: z
      .string()
      .regex(/^[A-Za-z0-9.-]+(:\d{1,5})?$/, 'expected host or host:port')
      .default('127.0.0.1:5000'),
    /** http for a registry on loopback (the default), https otherwise. */
    REGISTRY_SCHEME: z.enum(['http', 'https']).optional(),
    /**
     * This agent's robot key (`deriveAgentKey(master, BUILDER_ID)`, 64+ hex digits): each run
     * pushes with its own credential `build@{runId}.{attempt}` derived from it. Or `_FILE`.
     */
    BUILDER_REGISTRY_KEY: secret(robotKeySchema.optional()),
    /** A static credential for pushes instead (a registry with plain users); none while the registry has no auth. */
    REGISTRY_USERNAME: z.string().min(1).optional(),
    REGISTRY_PASSWORD: secret(z.string().min(1).optional()),
    /** Docker Engine API socket or URL (`unix:///…`, `tcp://…`); default /var/run/docker.sock. */
    DOCKER_HOST: z.string().min(1).optional(),
    /** Where git credentials named by a config's `credentialsRef` are (a file per name: `user:password` or a token). */
    BUILDER_CREDENTIALS_DIR: z.string().min(1).optional(),
  })
  .superRefine((c, ctx) => {
    if (c.REGISTRY_USERNAME && !c.REGISTRY_PASSWORD) {
      ctx.addIssue({ code: 'custom', path: ['REGISTRY_PASSWORD'], message: 'required with REGISTRY_USERNAME' });
    }
    if (c.BUILDER_REGISTRY_KEY && (c.REGISTRY_USERNAME || c.REGISTRY_PASSWORD)) {
      ctx.addIssue({
        code: 'custom',
        path: ['BUILDER_REGISTRY_KEY'],
        message: 'either BUILDER_REGISTRY_KEY or REGISTRY_USERNAME/REGISTRY_PASSWORD, not both',
      });
    }
    if (c.BUILDER_LOCK_DURATION < 5000) {
      ctx.addIssue({ code: 'custom', path: ['BUILDER_LOCK_DURATION'], message: 'at least 5s' });
    }
  });

export type BuilderAgentConfig = z.output<typeof builderAgentEnv>;

/** What the defaults resolve to: the id, the weight and the registry's scheme. */
export type ResolvedBuilderConfig = BuilderAgentConfig & {
  builderId: string;
  weight: number;
  registryScheme: 'http' | 'https';
};

export function resolveBuilderConfig(c: BuilderAgentConfig): ResolvedBuilderConfig {
  return {
    ...c,
    builderId: c.BUILDER_ID ?? defaultBuilderId(c.BUILDER_DATA_DIR),
    weight: c.BUILDER_WEIGHT ?? c.BUILDER_SLOTS,
    registryScheme: c.REGISTRY_SCHEME ?? (/^(127\.|localhost(:|$)|\[::1\])/.test(c.REGISTRY_ADDR) ? 'http' : 'https'),
  };
}
