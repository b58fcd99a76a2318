/**
 * Single reads and the create-if-absent an election campaigns with, on the etcd3 client. Every
 * racing write goes through ../store (one typed store, one retry loop); nothing here loops.
 */
import type { Etcd3 } from 'etcd3';
import { toBerthError } from './client.ts';

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
