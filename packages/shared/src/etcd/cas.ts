/**
 * Compare-and-swap on one key's mod revision, the way every racing write in Berth is made
 * (Calico's etcdv3 backend does the same). The mutator sees the current value and returns the
 * next one; the write lands only if nobody wrote the key in between, else it re-reads and tries
 * again, a bounded number of times. Any other error surfaces at once: only conflicts are retried.
 */
import type { Etcd3 } from 'etcd3';
import { ConflictError } from '../errors/index.ts';
import { toBerthError } from './client.ts';

/** Returned by a mutator to leave the key as it is. */
export const UNCHANGED: unique symbol = Symbol('unchanged');
/** Returned by a mutator to delete the key. */
export const DELETE: unique symbol = Symbol('delete');

export type Versioned<T> = {
  value: T;
  /** etcd mod revision of the key: what an ETag carries and what a CAS compares. */
  modRevision: number;
  createRevision: number;
};

export type Codec<T> = {
  encode(value: T): string;
  decode(raw: string, key: string): T;
};

export const jsonCodec = <T>(): Codec<T> => ({
  encode: (value) => JSON.stringify(value),
  decode: (raw) => JSON.parse(raw) as T,
});

export type CasOptions<T> = {
  codec?: Codec<T>;
  /** Attempts before giving up with ConflictError. Default 10. */
  maxAttempts?: number;
  /** Lease to attach to the written key. */
  lease?: string;
  /** Called on each conflict, for metrics and tests. */
  onConflict?: (attempt: number) => void;
};

export type Mutator<T> = (
  current: Versioned<T> | undefined,
  attempt: number,
) => T | typeof UNCHANGED | typeof DELETE | Promise<T | typeof UNCHANGED | typeof DELETE>;

export type CasResult<T> =
  | { outcome: 'written'; value: T; modRevision: number; attempts: number }
  | { outcome: 'deleted'; modRevision: number; attempts: number }
  | { outcome: 'unchanged'; current: Versioned<T> | undefined; attempts: number };

/** Read one key with its revisions. */
export async function getVersioned<T>(
  client: Etcd3,
  key: string,
  codec: Codec<T> = jsonCodec<T>(),
): Promise<Versioned<T> | undefined> {
  let res: Awaited<ReturnType<Etcd3['kv']['range']>>;
  try {
    res = await client.kv.range({ key: Buffer.from(key) });
  } catch (err) {
    throw toBerthError(err, `reading ${key}`);
  }
  const kv = res.kvs[0];
  if (!kv) return undefined;
  return {
    value: codec.decode(kv.value.toString(), key),
    modRevision: Number(kv.mod_revision),
    createRevision: Number(kv.create_revision),
  };
}

/**
 * Updates `key` by compare-and-swap on its mod revision. `mutate` may run several times (once per
 * attempt) and must not have side effects beyond computing the next value.
 */
export async function casUpdate<T>(
  client: Etcd3,
  key: string,
  mutate: Mutator<T>,
  options: CasOptions<T> = {},
): Promise<CasResult<T>> {
  const codec = options.codec ?? jsonCodec<T>();
  const maxAttempts = options.maxAttempts ?? 10;
  const keyBuf = Buffer.from(key);
  for (let attempt = 1; attempt <= maxAttempts; attempt++) {
    const current = await getVersioned(client, key, codec);
    const next = await mutate(current, attempt);
    if (next === UNCHANGED) return { outcome: 'unchanged', current, attempts: attempt };
    if (next === DELETE && !current) return { outcome: 'unchanged', current, attempts: attempt };
    const compare = [
      { key: keyBuf, target: 'Mod' as const, result: 'Equal' as const, mod_revision: current?.modRevision ?? 0 },
    ];
    const op =
      next === DELETE
        ? { request_delete_range: { key: keyBuf } }
        : {
            request_put: {
              key: keyBuf,
              value: Buffer.from(codec.encode(next)),
              ...(options.lease ? { lease: options.lease } : {}),
            },
          };
    let res: Awaited<ReturnType<Etcd3['kv']['txn']>>;
    try {
      res = await client.kv.txn({ compare, success: [op], failure: [] });
    } catch (err) {
      throw toBerthError(err, `writing ${key}`);
    }
    if (res.succeeded) {
      const modRevision = Number(res.header.revision);
      return next === DELETE
        ? { outcome: 'deleted', modRevision, attempts: attempt }
        : { outcome: 'written', value: next, modRevision, attempts: attempt };
    }
    options.onConflict?.(attempt);
    // Back off a little, with jitter, so a hot key's writers do not retry in lockstep.
    if (attempt < maxAttempts) await delay(Math.min(50, 2 ** attempt) * Math.random());
  }
  throw new ConflictError(`${key} kept changing: gave up after ${maxAttempts} attempts`);
}

/** Creates `key` only if it does not exist. Returns false when it already exists. */
export async function createIfAbsent(client: Etcd3, key: string, raw: string, lease?: string): Promise<boolean> {
  const keyBuf = Buffer.from(key);
  try {
    const res = await client.kv.txn({
      compare: [{ key: keyBuf, target: 'Create', result: 'Equal', create_revision: 0 }],
      success: [{ request_put: { key: keyBuf, value: Buffer.from(raw), ...(lease ? { lease } : {}) } }],
      failure: [],
    });
    return res.succeeded;
  } catch (err) {
    throw toBerthError(err, `creating ${key}`);
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
