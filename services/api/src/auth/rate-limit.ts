/**
 * Login rate limit, in Redis so that it holds across every API replica: a fixed one-minute window
 * per (user name, client address) and per client address.
 */
import { RateLimitedError } from '@berth/shared/errors';
import type { Redis } from '@berth/shared/redis';

export class LoginRateLimiter {
  readonly #redis: Redis;
  readonly #perUser: number;
  readonly #perAddress: number;
  readonly #prefix: string;

  constructor(redis: Redis, options: { perUserPerMinute: number; perAddressPerMinute: number; prefix: string }) {
    this.#redis = redis;
    this.#perUser = options.perUserPerMinute;
    this.#perAddress = options.perAddressPerMinute;
    this.#prefix = options.prefix;
  }

  /** Counts one attempt; throws RateLimitedError (429) when a window is full. */
  async attempt(username: string, address: string): Promise<void> {
    const window = Math.floor(Date.now() / 60_000);
    const userKey = `${this.#prefix}:login:u:${username}:${address}:${window}`;
    const addressKey = `${this.#prefix}:login:a:${address}:${window}`;
    const results = await this.#redis
      .multi()
      .incr(userKey)
      .expire(userKey, 120)
      .incr(addressKey)
      .expire(addressKey, 120)
      .exec();
    const userCount = Number(results?.[0]?.[1] ?? 0);
    const addressCount = Number(results?.[2]?.[1] ?? 0);
    if (userCount > this.#perUser || addressCount > this.#perAddress) {
      const retryAfter = 60 - (Math.floor(Date.now() / 1000) % 60);
      throw new RateLimitedError(`too many login attempts; try again in ${retryAfter} s`, {
        extensions: { retryAfterSeconds: retryAfter },
      });
    }
  }
}
