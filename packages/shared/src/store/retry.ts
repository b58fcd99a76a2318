/**
 * The one compare-and-swap loop in Berth. A caller's plan reads what it needs and returns the
 * ops of one transaction; when a compare fails because somebody wrote in between, the plan runs
 * again on fresh reads, a bounded number of times, with jittered backoff so a hot key's writers
 * do not retry in lockstep. A fence or a quota guard is one more op in the plan, never one more
 * loop. Only CompareFailedError is retried: an outage, a lost leadership or a refusal surfaces.
 */
import { CompareFailedError, ConflictError } from '../errors/index.ts';
import type { Op, Store } from './store.ts';

export type RetryOptions = {
  /** Attempts before giving up with ConflictError. Default 8. */
  maxAttempts?: number;
  /** First backoff ceiling in ms; doubles per attempt up to maxDelayMs. Default 5. */
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** What is being written, for the error message. */
  what?: string;
  /** Called on each conflict, for metrics and tests. */
  onConflict?: (attempt: number, err: CompareFailedError) => void;
};

/** Runs `fn` until it does not fail with CompareFailedError, at most `maxAttempts` times. */
export async function retryOnConflict<T>(fn: (attempt: number) => Promise<T>, options: RetryOptions = {}): Promise<T> {
  const maxAttempts = options.maxAttempts ?? 8;
  const base = options.baseDelayMs ?? 5;
  const max = options.maxDelayMs ?? 100;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      if (!(err instanceof CompareFailedError)) throw err;
      options.onConflict?.(attempt, err);
      if (attempt >= maxAttempts) {
        throw new ConflictError(
          `${options.what ?? 'the resource'} kept changing while this request ran (${maxAttempts} attempts); try again`,
          { cause: err },
        );
      }
      // Full jitter (AWS's backoff study): a random wait up to the exponential ceiling.
      await new Promise((r) => setTimeout(r, Math.random() * Math.min(max, base * 2 ** attempt)));
    }
  }
}

/** One attempt of a transaction: its ops and what to answer, or an answer without writing. */
export type Plan<T> =
  | {
      ops: Op[];
      result: (revision: number) => T;
      /** Maps failed compares to the error the caller should see; undefined means re-read and retry. */
      onFailed?: (failedKeys: string[]) => Error | undefined;
    }
  | { done: T };

/** Reads (inside `plan`), commits, and on a conflict reads again: the store's write path. */
export async function transact<T>(
  store: Store,
  plan: (attempt: number) => Promise<Plan<T>> | Plan<T>,
  options: RetryOptions = {},
): Promise<T> {
  return retryOnConflict(async (attempt) => {
    const p = await plan(attempt);
    if ('done' in p) return p.done;
    try {
      return p.result(await store.commit(p.ops));
    } catch (err) {
      if (err instanceof CompareFailedError) {
        const mapped = p.onFailed?.(err.failedKeys);
        if (mapped) throw mapped;
      }
      throw err;
    }
  }, options);
}

/** Returned by a mutator to leave the key as it is. */
export const UNCHANGED: unique symbol = Symbol('unchanged');
/** Returned by a mutator to delete the key. */
export const DELETE: unique symbol = Symbol('delete');

/** What a compare-and-swap of one key did. */
export type UpdateResult<T> =
  | { outcome: 'written'; value: T; modRevision: number }
  | { outcome: 'deleted'; modRevision: number }
  | { outcome: 'unchanged'; modRevision: number };
