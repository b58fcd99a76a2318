/**
 * The API's view of etcd: typed reads validated by zod, and multi-key writes as one transaction
 * whose compares say what must still hold (a key absent, a key unchanged since it was read).
 * When a compare fails, the caller learns which one, to answer 409 or 412 precisely.
 */
import { type Etcd3, prefixRangeEnd, toBerthError } from '@berth/shared/etcd';
import type { Logger } from '@berth/shared/logging';
import type { z } from 'zod';

export type Stored<T> = { key: string; value: T; modRevision: number; createRevision: number };

/** One write of a transaction and what must hold for it. */
export type WriteOp =
  | { op: 'create'; key: string; value: unknown }
  | { op: 'update'; key: string; value: unknown; modRevision: number }
  | { op: 'put'; key: string; value: unknown }
  | { op: 'delete'; key: string; modRevision?: number }
  | { op: 'delete-prefix'; prefix: string }
  | { op: 'expect'; key: string; modRevision: number };

export type CommitResult = { ok: true; revision: number } | { ok: false; failedKeys: string[] };

export class EtcdStore {
  readonly etcd: Etcd3;
  readonly #logger: Logger;

  constructor(etcd: Etcd3, logger: Logger) {
    this.etcd = etcd;
    this.#logger = logger.child({ component: 'store' });
  }

  async get<S extends z.ZodType>(key: string, schema: S): Promise<Stored<z.output<S>> | undefined> {
    let res: Awaited<ReturnType<Etcd3['kv']['range']>>;
    try {
      res = await this.etcd.kv.range({ key: Buffer.from(key) });
    } catch (err) {
      throw toBerthError(err, `reading ${key}`);
    }
    const kv = res.kvs[0];
    return kv ? this.#decode(key, kv.value, kv.mod_revision, kv.create_revision, schema) : undefined;
  }

  /** Every value under a prefix (keys one level down or deeper), sorted by key. */
  async list<S extends z.ZodType>(
    prefix: string,
    schema: S,
    options: { directChildrenOnly?: boolean; keyFilter?: (key: string) => boolean } = {},
  ): Promise<Stored<z.output<S>>[]> {
    let res: Awaited<ReturnType<Etcd3['kv']['range']>>;
    try {
      res = await this.etcd.kv.range({ key: Buffer.from(prefix), range_end: prefixRangeEnd(prefix) });
    } catch (err) {
      throw toBerthError(err, `listing ${prefix}`);
    }
    const out: Stored<z.output<S>>[] = [];
    for (const kv of res.kvs) {
      const key = kv.key.toString();
      if (options.directChildrenOnly && key.slice(prefix.length).includes('/')) continue;
      if (options.keyFilter && !options.keyFilter(key)) continue;
      const stored = this.#decode(key, kv.value, kv.mod_revision, kv.create_revision, schema);
      if (stored) out.push(stored);
    }
    return out;
  }

  /** Keys (no values) directly under a prefix. */
  async childNames(prefix: string): Promise<string[]> {
    const res = await this.etcd.kv
      .range({ key: Buffer.from(prefix), range_end: prefixRangeEnd(prefix), keys_only: true })
      .catch((err: unknown) => {
        throw toBerthError(err, `listing ${prefix}`);
      });
    const names = new Set<string>();
    for (const kv of res.kvs) {
      const rest = kv.key.toString().slice(prefix.length);
      const name = rest.split('/')[0];
      if (name) names.add(name);
    }
    return [...names];
  }

  /** All writes in one transaction; every compare must hold or nothing is written. */
  async commit(ops: WriteOp[]): Promise<CommitResult> {
    const compare: NonNullable<Parameters<Etcd3['kv']['txn']>[0]['compare']> = [];
    const success: NonNullable<Parameters<Etcd3['kv']['txn']>[0]['success']> = [];
    const compareKeys: string[] = [];
    for (const op of ops) {
      switch (op.op) {
        case 'create':
          compare.push({ key: Buffer.from(op.key), target: 'Create', result: 'Equal', create_revision: 0 });
          compareKeys.push(op.key);
          success.push({ request_put: { key: Buffer.from(op.key), value: Buffer.from(JSON.stringify(op.value)) } });
          break;
        case 'update':
          compare.push({ key: Buffer.from(op.key), target: 'Mod', result: 'Equal', mod_revision: op.modRevision });
          compareKeys.push(op.key);
          success.push({ request_put: { key: Buffer.from(op.key), value: Buffer.from(JSON.stringify(op.value)) } });
          break;
        case 'put':
          success.push({ request_put: { key: Buffer.from(op.key), value: Buffer.from(JSON.stringify(op.value)) } });
          break;
        case 'delete':
          if (op.modRevision !== undefined) {
            compare.push({ key: Buffer.from(op.key), target: 'Mod', result: 'Equal', mod_revision: op.modRevision });
            compareKeys.push(op.key);
          }
          success.push({ request_delete_range: { key: Buffer.from(op.key) } });
          break;
        case 'delete-prefix':
          success.push({
            request_delete_range: { key: Buffer.from(op.prefix), range_end: prefixRangeEnd(op.prefix) },
          });
          break;
        case 'expect':
          compare.push({ key: Buffer.from(op.key), target: 'Mod', result: 'Equal', mod_revision: op.modRevision });
          compareKeys.push(op.key);
          break;
      }
    }
    // On failure, read back each compared key's revisions in the same transaction, so the caller
    // learns which compare failed without a second round trip.
    const failure = compareKeys.map((key) => ({ request_range: { key: Buffer.from(key), keys_only: true } }));
    let res: Awaited<ReturnType<Etcd3['kv']['txn']>>;
    try {
      res = await this.etcd.kv.txn({ compare, success, failure });
    } catch (err) {
      throw toBerthError(err, 'writing');
    }
    if (res.succeeded) return { ok: true, revision: Number(res.header.revision) };
    const failedKeys: string[] = [];
    compare.forEach((c, i) => {
      const kv = res.responses[i]?.response_range?.kvs[0];
      const holds =
        c.target === 'Create'
          ? !kv
          : (kv ? Number(kv.mod_revision) : 0) === Number((c as { mod_revision: number }).mod_revision);
      if (!holds) failedKeys.push(compareKeys[i] as string);
    });
    return { ok: false, failedKeys };
  }

  #decode<S extends z.ZodType>(
    key: string,
    raw: Buffer,
    modRevision: string,
    createRevision: string,
    schema: S,
  ): Stored<z.output<S>> | undefined {
    let json: unknown;
    try {
      json = JSON.parse(raw.toString());
    } catch (err) {
      this.#logger.warn({ key, err }, 'stored value is not JSON; skipped');
      return undefined;
    }
    const parsed = schema.safeParse(json);
    if (!parsed.success) {
      this.#logger.warn(
        { key, issues: parsed.error.issues.slice(0, 3) },
        'stored value does not match its schema; skipped',
      );
      return undefined;
    }
    return { key, value: parsed.data, modRevision: Number(modRevision), createRevision: Number(createRevision) };
  }
}
