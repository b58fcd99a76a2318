/**
 * The build dispatcher, run by one API instance at a time (election `build-dispatcher`). It watches
 * the build machines' registrations in every region and the runs, level-triggered:
 *
 * - an agent appears: queued runs without a placement are dispatched;
 * - an agent's key disappears (its lease expired): its waiting jobs move to the next agent in each
 *   run's ranking (`rehome`); once its jobs' locks could have expired (`agentLostAfterMs`, at least
 *   the agents' BullMQ lockDuration), each active attempt fails as `agent-lost` and the run is
 *   queued again as attempt + 1 on another agent (once per run);
 * - a run of an autoDeploy config succeeds: the app's next version is created with the new tag.
 *
 * Watch handlers only enqueue; one worker does the work and retries failures with backoff.
 */
import { type BuildRun, buildConfigSchema, buildRunSchema, FINAL_BUILD_STATES } from '@berth/shared/builds';
import { type Etcd3, PrefixWatcher, type Versioned, type WatchChange } from '@berth/shared/etcd';
import type { Logger } from '@berth/shared/logging';
import { appSchema } from '@berth/shared/model';
import type { ApiContext } from '../resources/context.ts';
import type { Quotas } from '../resources/quotas.ts';
import { nextVersionChange } from '../resources/versions.ts';
import type { BuildRuns } from './runs.ts';

export type BuildDispatcherOptions = {
  ctx: ApiContext;
  etcd: Etcd3;
  runs: BuildRuns;
  quotas: Quotas;
  /** After an agent's lease ended, when its active attempts count as lost. */
  agentLostAfterMs: number;
  /** Between passes over queued runs without placement (a dispatch that failed, e.g. Redis away). Default 60 s. */
  resyncMs?: number;
};

/** How long a placed run may wait for its job to show in the queue before the job is added again. */
const LOST_JOB_GRACE_MS = 60_000;

type Task =
  | { kind: 'dispatch-unplaced' }
  | { kind: 'agent-lost'; region: string; agentId: string }
  | { kind: 'active-lost'; region: string; agentId: string }
  | { kind: 'auto-deploy'; runId: string }
  /** Runs placed on agents that are not live: agents lost while no dispatcher watched. */
  | { kind: 'orphans' };

export class BuildDispatcher {
  readonly name = 'build-dispatcher';
  readonly #o: BuildDispatcherOptions;
  readonly #logger: Logger;
  #agents: PrefixWatcher<unknown> | undefined;
  #builds: PrefixWatcher<unknown> | undefined;
  /** Agents known live, as `region/agentId`. */
  readonly #known = new Set<string>();
  readonly #lostTimers = new Map<string, NodeJS.Timeout>();
  readonly #tasks: Task[] = [];
  readonly #taskKeys = new Set<string>();
  #wake: (() => void) | undefined;
  #loop: Promise<void> | undefined;
  #running = false;
  #resync: NodeJS.Timeout | undefined;

  constructor(options: BuildDispatcherOptions) {
    this.#o = options;
    this.#logger = options.ctx.logger.child({ component: 'build-dispatcher' });
  }

