/**
 * The contract of the build path (issue 12), shared by the API (configs, runs, webhooks,
 * dispatch, logs) and builder-agent (registration, queue, execution). Where a build runs is the
 * API's decision (weighted rendezvous over live agents, `rank`); running it is the agent's.
 *
 * - A build config: `{prefix}/apps/{app}/build-configs/{config}` (`BuildConfig`; the webhook
 *   secret is never in it: only its hash, and the API shows the secret once).
 * - A run: `{prefix}/builds/{runId}` (`BuildRun`). Every state change is a compare-and-set on the
 *   run's `attempt`, so an agent of an older attempt can never overwrite a newer one.
 * - A build machine: `{prefix}/builders/{region}/{agentId}` (`BuilderRegistration`) under its
 *   lease; its queue is BullMQ's `builds-{region}-{agentId}` (`buildQueueName`), job id = run id,
 *   job data `BuildJob` (no secrets in Redis).
 * - Logs: JetStream subject `{root}.builds.{runId}.log` (`EventSubjects.buildLog`), messages
 *   `BuildLogBatch`; cancelling an active run: NATS `{root}.agents.{agentId}.cancel` with
 *   `{runId, attempt}`.
 * - Clearing a config's cache: a NATS request on `{root}.agents.clear-cache` (`ClearCacheRequest`)
 *   that every agent hears (a config's cache may be on several: spills and rehomes); each answers
 *   `ClearCacheReply`, and the API gathers the answers of the live agents.
 * - Pushing: a one-run robot credential (`@berth/shared/registry`, `runPushCredential`).
 */
import { z } from 'zod';
import { dnsLabelSchema, userNameSchema } from '../model/index.ts';

export { rank, rendezvousScore, type WeightedAgent } from './rendezvous.ts';

/** A run's states, in order; `compiling` is skipped (and its step marked so) without a compile image. */
export const BUILD_STATES = [
  'queued',
  'cloning',
  'compiling',
  'building',
  'pushing',
  'succeeded',
  'failed',
  'cancelled',
] as const;
export type BuildState = (typeof BUILD_STATES)[number];
export const FINAL_BUILD_STATES: readonly BuildState[] = ['succeeded', 'failed', 'cancelled'];

export const BUILD_STEPS = ['clone', 'compile', 'build', 'push'] as const;
export type BuildStepName = (typeof BUILD_STEPS)[number];

/** A git URL: https, ssh (`git@host:path`), `file://` or an absolute local path (repositories on the build machine, tests). */
export const gitUrlSchema = z
  .string()
  .min(1)
  .max(2048)
  .refine(
    (u) => /^(https?|ssh|git|file):\/\//.test(u) || /^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:/.test(u) || u.startsWith('/'),
    'expected an https, ssh, git or file URL, user@host:path, or an absolute path',
  );

/** A repository in the region's registry: `group/repo` (the image group, then the repository). */
export const imageTargetSchema = z
  .string()
  .max(255)
  .regex(/^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)+$/, 'expected group/repo');

export const buildConfigSchema = z.object({
  /** The config's name within its app. */
  name: dnsLabelSchema,
  app: dnsLabelSchema,
  /** Installation-wide id (webhook URLs, dispatch key): stable for the config's life. */
  id: z.string().regex(/^[a-z0-9]{16,32}$/),
  git: z.object({
    url: gitUrlSchema,
    branch: z.string().min(1).max(255).default('main'),
    /** Names a credential the API keeps (never the credential itself). */
    credentialsRef: z.string().min(1).max(128).optional(),
  }),
  dockerfile: z.string().min(1).max(1024).default('Dockerfile'),
  context: z.string().min(1).max(1024).default('.'),
  compile: z.object({ image: z.string().min(1).max(512), script: z.string().min(1).max(65_536) }).optional(),
  cache: z.boolean().default(true),
  /** `{branch}`, `{sha7}`, `{sha}`, `{tag}`, `{run}` are replaced. */
  tag: z.string().min(1).max(128).default('{branch}-{sha7}'),
  target: imageTargetSchema,
  autoDeploy: z.boolean().default(false),
  triggers: z
    .object({
      branches: z.array(z.string().min(1).max(255)).max(32),
      tags: z.array(z.string().min(1).max(255)).max(32),
    })
    .partial()
    .optional(),
  /** sha256 (hex) of the webhook secret; the secret itself is shown once. */
  webhookSecretHash: z.string().regex(/^[0-9a-f]{64}$/),
  /**
   * With the API's webhook key, derives the secret (HMAC-SHA256 of the id and this nonce): GitHub
   * and Gitea sign with the secret itself, which the API therefore re-derives rather than stores.
   */
  webhookSecretNonce: z.string().max(64).optional(),
  /** The git host that calls the webhook (the URL the API shows); every provider's URL works. */
  provider: z.enum(['github', 'gitlab', 'gitea']).optional(),
  /** The number of the newest run (the next one is `lastRun + 1`). */
  lastRun: z.number().int().min(0).optional(),
  createdAt: z.iso.datetime(),
  createdBy: userNameSchema,
  updatedAt: z.iso.datetime(),
});
export type BuildConfig = z.infer<typeof buildConfigSchema>;

export const buildStepSchema = z.object({
  name: z.enum(BUILD_STEPS),
  state: z.enum(['pending', 'running', 'succeeded', 'failed', 'skipped', 'cancelled']),
  startedAt: z.iso.datetime().nullable(),
  finishedAt: z.iso.datetime().nullable(),
  durationMs: z.number().int().min(0).nullable(),
  /** Why the step failed (Docker's or git's message), one line. */
  error: z.string().max(4096).optional(),
});
export type BuildStep = z.infer<typeof buildStepSchema>;

