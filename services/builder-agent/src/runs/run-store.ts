/**
 * A run as its agent sees it: read once with its config, then every change is a compare-and-set
 * on the run's mod revision, re-read and re-applied on a conflict only while the run still holds
 * the agent's attempt and is not finished. A newer attempt (a retry, a re-queue after this agent
 * was thought lost) or a final state written by someone else makes every later write fail with
 * StaleAttemptError: the agent stops and writes nothing more.
 */
import {
  type BuildConfig,
  type BuildRun,
  buildConfigSchema,
  buildRunSchema,
  FINAL_BUILD_STATES,
} from '@berth/shared/builds';
import { BerthError, CompareFailedError } from '@berth/shared/errors';
import type { EventInput } from '@berth/shared/events';
import type { BerthKeys } from '@berth/shared/keys';
import type { EventsComponent } from '@berth/shared/nats';
import type { Store } from '@berth/shared/store';
import { z } from 'zod';

/** Only what the agent needs of the app: its incarnation (the rest is the API's to validate). */
const appIncarnationSchema = z.object({ incarnation: z.string().optional() });

/** The run moved on without this agent: another attempt, or finished by someone else. */
export class StaleAttemptError extends BerthError {
  constructor(message: string) {
    super(message, { code: 'stale-attempt' });
  }
}

export type RunChange = {
  /** Returns the run as it should become (from the current one), or undefined for no write. */
  apply: (run: BuildRun) => BuildRun | undefined;
  /** The event recorded with the change (in its transaction). */
  event?: (run: BuildRun) => Omit<EventInput, 'actor'> | undefined;
};

const MAX_CONFLICTS = 5;

/**
 * The run as stored, unknown fields kept: an agent older than the API writing the run back must
 * not drop what the API added to it (a rolling upgrade).
 */
const storedRunSchema = buildRunSchema.loose();

export class RunRecord {
  readonly #store: Store;
  readonly #key: string;
  readonly #events: EventsComponent | undefined;
  readonly #actor: string;
  /** The app's incarnation, on every event (a deleted app's events never reach a new one). */
  #incarnation: string | undefined;
  readonly attempt: number;
  #run: BuildRun;
  #modRevision: number;

  private constructor(
    store: Store,
    key: string,
    run: BuildRun,
    modRevision: number,
    events: EventsComponent | undefined,
    actor: string,
  ) {
    this.#store = store;
    this.#key = key;
    this.#run = run;
    this.#modRevision = modRevision;
    this.#events = events;
    this.#actor = actor;
    this.attempt = run.attempt;
  }

  /**
   * The run of a job and its config. Undefined (with why) when the job is stale: the run is gone,
   * holds another attempt, or is finished.
   */
  static async load(options: {
    store: Store;
    keys: BerthKeys;
    runId: string;
    attempt: number;
    events?: EventsComponent | undefined;
    actor: string;
  }): Promise<{ record: RunRecord; config: BuildConfig } | { stale: string }> {
    const key = options.keys.buildRun(options.runId);
    const stored = await options.store.get(key, storedRunSchema);
    if (!stored) return { stale: 'the run does not exist' };
    const run = stored.value;
    if (run.attempt !== options.attempt)
      return { stale: `the run is at attempt ${run.attempt}, not ${options.attempt}` };
    if (FINAL_BUILD_STATES.includes(run.state)) return { stale: `the run is already ${run.state}` };
    const config = await options.store.get(options.keys.buildConfig(run.app, run.config), buildConfigSchema);
    const app = await options.store.get(options.keys.app(run.app), appIncarnationSchema);
    const record = new RunRecord(options.store, key, run, stored.modRevision, options.events, options.actor);
    record.#incarnation = app?.value.incarnation;
    if (!config) {
      await record.update({
        apply: (r) => finish(r, 'failed', `build config ${run.app}/${run.config} does not exist`),
        event: (r) => runEvent(r),
      });
      return { stale: 'its build config does not exist' };
    }
    return { record, config: config.value };
  }

  get run(): Readonly<BuildRun> {
    return this.#run;
  }

  /** Applies a change with compare-and-set; throws StaleAttemptError when the run moved on. */
  async update(change: RunChange): Promise<BuildRun> {
    for (let tries = 0; ; tries++) {
      const next = change.apply(structuredClone(this.#run));
      if (!next) return this.#run;
      next.updatedAt = new Date().toISOString();
      const recorded = this.#events && change.event ? this.#record(change.event(next)) : undefined;
      try {
        const revision = await this.#store.commit([
          { op: 'update', key: this.#key, value: next, modRevision: this.#modRevision },
          ...(recorded ? [recorded.op] : []),
        ]);
        this.#run = next;
        this.#modRevision = revision;
        if (recorded) this.#events?.flush([recorded.event]);
        return next;
      } catch (err) {
        if (!(err instanceof CompareFailedError) || tries >= MAX_CONFLICTS) throw err;
        await this.#reread();
      }
    }
  }

  async #reread(): Promise<void> {
    const stored = await this.#store.get(this.#key, storedRunSchema);
    if (!stored) throw new StaleAttemptError('the run was deleted');
    if (stored.value.attempt !== this.attempt) {
      throw new StaleAttemptError(`the run is at attempt ${stored.value.attempt} now, not ${this.attempt}`);
    }
    if (FINAL_BUILD_STATES.includes(stored.value.state)) {
      throw new StaleAttemptError(`the run was set to ${stored.value.state} by someone else`);
    }
    this.#run = stored.value;
    this.#modRevision = stored.modRevision;
  }

  #record(input: Omit<EventInput, 'actor'> | undefined) {
    if (!input || !this.#events) return undefined;
    return this.#events.record({
      ...input,
      ...(this.#incarnation ? { incarnation: this.#incarnation } : {}),
      actor: { type: 'service', name: this.#actor },
    } as EventInput);
  }
}

/** The run ended: its state, why, and when; a running step ends with it. */
export function finish(run: BuildRun, state: 'succeeded' | 'failed' | 'cancelled', reason: string | null): BuildRun {
  const now = new Date();
  run.state = state;
  run.reason = reason;
  run.finishedAt = now.toISOString();
  for (const step of run.steps) {
    if (step.state === 'running') {
      step.state = state === 'cancelled' ? 'cancelled' : 'failed';
      step.finishedAt = now.toISOString();
      step.durationMs = step.startedAt ? Math.max(0, now.getTime() - Date.parse(step.startedAt)) : null;
    }
  }
  return run;
}

/** The `build` event of a run's state: app-scoped (the app is the resource), the run its name. */
export function runEvent(run: BuildRun): Omit<EventInput, 'actor'> {
  return {
    kind: 'build',
    resourceId: run.app,
    resourceName: run.id,
    action: run.state,
    data: {
      runId: run.id,
      config: run.config,
      attempt: run.attempt,
      state: run.state,
      ...(run.reason ? { reason: run.reason } : {}),
      ...(run.commit ? { commit: run.commit } : {}),
      ...(run.image ? { image: run.image } : {}),
      ...(run.placement ? { agent: run.placement.agentId } : {}),
    },
  };
}