  async start(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    this.#loop = this.#work();
    const { keys } = this.#o.ctx;
    const buildersPrefix = `${keys.prefix}/builders/`;
    this.#agents = new PrefixWatcher<unknown>({
      client: this.#o.etcd,
      prefix: buildersPrefix,
      logger: this.#logger,
      onSync: (view) => this.#syncAgents(view),
      onChange: (change) => this.#agentChanged(change),
    });
    this.#builds = new PrefixWatcher<unknown>({
      client: this.#o.etcd,
      prefix: keys.buildRuns(),
      logger: this.#logger,
      onChange: (change) => this.#runChanged(change),
    });
    await Promise.all([this.#agents.start(), this.#builds.start()]);
    this.#resync = setInterval(() => this.#enqueue({ kind: 'dispatch-unplaced' }), this.#o.resyncMs ?? 60_000);
  }

  async stop(): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    clearInterval(this.#resync);
    for (const t of this.#lostTimers.values()) clearTimeout(t);
    this.#lostTimers.clear();
    await Promise.all([this.#agents?.stop(), this.#builds?.stop()]);
    this.#agents = undefined;
    this.#builds = undefined;
    this.#known.clear();
    this.#wake?.();
    await this.#loop;
  }

  // ---- Watch handlers: filter and enqueue ---------------------------------------------------

  #parseAgent(key: string): { region: string; agentId: string } | undefined {
    const parsed = this.#o.ctx.keys.parse('builder', key);
    return parsed ? { region: parsed.region, agentId: parsed.agent } : undefined;
  }

  #syncAgents(view: ReadonlyMap<string, Versioned<unknown>>): void {
    const live = new Set<string>();
    for (const key of view.keys()) {
      const a = this.#parseAgent(key);
      if (a) live.add(`${a.region}/${a.agentId}`);
    }
    for (const known of [...this.#known]) {
      if (!live.has(known)) this.#lost(known);
    }
    for (const id of live) this.#appeared(id);
    this.#enqueue({ kind: 'dispatch-unplaced' });
    this.#enqueue({ kind: 'orphans' });
  }

  #agentChanged(change: WatchChange<unknown>): void {
    const a = this.#parseAgent(change.key);
    if (!a) return;
    const id = `${a.region}/${a.agentId}`;
    if (change.type === 'delete') {
      this.#lost(id);
      return;
    }
    const isNew = !this.#known.has(id);
    const wasDraining = (change.prev?.value as { draining?: boolean } | undefined)?.draining === true;
    const draining = (change.value as { draining?: boolean } | undefined)?.draining === true;
    this.#appeared(id);
    // A new agent, or one no longer draining: runs that found no agent may go now. (Agents
    // rewrite their registration every 30 s; those rewrites change nothing here.)
    if (isNew || (wasDraining && !draining)) this.#enqueue({ kind: 'dispatch-unplaced' });
  }

  #appeared(id: string): void {
    this.#known.add(id);
    const timer = this.#lostTimers.get(id);
    if (timer) {
      clearTimeout(timer);
      this.#lostTimers.delete(id);
    }
  }

  #lost(id: string): void {
    this.#known.delete(id);
    const [region, agentId] = id.split('/') as [string, string];
    this.#enqueue({ kind: 'agent-lost', region, agentId });
    this.#scheduleActiveCheck(region, agentId, this.#o.agentLostAfterMs);
  }

  #scheduleActiveCheck(region: string, agentId: string, afterMs: number): void {
    const id = `${region}/${agentId}`;
    clearTimeout(this.#lostTimers.get(id));
    this.#lostTimers.set(
      id,
      setTimeout(() => {
        this.#lostTimers.delete(id);
        this.#enqueue({ kind: 'active-lost', region, agentId });
      }, afterMs),
    );
  }

  #runChanged(change: WatchChange<unknown>): void {
    if (change.type !== 'put') return;
    const parsed = buildRunSchema.safeParse(change.value);
    if (!parsed.success) return;
    const run = parsed.data;
    const before = buildRunSchema.safeParse(change.prev?.value);
    if (run.state === 'succeeded' && !run.deployedVersion && (!before.success || before.data.state !== 'succeeded')) {
      this.#enqueue({ kind: 'auto-deploy', runId: run.id });
    }
  }

  // ---- The worker -----------------------------------------------------------------------------

  #enqueue(task: Task): void {
    const key = JSON.stringify(task);
    if (this.#taskKeys.has(key)) return;
    this.#taskKeys.add(key);
    this.#tasks.push(task);
    this.#wake?.();
  }

  async #work(): Promise<void> {
    while (this.#running) {
      const task = this.#tasks.shift();
      if (!task) {
        await new Promise<void>((r) => {
          this.#wake = r;
        });
        this.#wake = undefined;
        continue;
      }
      this.#taskKeys.delete(JSON.stringify(task));
      try {
        await this.#run(task);
      } catch (err) {
        if (!this.#running) return;
        this.#logger.warn({ err, task }, 'build dispatch task failed; retrying');
        setTimeout(() => this.#running && this.#enqueue(task), 500 + Math.random() * 1000);
      }
    }
  }

  async #run(task: Task): Promise<void> {
    switch (task.kind) {
      case 'dispatch-unplaced':
        return this.#dispatchUnplaced();
      case 'agent-lost':
        return this.#rehomeWaiting(task.region, task.agentId);
      case 'active-lost':
        return this.#failActive(task.region, task.agentId);
      case 'auto-deploy':
        return this.#autoDeploy(task.runId);
      case 'orphans':
        return this.#adoptOrphans();
    }
  }

  /** Unfinished runs placed on an agent that is not registered are handled as that agent's loss. */
  async #adoptOrphans(): Promise<void> {
    const { store, keys } = this.#o.ctx;
    const regions = new Map<string, string | undefined>();
    for (const run of await store.list(keys.buildRuns(), buildRunSchema)) {
      const agentId = run.value.placement?.agentId;
      if (!agentId || FINAL_BUILD_STATES.includes(run.value.state)) continue;
      if (!regions.has(run.value.app)) {
        regions.set(run.value.app, (await store.get(keys.app(run.value.app), appSchema))?.value.region);
      }
      const region = regions.get(run.value.app);
      const id = `${region}/${agentId}`;
      if (!region || this.#known.has(id) || this.#lostTimers.has(id)) continue;
      this.#lost(id);
    }
  }

  async #dispatchUnplaced(): Promise<void> {
    const { store, keys } = this.#o.ctx;
    const runs = await store.list(keys.buildRuns(), buildRunSchema);
    const regions = new Map<string, string | undefined>();
    for (const run of runs) {
      if (run.value.state !== 'queued') continue;
      const placement = run.value.placement;
      if (!placement) {
        await this.#o.runs.dispatch(run.value.id);
        continue;
      }
      // Placed on a live agent a while ago, but its job is not in the queue (the placing API died
      // in between, or Redis lost it): add it now. BullMQ dedupes on the job id.
      if (Date.now() - Date.parse(run.value.updatedAt) < LOST_JOB_GRACE_MS) continue;
      if (!regions.has(run.value.app)) {
        regions.set(run.value.app, (await store.get(keys.app(run.value.app), appSchema))?.value.region);
      }
      const region = regions.get(run.value.app);
      if (!region || !this.#known.has(`${region}/${placement.agentId}`)) continue;
      const { queues } = this.#o.runs;
      if (!(await queues.queue(region, placement.agentId).getJob(run.value.id))) {
        await queues.add(region, placement.agentId, { runId: run.value.id, attempt: run.value.attempt });
      }
    }
  }

  /** The lost agent's waiting jobs go to the next agent in each run's ranking. */
  async #rehomeWaiting(region: string, agentId: string): Promise<void> {
    if (this.#known.has(`${region}/${agentId}`)) return; // back meanwhile
    const { queues } = this.#o.runs;
    for (const job of await queues.waiting(region, agentId)) {
      if (!(await queues.remove(region, agentId, job.runId))) continue; // taken meanwhile: active
      await this.#o.runs.dispatch(job.runId, { rehomeFrom: agentId });
    }
    // Runs placed there whose job never made it into the queue.
    const { store, keys } = this.#o.ctx;
    for (const run of await store.list(keys.buildRuns(), buildRunSchema)) {
      if (run.value.state === 'queued' && run.value.placement?.agentId === agentId) {
        const job = await queues.queue(region, agentId).getJob(run.value.id);
        if (!job) await this.#o.runs.dispatch(run.value.id, { rehomeFrom: agentId });
      }
    }
  }

  /** Active attempts of an agent gone for longer than a lock lives: agent-lost, and retried once. */
  async #failActive(region: string, agentId: string): Promise<void> {
    if (this.#known.has(`${region}/${agentId}`)) return;
    const { queues } = this.#o.runs;
    let stillLocked = false;
    for (const job of await queues.active(region, agentId)) {
      if (await queues.locked(region, agentId, job.runId)) {
        stillLocked = true;
        continue;
      }
      await this.#o.runs.failLostAttempt(job.runId, job.attempt, agentId);
      await queues.remove(region, agentId, job.runId);
    }
    // Waiting jobs that arrived meanwhile move too.
    await this.#rehomeWaiting(region, agentId);
    if (stillLocked) this.#scheduleActiveCheck(region, agentId, 2000);
  }

  /** A succeeded run of an autoDeploy config: the app's next version with the run's image tag. */
  async #autoDeploy(runId: string): Promise<void> {
    const { store, keys, mutations } = this.#o.ctx;
    await mutations.commit(
      'build-dispatcher',
      async () => {
        const run = await store.get(keys.buildRun(runId), buildRunSchema);
        if (run?.value.state !== 'succeeded' || run.value.deployedVersion || !run.value.image) {
          return { done: undefined };
        }
        const [config, app] = await Promise.all([
          store.get(keys.buildConfig(run.value.app, run.value.config), buildConfigSchema),
          store.get(keys.app(run.value.app), appSchema),
        ]);
        if (!config?.value.autoDeploy || !app || config.value.id !== run.value.configId) return { done: undefined };
        if (app.value.image !== run.value.image.repository) {
          this.#logger.info(
            { runId, image: run.value.image.repository, appImage: app.value.image },
            'autoDeploy skipped: the build pushed to another repository than the app runs',
          );
          return { done: undefined };
        }
        const change = await nextVersionChange(
          this.#o.ctx,
          this.#o.quotas,
          app,
          { imageTag: run.value.image.tag },
          run.value.trigger.by,
        );
        const next: BuildRun = { ...run.value, deployedVersion: change.version.name };
        return {
          ops: [...change.ops, { op: 'update', key: run.key, value: next, modRevision: run.modRevision }],
          events: [
            ...change.events,
            {
              kind: 'build',
              resourceId: app.value.name,
              ...(app.value.incarnation ? { incarnation: app.value.incarnation } : {}),
              resourceName: runId,
              action: 'deployed',
              data: { version: change.version.name, imageTag: run.value.image.tag },
            },
          ],
          result: () => undefined,
        };
      },
      { what: 'the autoDeploy version' },
    );
  }
}