export const buildPlacementSchema = z.object({
  agentId: z.string().min(1).max(128),
  /** The agent's place in the config's rendezvous ranking (1: its home). */
  rank: z.number().int().min(1),
  /** affinity: the home agent; spill: the home's queue was too deep or draining; rehome: the home left. */
  reason: z.enum(['affinity', 'spill', 'rehome']),
});
export type BuildPlacement = z.infer<typeof buildPlacementSchema>;

/** An attempt that ended before the run's current one. */
export const buildAttemptSchema = z.object({
  attempt: z.number().int().min(1),
  state: z.enum(BUILD_STATES),
  reason: z.string().max(4096).nullable(),
  placement: buildPlacementSchema.nullable(),
  finishedAt: z.iso.datetime(),
});
export type BuildAttempt = z.infer<typeof buildAttemptSchema>;

export const buildRunSchema = z.object({
  id: z.string().regex(/^[a-z0-9]{16,32}$/),
  app: dnsLabelSchema,
  config: dnsLabelSchema,
  configId: z.string(),
  /** Per config, 1, 2, … (the `{run}` of the tag). */
  number: z.number().int().min(1),
  trigger: z.object({
    type: z.enum(['manual', 'webhook', 'retry']),
    by: z.string().min(1).max(253),
    /** The provider's delivery id (webhooks): a redelivery starts nothing. */
    delivery: z.string().max(255).optional(),
  }),
  /** What was asked: a branch, a tag or a commit. */
  ref: z.string().min(1).max(255),
  /** The exact commit built (set by the clone step, or pinned by the webhook). */
  commit: z
    .string()
    .regex(/^[0-9a-f]{40}$/)
    .nullable(),
  /** Bumped by every retry and every re-queue after an agent was lost; fences state writes. */
  attempt: z.number().int().min(1),
  state: z.enum(BUILD_STATES),
  /** Why a failed or cancelled run ended: `agent-lost`, `timeout`, the step's error. */
  reason: z.string().max(4096).nullable(),
  placement: buildPlacementSchema.nullable(),
  steps: z.array(buildStepSchema),
  cache: z.object({ enabled: z.boolean(), hit: z.boolean().nullable() }),
  image: z.object({ repository: z.string(), tag: z.string(), digest: z.string().nullable() }).nullable(),
  createdAt: z.iso.datetime(),
  updatedAt: z.iso.datetime(),
  finishedAt: z.iso.datetime().nullable(),
  /** Earlier attempts of this run, oldest first: how each ended (agent-lost, a retry by hand). */
  history: z.array(buildAttemptSchema).optional(),
  /** The version an autoDeploy config created from this run's image. */
  deployedVersion: z.string().max(64).optional(),
});
export type BuildRun = z.infer<typeof buildRunSchema>;

/** A build machine's registration, under its lease. */
export const builderRegistrationSchema = z.object({
  id: z.string().min(1).max(128),
  region: dnsLabelSchema,
  /** Builds run at once. */
  slots: z.number().int().min(1).max(256),
  /** Share of configs it is home to (default its slots). */
  weight: z.number().positive().max(1_000_000),
  labels: z.record(z.string().max(63), z.string().max(63)).default({}),
  /** True while it finishes what it runs and takes nothing new. */
  draining: z.boolean().default(false),
  diskFreeBytes: z.number().int().min(0),
  cacheBytes: z.number().int().min(0),
  version: z.string().max(64),
  startedAt: z.iso.datetime(),
  reportedAt: z.iso.datetime(),
});
export type BuilderRegistration = z.infer<typeof builderRegistrationSchema>;

/** BullMQ job data: only ids; the agent reads the run and its config from etcd. */
export const buildJobSchema = z.object({ runId: z.string(), attempt: z.number().int().min(1) });
export type BuildJob = z.infer<typeof buildJobSchema>;

/** One JetStream message of a run's log: lines batched (≤ 100 ms or 16 KB), each stamped with its step. */
export const buildLogBatchSchema = z.object({
  runId: z.string(),
  attempt: z.number().int().min(1),
  step: z.enum(BUILD_STEPS),
  /** Per run and attempt, from 1: a reader sees gaps. */
  seq: z.number().int().min(1),
  lines: z.array(z.object({ ts: z.iso.datetime(), stream: z.enum(['stdout', 'stderr', 'system']), text: z.string() })),
});
export type BuildLogBatch = z.infer<typeof buildLogBatchSchema>;

/** The BullMQ queue of one build machine. */
export function buildQueueName(region: string, agentId: string): string {
  return `builds-${region}-${agentId}`;
}

/** NATS subject on which an agent hears "cancel this active run". */
export function builderCancelSubject(root: string, agentId: string): string {
  return `${root}.agents.${agentId}.cancel`;
}

/** NATS subject on which every agent hears "drop the cache of this config" (a request). */
export function builderClearCacheSubject(root: string): string {
  return `${root}.agents.clear-cache`;
}

export const clearCacheRequestSchema = z.object({ configId: z.string().min(1).max(64), by: z.string().max(253) });
export type ClearCacheRequest = z.infer<typeof clearCacheRequestSchema>;

export const clearCacheReplySchema = z.object({
  agentId: z.string().min(1).max(128),
  /** Bytes the config's cache held on that agent (0: it had none). */
  freedBytes: z.number().int().min(0),
  /** True when a build of the config holds the cache now: it is dropped when that build ends. */
  deferred: z.boolean(),
});
export type ClearCacheReply = z.infer<typeof clearCacheReplySchema>;

/** The dispatch key of a config: its id (one cache per config, so one home per config). */
export function dispatchKey(config: Pick<BuildConfig, 'id'>): string {
  return config.id;
}
