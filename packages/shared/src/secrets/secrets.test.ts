import { describe, expect, it } from 'vitest';
import { SecretsKeyring, secretNameSchema, secretsKeyringSchema } from './index.ts';

const k1 = `k1:${'11'.repeat(32)}`;
const k2 = `k2:${'22'.repeat(32)}`;

describe('the secrets keyring', () => {
  it('seals so that only the same app and name open it, and the sealed text shows nothing of the value', () => {
    const ring = new SecretsKeyring(k1);
    const sealed = ring.seal('shop', 'STRIPE_SK', 'sk_live_123');
    expect(sealed).not.toContain('sk_live');
    expect(sealed.startsWith('v1.k1.')).toBe(true);
    expect(ring.open('shop', 'STRIPE_SK', sealed)).toBe('sk_live_123');
    expect(() => ring.open('shop', 'OTHER', sealed)).toThrow(/does not open/);
    expect(() => ring.open('web', 'STRIPE_SK', sealed)).toThrow(/does not open/);
    // Two seals of one value differ (a fresh IV each time).
    expect(ring.seal('shop', 'STRIPE_SK', 'sk_live_123')).not.toBe(sealed);
  });

  it('rotates: the first key seals, every key opens, and a dropped key is named', () => {
    const old = new SecretsKeyring(k1).seal('shop', 'A', 'x');
    const ring = new SecretsKeyring(`${k2},${k1}`);
    expect(ring.open('shop', 'A', old)).toBe('x');
    expect(ring.isStale(old)).toBe(true);
    expect(ring.isStale(ring.seal('shop', 'A', 'x'))).toBe(false);
    expect(() => new SecretsKeyring(k2).open('shop', 'A', old)).toThrow(/key "k1", which is not in the keyring/);
  });

  it('fingerprints tell a change without showing the value', () => {
    const ring = new SecretsKeyring(k1);
    const a = ring.fingerprint('shop', 'A', 'one');
    expect(a).toMatch(/^[0-9a-f]{16}$/);
    expect(ring.fingerprint('shop', 'A', 'one')).toBe(a);
    expect(ring.fingerprint('shop', 'A', 'two')).not.toBe(a);
    expect(ring.fingerprint('web', 'A', 'one')).not.toBe(a);
  });

  it('refuses a malformed keyring and a bad name, naming the rule', () => {
    expect(secretsKeyringSchema.safeParse('k1:abcd').success).toBe(false);
    expect(secretsKeyringSchema.safeParse(`${k1},${k1}`).success).toBe(false);
    expect(secretsKeyringSchema.safeParse(k1).success).toBe(true);
    expect(secretNameSchema.safeParse('DATABASE_URL').success).toBe(true);
    expect(secretNameSchema.safeParse('1BAD').success).toBe(false);
    expect(secretNameSchema.safeParse('A-B').success).toBe(false);
  });
});
