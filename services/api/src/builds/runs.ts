/**
 * Build runs as the API drives them: start one (write it queued, then dispatch it), dispatch or
 * re-home it onto an agent's queue, cancel, retry, and fail an attempt whose agent was lost. Every
 * write goes through the API's one commit path (../http/mutation.ts) as a compare-and-set on the
 * run, so an agent's concurrent state writes (fenced by `attempt`) and ours never overwrite each
 * other; each change is a `build` event in the app's feed.
 *
 * A run's id is its config's id followed by its number in base 36 (8 digits): one config's runs
 * are one etcd range (`builds/{configId}`), in order, and no index has to be kept.
 */
import {
  BUILD_STEPS,
  type BuildConfig,
  type BuilderRegistration,
  type BuildPlacement,
  type BuildRun,
  type BuildStep,
  buildConfigSchema,
  builderCancelSubject,
  builderClearCacheSubject,
  builderRegistrationSchema,
  buildRunSchema,
  type ClearCacheReply,
  type ClearCacheRequest,
  clearCacheReplySchema,
  dispatchKey,
  FINAL_BUILD_STATES,
} from '@berth/shared/builds';
import { ConflictError, NotFoundError } from '@berth/shared/errors';
import type { Logger } from '@berth/shared/logging';
import { type App, appSchema } from '@berth/shared/model';
import type { EventSubjects, NatsComponent } from '@berth/shared/nats';
import type { Op, Stored } from '@berth/shared/store';
import type { Principal } from '../auth/principal.ts';
import type { ChangeEvent } from '../http/mutation.ts';
import { type ApiContext, now } from '../resources/context.ts';
import { choosePlacement } from './placement.ts';
import type { BullMqBuildQueues } from './queues.ts';

export type BuildRunsOptions = {
  ctx: ApiContext;
  queues: BullMqBuildQueues;
  nats: NatsComponent;
  subjects: EventSubjects;
  /** A home queue with `spillFactor × slots` waiting jobs spills to the next agent. Default 2. */
  spillFactor?: number;
};

export type StartRunInput = {
  ref: string;
  commit?: string | null;
  /** A tag push: the image is tagged with the git tag. */
  gitTag?: string | undefined;
  trigger: BuildRun['trigger'];
  /** The image, when known before the build (a pinned commit); from the run's number. */
  image?: (runNumber: number) => BuildRun['image'];
  /** Ops committed with the run (a webhook's delivery record). */
  extraOps?: Op[];
  /** Maps a failed compare of an extra op to the caller's error. */
  onFailed?: (failedKeys: string[]) => Error | undefined;
};

export type CancelOutcome = { run: BuildRun; requested: boolean };

/** The run id of a config's run number `n`. */
export function runIdOf(configId: string, n: number): string {
  return `${configId}${n.toString(36).padStart(8, '0')}`;
}

export function initialSteps(config: Pick<BuildConfig, 'compile'>): BuildStep[] {
  return BUILD_STEPS.map((name) => ({
    name,
    state: name === 'compile' && !config.compile ? 'skipped' : 'pending',
    startedAt: null,
    finishedAt: null,
    durationMs: null,
  }));
}

export function isFinal(run: Pick<BuildRun, 'state'>): boolean {
  return FINAL_BUILD_STATES.includes(run.state);
}

export class BuildRuns {
  readonly #ctx: ApiContext;
  readonly #queues: BullMqBuildQueues;
  readonly #nats: NatsComponent;
  readonly #subjects: EventSubjects;
  readonly #spillFactor: number;
  readonly #logger: Logger;

  constructor(options: BuildRunsOptions) {
    this.#ctx = options.ctx;
    this.#queues = options.queues;
    this.#nats = options.nats;
    this.#subjects = options.subjects;
    this.#spillFactor = options.spillFactor ?? 2;
    this.#logger = options.ctx.logger.child({ component: 'build-runs' });
  }

  get queues(): BullMqBuildQueues {
    return this.#queues;
  }

  async get(runId: string): Promise<Stored<BuildRun> | undefined> {
    return this.#ctx.store.get(this.#ctx.keys.buildRun(runId), buildRunSchema);
  }

  async require(runId: string): Promise<Stored<BuildRun>> {
    const run = await this.get(runId);
    if (!run) throw new NotFoundError(`no build ${runId}`);
    return run;
  }

