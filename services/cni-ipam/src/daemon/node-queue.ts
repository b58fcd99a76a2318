/**
 * One node's commands, one at a time, in arrival order, with the ADDs (or the DELs) that arrived
 * while the previous transaction was in flight sent as one batch (a group commit). A node's ADDs
 * all want its own blocks: run together they would lose the race to each other and retry, which
 * is what made a pod storm slow; in a queue they cost one transaction per batch.
 *
 * Only a run of the same command at the head of the queue is batched, so an ADD and a DEL of one
 * container are never reordered.
 */

import type { AllocateRequest, Allocation, Allocator } from '../ipam/allocator.ts';
import type { IpRecord } from '../ipam/model.ts';

type Waiter<T> = { resolve(value: T): void; reject(err: unknown): void };
type Job =
  | ({ kind: 'add'; req: AllocateRequest } & Waiter<Allocation>)
  | ({ kind: 'del'; handle: string } & Waiter<IpRecord | undefined>);

export type NodeQueueOptions = {
  allocator: Pick<Allocator, 'allocateMany' | 'releaseMany'>;
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
        const kind = (this.#jobs[0] as Job).kind;
        let n = 0;
        while (n < this.#jobs.length && n < this.#o.batchMax && (this.#jobs[n] as Job).kind === kind) n++;
        const batch = this.#jobs.splice(0, n);
        try {
          if (kind === 'add') {
            const adds = batch as Extract<Job, { kind: 'add' }>[];
            settle(adds, await this.#o.allocator.allocateMany(adds.map((j) => j.req)));
          } else {
            const dels = batch as Extract<Job, { kind: 'del' }>[];
            settle(dels, await this.#o.allocator.releaseMany(dels.map((j) => j.handle)));
          }
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
