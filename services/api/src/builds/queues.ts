/**
 * The build machines' BullMQ queues, one per agent (`buildQueueName`), as the API uses them: add a
 * run's job (job id = run id, data `{runId, attempt}`, nothing secret), count what waits, take a
 * waiting job back (a locked one, which an agent runs, cannot be taken), and see whether an
 * active job's lock is still held.
 */
import { type BuildJob, buildQueueName } from '@berth/shared/builds';
import type { Redis } from '@berth/shared/redis';
import { Queue } from 'bullmq';

export type BuildQueuesOptions = {
  redis: Redis;
  /** How long finished jobs stay in Redis (seconds). */
  keepFinishedSeconds?: number;
};

export type QueuedJob = { runId: string; attempt: number };

export class BullMqBuildQueues {
  readonly #redis: Redis;
  readonly #queues = new Map<string, Queue<BuildJob>>();
  readonly #keepSeconds: number;

  constructor(options: BuildQueuesOptions) {
    this.#redis = options.redis;
    this.#keepSeconds = options.keepFinishedSeconds ?? 86_400;
  }

  queue(region: string, agentId: string): Queue<BuildJob> {
    const name = buildQueueName(region, agentId);
    let queue = this.#queues.get(name);
    if (!queue) {
      queue = new Queue<BuildJob>(name, { connection: this.#redis, skipWaitingForReady: true });
      // Errors surface on the calls; the emitter only needs a listener.
      queue.on('error', () => undefined);
      this.#queues.set(name, queue);
    }
    return queue;
  }

  async waitingCount(region: string, agentId: string): Promise<number> {
    return this.queue(region, agentId).getWaitingCount();
  }

  /** Adds the run's job; a job of the same id already there is left as it is (BullMQ dedupes on id). */
  async add(region: string, agentId: string, job: BuildJob): Promise<void> {
    await this.queue(region, agentId).add('build', job, {
      jobId: job.runId,
      attempts: 1,
      removeOnComplete: { age: this.#keepSeconds, count: 1000 },
      removeOnFail: { age: this.#keepSeconds, count: 1000 },
    });
  }

  /** Takes the run's job off the queue: true when removed or absent, false when an agent holds its lock. */
  async remove(region: string, agentId: string, runId: string): Promise<boolean> {
    const queue = this.queue(region, agentId);
    const job = await queue.getJob(runId);
    if (!job) return true;
    return (await queue.remove(runId)) === 1;
  }

  /** Jobs that no agent has taken yet (waiting, delayed, prioritized). */
  async waiting(region: string, agentId: string): Promise<QueuedJob[]> {
    const jobs = await this.queue(region, agentId).getJobs(['waiting', 'delayed', 'prioritized']);
    return jobs.filter((j) => j?.id).map((j) => ({ runId: j.id as string, attempt: Number(j.data?.attempt ?? 1) }));
  }

  /** Jobs an agent took. */
  async active(region: string, agentId: string): Promise<QueuedJob[]> {
    const jobs = await this.queue(region, agentId).getJobs(['active']);
    return jobs.filter((j) => j?.id).map((j) => ({ runId: j.id as string, attempt: Number(j.data?.attempt ?? 1) }));
  }

  /** Whether an agent still holds the job's lock (it renews it while it runs the build). */
  async locked(region: string, agentId: string, runId: string): Promise<boolean> {
    const queue = this.queue(region, agentId);
    return (await this.#redis.exists(`${queue.toKey(runId)}:lock`)) === 1;
  }

  /** Closes the queues (the shared Redis client stays open). Safe to call twice. */
  async close(): Promise<void> {
    const queues = [...this.#queues.values()];
    this.#queues.clear();
    await Promise.all(queues.map((q) => q.close().catch(() => undefined)));
  }
}
