/**
 * An app's write-only secrets as its cells get them (docs/scheduler.md, "App secrets"): the API
 * stores each one sealed in etcd (`AppSecretRecord`, @berth/shared/secrets); the scheduler holds
 * the keyring (`BERTH_SECRETS_KEYS`), opens them, and writes one Opaque Secret
 * `berth-app-secrets` per app namespace, which every Deployment of the app references by
 * `secretKeyRef`.
 *
 * Every opened value (and its base64, as it sits in the Secret's data) is registered with the log
 * scrubber the moment it is opened. Nothing here logs, and an error names the secret, never its
 * value. A record's value is opened once per record (records are replaced, never mutated).
 */
import { createHash } from 'node:crypto';
import { registerSecret } from '@berth/shared/logging';
import type { AppSecretRecord, SecretsKeyring } from '@berth/shared/secrets';

/** What one app's records give: the Secret's data, and what the pods are told of it. */
export type AppSecretSet = {
  /** name → base64 value (Secret `data`); only the secrets that opened. */
  data: Record<string, string>;
  /** name → the record's fingerprint (an HMAC: safe to show), every record's. */
  fingerprints: Record<string, string>;
  /** Names of secrets that did not open (wrong or missing key, tampered), sorted. */
  failed: string[];
  /** Why they did not open, per name (the keyring's message: names the key id, never a value). */
  errors: Record<string, string>;
  /** When this set was made: the time of a failure condition, stable while the records are. */
  since: string;
};

/** What a Deployment references: the secret names, and a hash of their fingerprints. */
export type SecretRefs = { names: string[]; hash: string };

export const NO_KEYRING = 'the scheduler has no BERTH_SECRETS_KEYS';

export class AppSecretsOpener {
  readonly #keyring: SecretsKeyring | undefined;
  /** Per records map (replaced on any change of the app's secrets): the set made of it. */
  readonly #sets = new WeakMap<ReadonlyMap<string, AppSecretRecord>, AppSecretSet>();
  /** Per record: its opened value, base64. */
  readonly #opened = new WeakMap<AppSecretRecord, string>();

  constructor(keyring: SecretsKeyring | undefined) {
    this.#keyring = keyring;
  }

  get enabled(): boolean {
    return this.#keyring !== undefined;
  }

  /** The app's set; undefined when it has no secrets (and so its cells need none). */
  open(app: string, records: ReadonlyMap<string, AppSecretRecord> | undefined): AppSecretSet | undefined {
    if (!records || records.size === 0) return undefined;
    let set = this.#sets.get(records);
    if (!set) {
      set = this.#build(app, records);
      this.#sets.set(records, set);
    }
    return set;
  }

  #build(app: string, records: ReadonlyMap<string, AppSecretRecord>): AppSecretSet {
    const set: AppSecretSet = { data: {}, fingerprints: {}, failed: [], errors: {}, since: new Date().toISOString() };
    for (const name of [...records.keys()].sort()) {
      const record = records.get(name) as AppSecretRecord;
      set.fingerprints[name] = record.fingerprint;
      const encoded = this.#openOne(app, name, record);
      if (typeof encoded === 'string') set.data[name] = encoded;
      else {
        set.failed.push(name);
        set.errors[name] = encoded.error;
      }
    }
    return set;
  }

  #openOne(app: string, name: string, record: AppSecretRecord): string | { error: string } {
    const cached = this.#opened.get(record);
    if (cached !== undefined) return cached;
    if (!this.#keyring) return { error: NO_KEYRING };
    try {
      const value = this.#keyring.open(app, name, record.sealed);
      const encoded = Buffer.from(value, 'utf8').toString('base64');
      registerSecret(value);
      registerSecret(encoded);
      this.#opened.set(record, encoded);
      return encoded;
    } catch (err) {
      return { error: (err as Error).message };
    }
  }
}

/** The refs of a set of fingerprints (name → fingerprint); undefined when there are none. */
export function secretRefsOf(fingerprints: Record<string, string>): SecretRefs | undefined {
  const names = Object.keys(fingerprints).sort();
  if (names.length === 0) return undefined;
  const hash = createHash('sha256')
    .update(JSON.stringify(names.map((n) => [n, fingerprints[n]])))
    .digest('hex')
    .slice(0, 16);
  return { names, hash };
}
