/**
 * The agent's intake: a BullMQ Worker on its own queue `builds-{region}-{id}` (concurrency = its
 * slots, job id = run id, job data `{runId, attempt}`), and the NATS subject on which the API
 * cancels an active run. Each active run has an AbortController: a cancel, a lost job lock
 * (`lockRenewalFailed`: another worker may get the job after the stalled check) and the shutdown
 * timeout abort it, each with its reason.
 */
import { type BuildJob, builderCancelSubject, buildJobSchema, buildQueueName } from '@berth/shared/builds';
import type { Logger } from '@berth/shared/logging';
import type { NatsComponent } from '@berth/shared/nats';
import type { Redis } from '@berth/shared/redis';
import { DelayedError, type Job, WaitingError, Worker } from 'bullmq';
import type { BuildRunner, RunOutcome } from './runs/build-runner.ts';
import { RunAborted } from './runs/build-runner.ts';

export type BuildWorkerOptions = {
  redis: Redis;
  nats: NatsComponent;
  subjectRoot: string;
  region: string;
  agentId: string;
  slots: number;
  lockDurationMs: number;
  runner: BuildRunner;
  logger: Logger;
  /** How long stop() lets active builds finish before aborting them. */
  drainTimeoutMs: number;
  onOutcome?: (outcome: RunOutcome) => void;
  onActive?: (count: number) => void;
};

const UNAVAILABLE_RETRY_MS = 5000;

type Active = { runId: string; attempt: number; controller: AbortController; done: Promise<unknown> };

export class BuildWorker {
  readonly name = 'build-worker';
  readonly queueName: string;
  readonly #o: BuildWorkerOptions;
  readonly #log: Logger;
  readonly #active = new Map<string, Active>();
  #worker: Worker<BuildJob> | undefined;
  #subscription: { unsubscribe(): void } | undefined;
  #paused = false;

  constructor(options: BuildWorkerOptions) {
    this.#o = options;
    this.queueName = buildQueueName(options.region, options.agentId);
    this.#log = options.logger.child({ component: 'build-worker', queue: this.queueName });
  }

  get active(): number {
    return this.#active.size;
  }

  get running(): boolean {
    return !!this.#worker?.isRunning() && !this.#paused;
  }

  async start(): Promise<void> {
    this.#subscription = this.#o.nats.client.connection.subscribe(
      builderCancelSubject(this.#o.subjectRoot, this.#o.agentId),
      {
        callback: (err, msg) => {
          if (err) return;
          try {
            const { runId, attempt } = buildJobSchema.parse(msg.json());
            this.cancel(runId, attempt, 'cancelled');
          } catch (e) {
            this.#log.warn({ err: (e as Error).message }, 'bad cancel message ignored');
          }
        },
      },
    );
    const worker = new Worker<BuildJob>(this.queueName, (job, token, signal) => this.#process(job, token, signal), {
      connection: this.#o.redis,
      concurrency: this.#o.slots,
      lockDuration: this.#o.lockDurationMs,
      maxStalledCount: 1,
      autorun: false,
    });
    worker.on('lockRenewalFailed', (jobIds) => {
      for (const id of jobIds) {
        this.#log.warn({ runId: id }, 'job lock not renewed: stopping the build here');
        this.cancel(id, undefined, 'lock-lost');
        worker.cancelJob(id, 'lock-lost');
      }
    });
    worker.on('error', (err) => this.#log.warn({ err: err.message }, 'worker error'));
    this.#worker = worker;
    void worker.run().catch((err: unknown) => this.#log.error({ err }, 'worker stopped'));
    await worker.waitUntilReady();
  }

  /** Takes nothing new (the lease was lost); active builds go on. */
  async pause(): Promise<void> {
    if (this.#paused || !this.#worker) return;
    this.#paused = true;
    await this.#worker.pause(true);
    this.#log.warn('paused: taking no new builds');
  }

  resume(): void {
    if (!this.#paused || !this.#worker) return;
    this.#paused = false;
    this.#worker.resume();
    this.#log.info('resumed: taking builds again');
  }

  /** Aborts an active run (when `attempt` matches, if given). True when one was running. */
  cancel(runId: string, attempt: number | undefined, kind: 'cancelled' | 'lock-lost' | 'shutdown'): boolean {
    const active = this.#active.get(runId);
    if (!active || (attempt !== undefined && active.attempt !== attempt)) return false;
    this.#log.info({ runId, attempt: active.attempt, kind }, 'aborting the build');
    active.controller.abort(new RunAborted(kind));
    return true;
  }

  /** Drains: takes nothing new, lets active builds finish, aborts them at the drain timeout. */
  async stop(): Promise<void> {
    this.#subscription?.unsubscribe();
    const worker = this.#worker;
    if (!worker) return;
    this.#worker = undefined;
    const closing = worker.close();
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      closing.then(() => false),
      new Promise<boolean>((r) => {
        timer = setTimeout(() => r(true), this.#o.drainTimeoutMs);
      }),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      this.#log.warn({ active: this.#active.size }, 'drain timeout: aborting active builds');
      for (const a of this.#active.values()) a.controller.abort(new RunAborted('shutdown'));
      await Promise.allSettled([...this.#active.values()].map((a) => a.done));
      await closing.catch(() => undefined);
    }
  }

  async #process(
    job: Job<BuildJob>,
    token: string | undefined,
    bullSignal: AbortSignal | undefined,
  ): Promise<{ result: string }> {
    const { runId, attempt } = buildJobSchema.parse(job.data);
    if (this.#paused) {
      // Fetched by a blocking read that was under way when the worker paused: back to waiting,
      // where the dispatcher may move it while this agent is unregistered.
      await job.moveToWait(token);
      throw new WaitingError();
    }
    const controller = new AbortController();
    bullSignal?.addEventListener('abort', () => {
      if (!controller.signal.aborted)
        controller.abort(new RunAborted('lock-lost', String(bullSignal.reason ?? 'job cancelled')));
    });
    const log = this.#log.child({ runId, attempt });
    log.info('build taken');
    const done = this.#o.runner.run(runId, attempt, controller.signal);
    this.#active.set(runId, { runId, attempt, controller, done });
    this.#o.onActive?.(this.#active.size);
    try {
      const outcome = await done;
      if (outcome.result === 'stale') log.info({ why: outcome.why }, 'stale job dropped');
      else if (outcome.result === 'abandoned') log.warn({ why: outcome.why }, 'build abandoned');
      else log.info({ result: outcome.result }, 'build ended');
      this.#o.onOutcome?.(outcome);
      if (outcome.result === 'abandoned') throw new Error(`abandoned: ${outcome.why}`);
      if (outcome.result === 'unavailable') {
        log.warn({ why: outcome.why }, 'run not readable; the job is retried in a few seconds');
        await job.moveToDelayed(Date.now() + UNAVAILABLE_RETRY_MS, token);
        throw new DelayedError();
      }
      return { result: outcome.result };
    } finally {
      this.#active.delete(runId);
      this.#o.onActive?.(this.#active.size);
    }
  }
}
