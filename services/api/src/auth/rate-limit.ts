/**
 * Login rate limit, in Redis so that it holds across every API replica. Three budgets:
 * - per (user name, client address): failures in a fixed one-minute window;
 * - per client address: failures in a fixed one-minute window (spraying many names);
 * - per account, whatever the address: after `freeFailures` failures in a row, each attempt waits
 *   2^k seconds after the last one (k = failures beyond the free ones, the wait capped at
 *   `maxBackoffMs`), so a guesser spread over many addresses gets a few tries an hour.
 *
 * Only failures count: `attempt` counts the attempt as a failure up front (so parallel guesses are
 * counted too), `failed` starts the account's wait, and `succeeded` gives the attempt back and
 * clears the account's run of failures. Once an account is past its free failures, it is also held
 * while an attempt is in flight, so parallel guesses cannot slip past the back-off. The
 * client address is express's `req.ip`, which trusts X-Forwarded-For only from TRUSTED_PROXIES.
 * Callers validate the user name before it gets here: it is part of the keys.
 */
import { RateLimitedError } from '@berth/shared/errors';
import type { Redis } from '@berth/shared/redis';

export type LoginRateLimiterOptions = {
  /** Failures per minute per (user, address). */
  perUserPerMinute: number;
  /** Failures per minute per address. */
  perAddressPerMinute: number;
  /** Failures in a row an account takes before the back-off starts. */
  accountFreeFailures: number;
  /** The longest wait of the per-account back-off. */
  maxBackoffMs: number;
  prefix: string;
};

/** What `attempt` counted, for `failed` or `succeeded`. */
export type LoginAttempt = { keys: [string, string, string, string]; failures: number };

/** How long an account past its free failures is held while one attempt is in flight. */
const IN_FLIGHT_HOLD_MS = 60_000;

// KEYS: user+address window, address window, account failures, account lock.
// ARGV: per-user limit, per-address limit, free failures, in-flight hold ms, window expiry s.
// Returns {0, failures} when the attempt may go on, {1, ms} when the account waits, {2} when a
// window is full.
const ATTEMPT = `
local locked = redis.call('PTTL', KEYS[4])
if locked > 0 then return {1, locked} end
local ua = redis.call('INCR', KEYS[1]); redis.call('EXPIRE', KEYS[1], ARGV[5])
local a = redis.call('INCR', KEYS[2]); redis.call('EXPIRE', KEYS[2], ARGV[5])
if ua > tonumber(ARGV[1]) or a > tonumber(ARGV[2]) then
  redis.call('DECR', KEYS[1]); redis.call('DECR', KEYS[2])
  return {2}
end
local f = redis.call('INCR', KEYS[3]); redis.call('EXPIRE', KEYS[3], 86400)
if f >= tonumber(ARGV[3]) then redis.call('SET', KEYS[4], '1', 'PX', ARGV[4]) end
return {0, f}
`;

// KEYS[1]: the account's lock. ARGV: failures so far, free failures, max back-off ms.
// After the free failures, the account waits 2^k s from this failure (k = failures beyond them).
const FAILED = `
local f = tonumber(ARGV[1]); local free = tonumber(ARGV[2])
if f >= free then
  local wait = math.min(1000 * 2 ^ math.min(f - free, 30), tonumber(ARGV[3]))
  redis.call('SET', KEYS[1], '1', 'PX', math.floor(wait))
end
return 0
`;

// KEYS as above: the windows get the attempt back, the account starts again.
const SUCCEEDED = `
if redis.call('EXISTS', KEYS[1]) == 1 and tonumber(redis.call('GET', KEYS[1])) > 0 then redis.call('DECR', KEYS[1]) end
if redis.call('EXISTS', KEYS[2]) == 1 and tonumber(redis.call('GET', KEYS[2])) > 0 then redis.call('DECR', KEYS[2]) end
redis.call('DEL', KEYS[3], KEYS[4])
return 0
`;

export class LoginRateLimiter {
  readonly #redis: Redis;
  readonly #options: LoginRateLimiterOptions;

  constructor(redis: Redis, options: LoginRateLimiterOptions) {
    this.#redis = redis;
    this.#options = options;
  }

  /** Counts one attempt as a failure; throws RateLimitedError (429) when a budget is spent. */
  async attempt(username: string, address: string): Promise<LoginAttempt> {
    const o = this.#options;
    const window = Math.floor(Date.now() / 60_000);
    const keys: LoginAttempt['keys'] = [
      `${o.prefix}:login:u:${username}:${address}:${window}`,
      `${o.prefix}:login:a:${address}:${window}`,
      `${o.prefix}:login:acct:${username}:failures`,
      `${o.prefix}:login:acct:${username}:lock`,
    ];
    const result = (await this.#redis.eval(
      ATTEMPT,
      keys.length,
      ...keys,
      o.perUserPerMinute,
      o.perAddressPerMinute,
      o.accountFreeFailures,
      IN_FLIGHT_HOLD_MS,
      120,
    )) as [number, number?];
    if (result[0] === 1) {
      const seconds = Math.max(1, Math.ceil(Number(result[1]) / 1000));
      throw new RateLimitedError(`too many failed logins for this user; try again in ${seconds} s`, {
        extensions: { retryAfterSeconds: seconds },
      });
    }
    if (result[0] === 2) {
      const seconds = 60 - (Math.floor(Date.now() / 1000) % 60);
      throw new RateLimitedError(`too many login attempts; try again in ${seconds} s`, {
        extensions: { retryAfterSeconds: seconds },
      });
    }
    return { keys, failures: Number(result[1]) };
  }

  /** The attempt failed (it is already counted): past the free failures, the account waits. */
  async failed(attempt: LoginAttempt): Promise<void> {
    const o = this.#options;
    await this.#redis.eval(FAILED, 1, attempt.keys[3], attempt.failures, o.accountFreeFailures, o.maxBackoffMs);
  }

  /** The attempt succeeded: it does not count, and the account's failures start again. */
  async succeeded(attempt: LoginAttempt): Promise<void> {
    await this.#redis.eval(SUCCEEDED, attempt.keys.length, ...attempt.keys);
  }
}