  /** The config's runs, oldest first. */
  async listOf(configId: string): Promise<BuildRun[]> {
    return (await this.#ctx.store.list(`${this.#ctx.keys.buildRuns()}${configId}`, buildRunSchema)).map((r) => r.value);
  }

  /** The live (registered, leased) agents of a region. */
  async liveAgents(region: string): Promise<BuilderRegistration[]> {
    return (
      await this.#ctx.store.list(this.#ctx.keys.builders(region), builderRegistrationSchema, {
        directChildrenOnly: true,
      })
    ).map((a) => a.value);
  }

  /** Writes a new queued run of the config, then dispatches it. */
  async start(actor: Principal | string, appName: string, configName: string, input: StartRunInput): Promise<BuildRun> {
    const { store, keys, mutations } = this.#ctx;
    const run = await mutations.commit(
      actor,
      async () => {
        const [app, config] = await Promise.all([
          store.get(keys.app(appName), appSchema),
          store.get(keys.buildConfig(appName, configName), buildConfigSchema),
        ]);
        if (!app) throw new NotFoundError(`no app "${appName}"`);
        if (!config) throw new NotFoundError(`app "${appName}" has no build config "${configName}"`);
        const number = (config.value.lastRun ?? 0) + 1;
        const at = now();
        const run: BuildRun = {
          id: runIdOf(config.value.id, number),
          app: appName,
          config: configName,
          configId: config.value.id,
          number,
          trigger: input.trigger,
          ref: input.ref,
          commit: input.commit ?? null,
          attempt: 1,
          state: 'queued',
          reason: null,
          placement: null,
          steps: initialSteps(config.value),
          cache: { enabled: config.value.cache, hit: null },
          image: input.image?.(number) ?? null,
          createdAt: at,
          updatedAt: at,
          finishedAt: null,
        };
        return {
          ops: [
            {
              op: 'update',
              key: config.key,
              value: { ...config.value, lastRun: number },
              modRevision: config.modRevision,
            },
            { op: 'create', key: keys.buildRun(run.id), value: run },
            ...(input.extraOps ?? []),
          ],
          events: [this.#event(app.value, run, 'created', { after: run })],
          onFailed: input.onFailed,
          result: () => run,
        };
      },
      { serializeOn: `build-config:${appName}/${configName}`, what: 'the build config' },
    );
    return this.#dispatchOrLeave(run);
  }

  /** Dispatches a run just written; when that fails (Redis away) it stays queued for the dispatcher's next pass. */
  async #dispatchOrLeave(run: BuildRun): Promise<BuildRun> {
    try {
      return (await this.dispatch(run.id)) ?? run;
    } catch (err) {
      this.#logger.warn({ err, runId: run.id }, 'build not dispatched yet; the dispatcher retries');
      return (await this.get(run.id))?.value ?? run;
    }
  }

  /**
   * Places a queued run without a placement (or, with `rehome`, one placed on an agent that left)
   * on an agent's queue. Leaves it queued without placement when no agent may take it; the
   * dispatcher places it when one registers. Answers the run as it is afterwards.
   */
  async dispatch(runId: string, options: { rehomeFrom?: string } = {}): Promise<BuildRun | undefined> {
    const { store, keys, mutations } = this.#ctx;
    const decided = await mutations.commit(
      'build-dispatcher',
      async () => {
        const run = await this.get(runId);
        if (run?.value.state !== 'queued') return { done: undefined };
        const current = run.value.placement;
        if (current && current.agentId !== options.rehomeFrom) return { done: undefined };
        const app = await store.get(keys.app(run.value.app), appSchema);
        if (!app) return { done: undefined };
        const region = app.value.region;
        const agents = (await this.liveAgents(region)).filter((a) => a.id !== options.rehomeFrom);
        const waiting = new Map<string, number>();
        await Promise.all(agents.map(async (a) => waiting.set(a.id, await this.#queues.waitingCount(region, a.id))));
        const placement = choosePlacement({
          key: dispatchKey({ id: run.value.configId }),
          agents,
          waiting,
          rehome: options.rehomeFrom !== undefined,
          spillFactor: this.#spillFactor,
        });
        if (!placement && !current) return { done: undefined };
        const next: BuildRun = { ...run.value, placement: placement ?? null, updatedAt: now() };
        return {
          ops: [{ op: 'update', key: run.key, value: next, modRevision: run.modRevision }],
          events: [
            this.#event(app.value, next, placement ? 'dispatched' : 'waiting', {
              data: { placement: placement ?? null, attempt: next.attempt, region },
            }),
          ],
          result: (revision) => ({ run: next, region, placement, revision }),
        };
      },
      { what: 'the build' },
    );
    if (!decided) return (await this.get(runId))?.value;
    const { run, region, placement } = decided;
    if (!placement) return run;
    try {
      await this.#queues.add(region, placement.agentId, { runId, attempt: run.attempt });
    } catch (err) {
      // Not queued after all: take the placement back so the dispatcher tries again.
      this.#logger.warn({ err, runId, agentId: placement.agentId }, 'could not queue the build; it stays queued');
      await this.#clearPlacement(runId, placement).catch(() => undefined);
      throw err;
    }
    return run;
  }

  async #clearPlacement(runId: string, placement: BuildPlacement): Promise<void> {
    await this.#ctx.mutations.commit('build-dispatcher', async () => {
      const run = await this.get(runId);
      if (run?.value.state !== 'queued' || run.value.placement?.agentId !== placement.agentId) {
        return { done: undefined };
      }
      return {
        ops: [
          {
            op: 'update',
            key: run.key,
            value: { ...run.value, placement: null, updatedAt: now() },
            modRevision: run.modRevision,
          },
        ],
        result: () => undefined,
      };
    });
  }

  /**
   * Cancels a run: one still waiting in a queue is taken off it and cancelled here; one an agent
   * runs gets a cancel on the agent's subject, and the agent marks it cancelled.
   */
  async cancel(actor: Principal, runId: string): Promise<CancelOutcome> {
    const { store, keys, mutations } = this.#ctx;
    type Outcome = { run: BuildRun; requested: boolean; agentId: string | undefined; app: App };
    const outcome = await mutations.commit<Outcome>(
      actor,
      async () => {
        const run = await this.require(runId);
        if (isFinal(run.value)) throw new ConflictError(`build ${runId} is already ${run.value.state}`);
        const app = await store.get(keys.app(run.value.app), appSchema);
        if (!app) throw new NotFoundError(`no app "${run.value.app}"`);
        const placement = run.value.placement;
        if (run.value.state !== 'queued' && placement) {
          return { done: { run: run.value, requested: true, agentId: placement.agentId, app: app.value } };
        }
        if (placement && !(await this.#queues.remove(app.value.region, placement.agentId, runId))) {
          // An agent took it meanwhile: it is running, so the agent cancels it.
          return { done: { run: run.value, requested: true, agentId: placement.agentId, app: app.value } };
        }
        const at = now();
        const next: BuildRun = {
          ...run.value,
          state: 'cancelled',
          reason: `cancelled by ${actor.user}`,
          steps: run.value.steps.map((s) =>
            s.state === 'pending' || s.state === 'running' ? { ...s, state: 'cancelled' } : s,
          ),
          updatedAt: at,
          finishedAt: at,
        };
        return {
          ops: [{ op: 'update', key: run.key, value: next, modRevision: run.modRevision }],
          events: [this.#event(app.value, next, 'cancelled', { data: { attempt: next.attempt, state: 'queued' } })],
          result: () => ({ run: next, requested: false, agentId: undefined, app: app.value }),
        };
      },
      { what: 'the build' },
    );
    if (outcome.requested && outcome.agentId) {
      this.#nats.client.connection.publish(
        builderCancelSubject(this.#subjects.root, outcome.agentId),
        JSON.stringify({ runId, attempt: outcome.run.attempt }),
      );
      await this.#ctx.events.emit({
        kind: 'build',
        resourceId: outcome.app.name,
        ...(outcome.app.incarnation ? { incarnation: outcome.app.incarnation } : {}),
        resourceName: runId,
        action: 'cancel-requested',
        actor: { type: 'user', name: actor.user },
        data: { attempt: outcome.run.attempt, agentId: outcome.agentId },
      });
    }
    return { run: outcome.run, requested: outcome.requested };
  }

  /**
   * Asks every live agent of the app's region to drop the config's cache (a config's cache can be
   * on several: spills and rehomes) and gathers their answers for up to `waitMs`. Agents that did
   * not answer in time are named; they drop nothing until asked again.
   */
  async clearCache(
    actor: Principal,
    app: App,
    config: BuildConfig,
    waitMs = 3000,
  ): Promise<{ agents: ClearCacheReply[]; missing: string[] }> {
    const live = await this.liveAgents(app.region);
    const agents: ClearCacheReply[] = [];
    if (live.length > 0) {
      const request: ClearCacheRequest = { configId: config.id, by: actor.user };
      const replies = await this.#nats.client.connection.requestMany(
        builderClearCacheSubject(this.#subjects.root),
        JSON.stringify(request),
        { strategy: 'count', maxMessages: live.length, maxWait: waitMs },
      );
      for await (const msg of replies) {
        const reply = clearCacheReplySchema.safeParse(safeJson(msg.string()));
        if (reply.success) agents.push(reply.data);
        else this.#logger.warn({ issues: reply.error.issues }, 'a malformed clear-cache reply');
      }
    }
    agents.sort((a, b) => a.agentId.localeCompare(b.agentId));
    const answered = new Set(agents.map((a) => a.agentId));
    const missing = live.map((a) => a.id).filter((id) => !answered.has(id));
    await this.#ctx.events.emit({
      kind: 'build',
      resourceId: app.name,
      ...(app.incarnation ? { incarnation: app.incarnation } : {}),
      resourceName: `config:${config.name}`,
      action: 'cache-cleared',
      actor: { type: 'user', name: actor.user },
      data: { freedBytes: agents.reduce((sum, a) => sum + a.freedBytes, 0), agents: agents.length, missing },
    });
    return { agents, missing };
  }

  /** Starts a failed or cancelled run again as its next attempt. */
  async retry(actor: Principal, runId: string): Promise<BuildRun> {
    await this.#nextAttempt(actor, runId, undefined, (run) => {
      if (run.state !== 'failed' && run.state !== 'cancelled') {
        throw new ConflictError(`build ${runId} is ${run.state}: only a failed or cancelled build is retried`);
      }
      return { ended: { state: run.state, reason: run.reason }, action: 'retried' };
    });
    return this.#dispatchOrLeave((await this.require(runId)).value);
  }

  /**
   * The agent of the run's `attempt` was lost and its job's lock has expired: the attempt failed
   * as `agent-lost`, and the run is queued once more as attempt + 1 on another agent, once per run
   * (a second loss ends it failed). Does nothing when the run moved on meanwhile.
   */
  async failLostAttempt(runId: string, attempt: number, agentId: string): Promise<BuildRun | undefined> {
    let requeued = false;
    const changed = await this.#nextAttempt('build-dispatcher', runId, attempt, (run) => {
      if (isFinal(run) || run.placement?.agentId !== agentId) return undefined;
      const lostBefore = (run.history ?? []).some((h) => h.reason === 'agent-lost');
      requeued = !lostBefore;
      return { ended: { state: 'failed', reason: 'agent-lost' }, action: 'requeued', final: lostBefore };
    });
    if (!changed) return undefined;
    if (!requeued) return changed;
    return (await this.dispatch(runId, { rehomeFrom: agentId })) ?? changed;
  }

  /**
   * Ends the run's current attempt as `ended` (recorded in its history) and queues attempt + 1,
   * or, with `final`, leaves the run ended. `decide` returns undefined to change nothing.
   */
  async #nextAttempt(
    actor: Principal | string,
    runId: string,
    expectedAttempt: number | undefined,
    decide: (
      run: BuildRun,
    ) => { ended: { state: BuildRun['state']; reason: string | null }; action: string; final?: boolean } | undefined,
  ): Promise<BuildRun | undefined> {
    const { store, keys, mutations } = this.#ctx;
    return mutations.commit(
      actor,
      async () => {
        const run = await this.require(runId);
        if (expectedAttempt !== undefined && run.value.attempt !== expectedAttempt) return { done: undefined };
        const decision = decide(run.value);
        if (!decision) return { done: undefined };
        const [app, config] = await Promise.all([
          store.get(keys.app(run.value.app), appSchema),
          store.get(keys.buildConfig(run.value.app, run.value.config), buildConfigSchema),
        ]);
        if (!app) throw new NotFoundError(`no app "${run.value.app}"`);
        const at = now();
        const ended = {
          attempt: run.value.attempt,
          state: decision.ended.state,
          reason: decision.ended.reason,
          placement: run.value.placement,
          finishedAt: at,
        };
        const events: ChangeEvent[] = [];
        let next: BuildRun;
        if (decision.final) {
          next = { ...run.value, state: 'failed', reason: decision.ended.reason, updatedAt: at, finishedAt: at };
          events.push(
            this.#event(app.value, next, 'failed', { data: { attempt: run.value.attempt, reason: next.reason } }),
          );
        } else {
          next = {
            ...run.value,
            attempt: run.value.attempt + 1,
            state: 'queued',
            reason: null,
            placement: null,
            steps: initialSteps(config?.value ?? {}),
            cache: { ...run.value.cache, hit: null },
            image: run.value.image ? { ...run.value.image, digest: null } : null,
            history: [...(run.value.history ?? []), ended],
            updatedAt: at,
            finishedAt: null,
          };
          if (decision.ended.reason === 'agent-lost') {
            events.push(
              this.#event(app.value, next, 'failed', {
                data: { attempt: run.value.attempt, reason: 'agent-lost', agentId: run.value.placement?.agentId },
              }),
            );
          }
          events.push(this.#event(app.value, next, decision.action, { data: { attempt: next.attempt } }));
        }
        return {
          ops: [{ op: 'update', key: run.key, value: next, modRevision: run.modRevision }],
          events,
          result: () => next,
        };
      },
      { what: 'the build' },
    );
  }

  #event(
    app: App,
    run: BuildRun,
    action: string,
    extra: Pick<ChangeEvent, 'before' | 'after' | 'data'> = {},
  ): ChangeEvent {
    return {
      kind: 'build',
      resourceId: app.name,
      ...(app.incarnation ? { incarnation: app.incarnation } : {}),
      resourceName: run.id,
      action,
      ...extra,
    };
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
