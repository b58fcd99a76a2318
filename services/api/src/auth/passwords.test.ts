import { UnavailableError } from '@berth/shared/errors';
import { describe, expect, it } from 'vitest';
import { DEFAULT_COST, hashPassword, needsRehash, PasswordHasher, verifyPassword } from './passwords.ts';

// A low cost keeps the unit tests fast; the default is checked by its parameters.
const LOW = { n: 2 ** 10, r: 8, p: 1 };

describe('password hashes', () => {
  it('default to OWASP minimum scrypt cost and store their parameters', async () => {
    expect(DEFAULT_COST).toEqual({ n: 2 ** 17, r: 8, p: 1 });
    const hash = await hashPassword('correct horse', LOW);
    expect(hash).toMatch(/^scrypt\$1024\$8\$1\$[\w-]+\$[\w-]+$/);
    expect(await verifyPassword('correct horse', hash)).toBe(true);
    expect(await verifyPassword('wrong horse', hash)).toBe(false);
  });

  it('verify at their own cost and ask for a rehash at another', async () => {
    const hash = await hashPassword('pw-12345678', LOW);
    expect(needsRehash(hash, LOW)).toBe(false);
    expect(needsRehash(hash, { ...LOW, n: 2 ** 11 })).toBe(true);
    expect(needsRehash(hash)).toBe(true);
    expect(needsRehash('garbage')).toBe(true);
  });

  it('refuse malformed or absurd stored parameters instead of allocating for them', async () => {
    expect(await verifyPassword('x', 'scrypt$3$8$1$c2FsdA$a2V5')).toBe(false);
    expect(await verifyPassword('x', `scrypt$${2 ** 30}$8$1$c2FsdA$a2V5`)).toBe(false);
    expect(await verifyPassword('x', 'bcrypt$1$1$1$a$b')).toBe(false);
  });
});

describe('PasswordHasher', () => {
  it('verifies an unknown user against a dummy hash: always false', async () => {
    const hasher = new PasswordHasher({ cost: LOW });
    expect(await hasher.verifyNobody('anything')).toBe(false);
  });

  it('runs at most `concurrency` hashes, queues the rest and refuses past the queue', async () => {
    const hasher = new PasswordHasher({ cost: LOW, concurrency: 1, queueLimit: 1 });
    const first = hasher.hash('a-password');
    const second = hasher.hash('b-password');
    expect(hasher.load).toEqual({ running: 1, waiting: 1 });
    const third = hasher.hash('c-password');
    await expect(third).rejects.toBeInstanceOf(UnavailableError);
    await expect(third).rejects.toMatchObject({ extensions: { retryAfterSeconds: 2 } });
    expect(await verifyPassword('a-password', await first)).toBe(true);
    expect(await verifyPassword('b-password', await second)).toBe(true);
    expect(hasher.load).toEqual({ running: 0, waiting: 0 });
  });
});
