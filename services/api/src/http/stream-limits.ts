/**
 * How many long-lived streams one user holds open at once in this API process (docs/api.md,
 * "Streams per user"): followed logs (an app's `logs?follow=true`, a build's SSE log) and exec
 * sessions. A stream takes a slot before it answers and gives it back when it ends, whatever ends
 * it (the command exits, the client goes away, the API stops); one more than the limit is a 429
 * naming the setting. The count lives in the process: with N replicas a user may hold N times the
 * limit, and a replica that dies frees its slots with it (docs/decisions.md).
 */
import { RateLimitedError } from '@berth/shared/errors';

export type StreamKind = 'follow' | 'exec';

export type StreamLimitsOptions = {
  /** Per kind: at most this many open at once per user, and the setting that says so. */
  limits: Record<StreamKind, { max: number; setting: string }>;
};

const NOUN: Record<StreamKind, string> = {
  follow: 'followed log streams',
  exec: 'exec sessions',
};

export class StreamLimits {
  readonly #limits: StreamLimitsOptions['limits'];
  readonly #open = new Map<string, number>();

  constructor(options: StreamLimitsOptions) {
    this.#limits = options.limits;
  }

  /**
   * Takes one of `user`'s slots of `kind`, or throws RateLimitedError (429) when all are taken.
   * Returns the release, which is safe to call more than once.
   */
  acquire(kind: StreamKind, user: string): () => void {
    const { max, setting } = this.#limits[kind];
    const key = `${kind}\u0000${user}`;
    const open = this.#open.get(key) ?? 0;
    if (open >= max) {
      throw new RateLimitedError(
        `at most ${max} ${NOUN[kind]} per user at once (${setting}); close one and try again`,
        { extensions: { limit: setting, max, open } },
      );
    }
    this.#open.set(key, open + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.#open.get(key) ?? 1) - 1;
      if (left > 0) this.#open.set(key, left);
      else this.#open.delete(key);
    };
  }

  /** The streams of `kind` that `user` holds open now. */
  openOf(kind: StreamKind, user: string): number {
    return this.#open.get(`${kind}\u0000${user}`) ?? 0;
  }
}
