/**
 * Password hashes: scrypt at OWASP's minimum cost (N=2^17, r=8, p=1; 32-byte key, 16-byte salt),
 * stored as `scrypt$N$r$p$salt$hash` (base64url) so the cost can be raised later without breaking
 * stored hashes: a hash made at another cost verifies at its own, and `needsRehash` tells the
 * caller to store a new one (the login does, on the next success). Comparison is constant-time.
 *
 * Every hash takes ~128 MiB and most of a core for a good part of a second, so they go through a
 * `PasswordHasher`: a few at a time, a bounded queue behind them, and 503 past it (a login flood
 * must not take the API's memory or its event loop's thread pool).
 */
import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { UnavailableError } from '@berth/shared/errors';

export type ScryptCost = { n: number; r: number; p: number };

/** OWASP Password Storage Cheat Sheet: scrypt with N=2^17, r=8, p=1 at least. */
export const DEFAULT_COST: ScryptCost = { n: 2 ** 17, r: 8, p: 1 };
const KEY_LENGTH = 32;
/** The largest cost a stored hash may ask for (a corrupted record must not allocate gigabytes). */
const MAX_LOG_N = 20;

function derive(password: string, salt: Buffer, { n, r, p }: ScryptCost): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    // scrypt needs 128·N·r bytes; Node's default maxmem (32 MiB) is below N=2^17.
    scrypt(password, salt, KEY_LENGTH, { N: n, r, p, maxmem: 256 * n * r }, (err, key) =>
      err ? reject(err) : resolve(key),
    );
  });
}

type ParsedHash = { cost: ScryptCost; salt: Buffer; key: Buffer };

function parseHash(stored: string): ParsedHash | undefined {
  const [alg, n, r, p, salt, hash, ...rest] = stored.split('$');
  if (alg !== 'scrypt' || !n || !r || !p || !salt || !hash || rest.length > 0) return undefined;
  const cost = { n: Number(n), r: Number(r), p: Number(p) };
  const valid =
    Number.isInteger(cost.n) &&
    cost.n >= 2 &&
    cost.n <= 2 ** MAX_LOG_N &&
    (cost.n & (cost.n - 1)) === 0 &&
    Number.isInteger(cost.r) &&
    cost.r >= 1 &&
    cost.r <= 32 &&
    Number.isInteger(cost.p) &&
    cost.p >= 1 &&
    cost.p <= 16;
  return valid ? { cost, salt: Buffer.from(salt, 'base64url'), key: Buffer.from(hash, 'base64url') } : undefined;
}

export async function hashPassword(password: string, cost: ScryptCost = DEFAULT_COST): Promise<string> {
  const salt = randomBytes(16);
  const key = await derive(password, salt, cost);
  return `scrypt$${cost.n}$${cost.r}$${cost.p}$${salt.toString('base64url')}$${key.toString('base64url')}`;
}

export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const parsed = parseHash(stored);
  if (!parsed) return false;
  const key = await derive(password, parsed.salt, parsed.cost);
  return key.length === parsed.key.length && timingSafeEqual(key, parsed.key);
}

/** True when the hash was made at another cost than `cost` (or cannot be read). */
export function needsRehash(stored: string, cost: ScryptCost = DEFAULT_COST): boolean {
  const parsed = parseHash(stored);
  return !parsed || parsed.cost.n !== cost.n || parsed.cost.r !== cost.r || parsed.cost.p !== cost.p;
}

export type PasswordHasherOptions = {
  cost?: ScryptCost;
  /** Hashes at once; default twice the cores. */
  concurrency?: number;
  /** Hashes waiting behind them; past it, 503 with Retry-After. */
  queueLimit?: number;
};

/**
 * Hashing and verifying with a concurrency cap. Also the dummy verify of sign-in: a user name that
 * does not exist costs the same hash as a wrong password, so the time of the answer does not tell
 * them apart.
 */
export class PasswordHasher {
  readonly cost: ScryptCost;
  readonly #concurrency: number;
  readonly #queueLimit: number;
  readonly #waiting: Array<() => void> = [];
  #running = 0;
  /** A hash of nothing at the current cost: random salt, random key (no password matches it). */
  readonly #dummy: string;

  constructor(options: PasswordHasherOptions = {}) {
    this.cost = options.cost ?? DEFAULT_COST;
    this.#concurrency = Math.max(1, options.concurrency ?? 2 * availableParallelism());
    this.#queueLimit = Math.max(0, options.queueLimit ?? 64);
    const { n, r, p } = this.cost;
    this.#dummy = `scrypt$${n}$${r}$${p}$${randomBytes(16).toString('base64url')}$${randomBytes(KEY_LENGTH).toString('base64url')}`;
  }

  hash(password: string): Promise<string> {
    return this.#run(() => hashPassword(password, this.cost));
  }

  verify(password: string, stored: string): Promise<boolean> {
    return this.#run(() => verifyPassword(password, stored));
  }

  /** As long as a verify against a real user's hash, and always false. */
  async verifyNobody(password: string): Promise<false> {
    const dummy = this.#dummy;
    await this.#run(() => verifyPassword(password, dummy));
    return false;
  }

  needsRehash(stored: string): boolean {
    return needsRehash(stored, this.cost);
  }

  /** Hashes running and waiting now (for tests and metrics). */
  get load(): { running: number; waiting: number } {
    return { running: this.#running, waiting: this.#waiting.length };
  }

  async #run<T>(work: () => Promise<T>): Promise<T> {
    if (this.#running >= this.#concurrency) {
      if (this.#waiting.length >= this.#queueLimit) {
        throw new UnavailableError('too many sign-ins at once; try again in a few seconds', {
          extensions: { retryAfterSeconds: 2 },
        });
      }
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    } else {
      this.#running++;
    }
    try {
      return await work();
    } finally {
      // Hand the slot straight to the next waiter, or free it.
      const next = this.#waiting.shift();
      if (next) next();
      else this.#running--;
    }
  }
}
