/**
 * App secrets (issue 13, docs/security.md): write-only values an app's pods get as environment
 * variables, never returned by the API, encrypted at rest in etcd.
 *
 * - Stored at `{prefix}/apps/{app}/secrets/{name}` (`keys.appSecret`) as `AppSecretRecord`: the
 *   value sealed with AES-256-GCM under the current key of the keyring, with the app and the name
 *   as additional data (a sealed value moved to another key does not open), and a fingerprint
 *   (an HMAC, so a guessable value cannot be found by hashing candidates) that events and answers
 *   show so users can tell whether a value changed.
 * - The keyring is `BERTH_SECRETS_KEYS`: `id:hex64[,id:hex64…]`, the first one seals, every one
 *   opens (rotation: put the new key first, re-seal, then drop the old one). The API seals; the
 *   scheduler opens, to write each app namespace's Kubernetes Secret `berth-app-secrets`, which
 *   every Deployment of the app references by `secretKeyRef`.
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import { z } from 'zod';

/** An environment variable name: what a pod sees the secret as. */
export const secretNameSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'expected an environment variable name: letters, digits and "_"');

/** A value: at most 64 KiB (a Kubernetes Secret holds at most 1 MiB for all of an app's). */
export const secretValueSchema = z.string().max(65_536);

export const appSecretRecordSchema = z.object({
  name: secretNameSchema,
  /** `v1.{keyId}.{iv}.{ciphertext}.{tag}`, base64url parts. */
  sealed: z.string().min(1),
  /** HMAC-SHA256 of the value under the keyring's fingerprint key, first 16 hex digits. */
  fingerprint: z.string().regex(/^[0-9a-f]{16}$/),
  updatedAt: z.iso.datetime(),
  updatedBy: z.string().min(1).max(253),
});
export type AppSecretRecord = z.infer<typeof appSecretRecordSchema>;

/** The Kubernetes Secret in each app namespace that holds the app's secrets. */
export const APP_SECRETS_NAME = 'berth-app-secrets';

const KEY_ENTRY = /^([A-Za-z0-9_-]{1,32}):([0-9a-fA-F]{64})$/;

/** `BERTH_SECRETS_KEYS` as configured: `id:hex64[,id:hex64…]`. */
export const secretsKeyringSchema = z
  .string()
  .trim()
  .refine(
    (text) => text.split(',').every((entry) => KEY_ENTRY.test(entry.trim())),
    'expected id:64-hex-digits[,id:64-hex-digits…] (openssl rand -hex 32 makes a key)',
  )
  .refine((text) => {
    const ids = text.split(',').map((entry) => entry.trim().split(':')[0]);
    return new Set(ids).size === ids.length;
  }, 'a key id is used twice')
  .transform((text) => new SecretsKeyring(text));

export class SecretsKeyring {
  readonly #keys = new Map<string, Buffer>();
  readonly #current: string;
  readonly #fingerprintKey: Buffer;

  constructor(text: string) {
    for (const entry of text.split(',')) {
      const m = KEY_ENTRY.exec(entry.trim());
      if (!m) throw new Error('a secrets key is id:64-hex-digits');
      if (this.#keys.has(m[1] as string)) throw new Error(`the secrets key id "${m[1]}" is used twice`);
      this.#keys.set(m[1] as string, Buffer.from(m[2] as string, 'hex'));
    }
    this.#current = [...this.#keys.keys()][0] as string;
    // Fingerprints come from the sealing key: after a rotation a re-sealed secret's fingerprint
    // changes once, though its value did not (docs/security.md says so).
    this.#fingerprintKey = createHmac('sha256', this.#keys.get(this.#current) as Buffer)
      .update('fingerprint')
      .digest();
  }

  /** The id of the key that seals. */
  get currentKeyId(): string {
    return this.#current;
  }

  seal(app: string, name: string, value: string): string {
    const key = this.#keys.get(this.#current) as Buffer;
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', key, iv);
    cipher.setAAD(Buffer.from(`${app}/${name}`));
    const ciphertext = Buffer.concat([cipher.update(value, 'utf8'), cipher.final()]);
    return [
      'v1',
      this.#current,
      iv.toString('base64url'),
      ciphertext.toString('base64url'),
      cipher.getAuthTag().toString('base64url'),
    ].join('.');
  }

  /** The value, or an error naming why it cannot be opened (never the value or the key). */
  open(app: string, name: string, sealed: string): string {
    const [version, keyId, iv, ciphertext, tag] = sealed.split('.');
    if (version !== 'v1' || !keyId || iv === undefined || ciphertext === undefined || tag === undefined) {
      throw new Error(`secret ${app}/${name}: not a sealed value`);
    }
    const key = this.#keys.get(keyId);
    if (!key) throw new Error(`secret ${app}/${name}: sealed with key "${keyId}", which is not in the keyring`);
    try {
      const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(iv, 'base64url'));
      decipher.setAAD(Buffer.from(`${app}/${name}`));
      decipher.setAuthTag(Buffer.from(tag, 'base64url'));
      return Buffer.concat([decipher.update(Buffer.from(ciphertext, 'base64url')), decipher.final()]).toString('utf8');
    } catch {
      throw new Error(
        `secret ${app}/${name}: does not open with key "${keyId}" (tampered, or sealed for another secret)`,
      );
    }
  }

  /** Whether a sealed value is under a key other than the current one (re-seal on rotation). */
  isStale(sealed: string): boolean {
    return sealed.split('.')[1] !== this.#current;
  }

  fingerprint(app: string, name: string, value: string): string {
    return createHmac('sha256', this.#fingerprintKey).update(`${app}/${name}\0${value}`).digest('hex').slice(0, 16);
  }
}
