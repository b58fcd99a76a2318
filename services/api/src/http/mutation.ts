/**
 * Every write of the API, one way: the handler's plan reads what it needs and returns the ops of
 * one transaction, the events that record the change, and the answer. This helper checks
 * If-Match, queues writes to one app inside this process (other replicas still race, and the
 * compares decide), commits the ops with the events' outbox entries and the Idempotency-Key's
 * record in the same transaction, retries on a conflict (the store's one retry loop), answers 412
 * when a pinned resource changed, and publishes the events after the commit.
 */
import { ConflictError, PreconditionFailedError } from '@berth/shared/errors';
import { type BerthEvent, type EventInput, toSubjectToken } from '@berth/shared/events';
import type { EventsComponent } from '@berth/shared/nats';
import { type Op, type Store, transact } from '@berth/shared/store';
import type { Request } from 'express';
import type { Principal } from '../auth/principal.ts';
import { checkIfMatch, ifMatchRevision } from './conditional.ts';
import { type Idempotency, type IdempotencyRequest, RECORD_REVISION } from './idempotency.ts';
import type { RouteResult } from './routes.ts';

/** An event of the change, without its actor (the caller). */
export type ChangeEvent = Omit<EventInput, 'actor'>;

export type Change<T> =
  | {
      ops: Op[];
      events?: ChangeEvent[];
      /** The resource an If-Match pins: checked before the write, and a 412 when it changed meanwhile. */
      pinned?: { key: string; modRevision: number } | undefined;
      result: (revision: number) => T;
      /** Maps failed compares to the caller's error; undefined means re-read and retry. */
      onFailed?: (failedKeys: string[]) => Error | undefined;
    }
  | { done: T };

export type MutationOptions = {
  /** Writes with the same key (one app's) queue in this process instead of racing through etcd. */
  serializeOn?: string | undefined;
  /** The request, for If-Match. */
  req?: Request | undefined;
  /** A POST's Idempotency-Key: the answer is stored with the change. */
  idempotency?: IdempotencyRequest | undefined;
  what?: string;
};

export type CommitOptions<T> = MutationOptions & {
  /** With an Idempotency-Key: the answer a repeat gets, from the plan's result at RECORD_REVISION. */
  recordAnswer?: (result: T) => RouteResult;
};

export class Mutations {
  readonly #store: Store;
  readonly #events: EventsComponent;
  readonly #idempotency: Idempotency;
  readonly #queues = new KeyedMutex();

  constructor(store: Store, events: EventsComponent, idempotency: Idempotency) {
    this.#store = store;
    this.#events = events;
    this.#idempotency = idempotency;
  }

  /** Commits a change made by `actor`; resolves with the plan's result. */
  async commit<T>(
    actor: Principal | string,
    plan: (attempt: number) => Promise<Change<T>>,
    options: CommitOptions<T> = {},
  ): Promise<T> {
    const keyed = options.idempotency;
    const recordAnswer = options.recordAnswer;
    const name = typeof actor === 'string' ? actor : actor.user;
    const pinnedByCaller = options.req ? ifMatchRevision(options.req) !== undefined : false;
    let recorded: BerthEvent[] = [];
    const work = () =>
      transact<T>(
        this.#store,
        async (attempt) => {
          // Only the committed attempt's events are published.
          recorded = [];
          const change = await plan(attempt);
          if ('done' in change) return change;
          if (change.pinned && options.req) checkIfMatch(options.req, change.pinned.modRevision);
          const ops = [...change.ops];
          if (keyed && recordAnswer) {
            ops.push(await this.#idempotency.recordOp(keyed, recordAnswer(change.result(RECORD_REVISION))));
          }
          for (const input of change.events ?? []) {
            const { op, event } = this.#events.record({
              ...input,
              resourceId: toSubjectToken(input.resourceId),
              actor: { type: 'user', name },
            } as EventInput);
            ops.push(op);
            recorded.push(event);
          }
          return {
            ops,
            result: change.result,
            onFailed: (failedKeys) => {
              if (keyed && failedKeys.includes(keyed.recordKey)) return new TwinCommittedError();
              const mapped = change.onFailed?.(failedKeys);
              if (mapped) return mapped;
              if (pinnedByCaller && change.pinned && failedKeys.includes(change.pinned.key)) {
                return new PreconditionFailedError('the resource changed meanwhile; read it again');
              }
              return undefined;
            },
          };
        },
        { what: options.what ?? 'the resource' },
      );
    const result = await (options.serializeOn ? this.#queues.run(options.serializeOn, work) : work());
    this.#events.flush(recorded);
    return result;
  }

  /**
   * A POST's change whose answer is the route's answer: with an Idempotency-Key, the answer is
   * stored in the change's transaction, and a racing twin answers from the record.
   */
  async answer(
    actor: Principal | string,
    plan: (attempt: number) => Promise<Change<RouteResult>>,
    options: MutationOptions = {},
  ): Promise<RouteResult> {
    try {
      return await this.commit(actor, plan, { ...options, recordAnswer: (answer) => answer });
    } catch (err) {
      // The twin with the same key committed first: answer as it did (or 422 for another request).
      const replayed = err instanceof TwinCommittedError && options.idempotency;
      if (replayed) return (await this.#idempotency.replay(replayed)) ?? Promise.reject(err);
      throw err;
    }
  }
}

/** Another request with the same Idempotency-Key committed first. */
class TwinCommittedError extends ConflictError {
  constructor() {
    super('another request with this Idempotency-Key committed first');
  }
}

/** Serializes work per key inside this process. */
class KeyedMutex {
  readonly #tails = new Map<string, Promise<void>>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => {
      release = r;
    });
    const tail = previous.then(() => mine);
    this.#tails.set(key, tail);
    await previous;
    try {
      return await fn();
    } finally {
      release();
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    }
  }
}
