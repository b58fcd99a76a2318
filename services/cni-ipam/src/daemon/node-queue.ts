/**
 * One node's commands, one transaction at a time, with the ADDs and DELs that arrived while the
 * previous transaction was in flight sent together in the next (a group commit). A node's ADDs
 * all want its own blocks: run together they would lose the race to each other and retry, which
 * is what made a pod storm slow; in a queue a batch costs one transaction.
 *
 * A batch is taken from the head of the queue and ends before a request for a container already
 * in it, so an ADD and a DEL of one container are never reordered.
 */

import { type AllocateRequest, type Allocation, type Allocator, handleOf } from '../ipam/allocator.ts';
import type { IpRecord } from '../ipam/model.ts';

type Waiter<T> = { resolve(value: T): void; reject(err: unknown): void };
type Job =
  | ({ kind: 'add'; req: AllocateRequest } & Waiter<Allocation>)
  | ({ kind: 'del'; handle: string } & Waiter<IpRecord | undefined>);

export type NodeQueueOptions = {
  allocator: Pick<Allocator, 'commitMany'>;
  /** Requests in one transaction at most (etcd refuses a transaction of more than 128 operations). */
  batchMax: number;
  /** Called after each transaction with how many requests it carried. */
  onBatch?: (size: number) => void;
};

export class NodeQueue {
  readonly #o: NodeQueueOptions;
  readonly #jobs: Job[] = [];
  #running = false;

  constructor(options: NodeQueueOptions) {
    this.#o = options;
  }

  get pending(): number {
    return this.#jobs.length;
  }

  allocate(req: AllocateRequest): Promise<Allocation> {
    return new Promise((resolve, reject) => this.#push({ kind: 'add', req, resolve, reject }));
  }

  release(handle: string): Promise<IpRecord | undefined> {
    return new Promise((resolve, reject) => this.#push({ kind: 'del', handle, resolve, reject }));
  }

  #push(job: Job): void {
    this.#jobs.push(job);
    if (!this.#running) void this.#drain();
  }

  async #drain(): Promise<void> {
    this.#running = true;
    try {
      while (this.#jobs.length > 0) {
        const handles = new Set<string>();
        let n = 0;
        for (const job of this.#jobs) {
          const handle =
            job.kind === 'add' ? handleOf(job.req.network, job.req.containerId, job.req.ifName) : job.handle;
          if (n >= this.#o.batchMax || handles.has(handle)) break;
          handles.add(handle);
          n++;
        }
        const batch = this.#jobs.splice(0, n);
        const adds = batch.filter((j): j is Extract<Job, { kind: 'add' }> => j.kind === 'add');
        const dels = batch.filter((j): j is Extract<Job, { kind: 'del' }> => j.kind === 'del');
        try {
          const done = await this.#o.allocator.commitMany(
            adds.map((j) => j.req),
            dels.map((j) => j.handle),
          );
          settle(adds, done.adds);
          settle(dels, done.dels);
        } catch (err) {
          for (const job of batch) job.reject(err);
        }
        this.#o.onBatch?.(batch.length);
      }
    } finally {
      this.#running = false;
    }
  }
}

function settle<T>(jobs: Waiter<T>[], results: PromiseSettledResult<T>[]): void {
  jobs.forEach((job, i) => {
    const r = results[i];
    if (r?.status === 'fulfilled') job.resolve(r.value);
    else job.reject(r ? r.reason : new Error('no result for the request'));
  });
}
