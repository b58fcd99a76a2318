/**
 * Webhook secrets that are never stored: a config's secret is HMAC-SHA256(key, `{configId}:{nonce}`)
 * with the API's webhook key, so the API can re-derive it to check GitHub's and Gitea's HMAC
 * signatures, while etcd holds only the nonce and the secret's sha256 (GitLab's plain token is
 * compared by hash). Rotating a secret is a new nonce. The key comes from BUILD_WEBHOOK_KEY; when
 * unset, one is made on first use and kept in etcd (`{prefix}/secrets/build-webhook-key`), which
 * is weaker: whoever reads etcd could then derive secrets.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Store } from '@berth/shared/store';
import { z } from 'zod';

export class WebhookSecrets {
  readonly #store: Store;
  readonly #storedKey: string;
  #key: Buffer | undefined;

  constructor(options: { store: Store; prefix: string; key?: string | undefined }) {
    this.#store = options.store;
    this.#storedKey = `${options.prefix}/secrets/build-webhook-key`;
    if (options.key) this.#key = Buffer.from(options.key);
  }

  async #masterKey(): Promise<Buffer> {
    if (this.#key) return this.#key;
    const schema = z.object({ key: z.string().min(32) });
    let stored = await this.#store.get(this.#storedKey, schema);
    if (!stored) {
      await this.#store
        .commit([{ op: 'create', key: this.#storedKey, value: { key: randomBytes(32).toString('base64url') } }])
        .catch(() => undefined);
      stored = await this.#store.get(this.#storedKey, schema);
    }
    if (!stored) throw new Error('no webhook key');
    this.#key = Buffer.from(stored.value.key);
    return this.#key;
  }

  /** A new nonce, the secret it derives, and the secret's hash. */
  async create(configId: string): Promise<{ nonce: string; secret: string; hash: string }> {
    const nonce = randomBytes(12).toString('hex');
    const secret = await this.derive(configId, nonce);
    return { nonce, secret, hash: sha256Hex(secret) };
  }

  async derive(configId: string, nonce: string): Promise<string> {
    return createHmac('sha256', await this.#masterKey())
      .update(`${configId}:${nonce}`)
      .digest('base64url');
  }
}

export function sha256Hex(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** Constant-time equality of two strings (unequal lengths are unequal, without a timing hint on content). */
export function safeEqual(a: string, b: string): boolean {
  const x = createHash('sha256').update(a).digest();
  const y = createHash('sha256').update(b).digest();
  return timingSafeEqual(x, y) && a.length === b.length;
}
