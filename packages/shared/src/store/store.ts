/**
 * The one typed store every Berth component writes etcd through: reads decoded by their zod
 * schema, multi-key writes as one transaction whose compares say what must still hold, and a
 * failed compare as a typed error naming the keys that changed. A leader fence is one more
 * compare on every transaction of a fenced view (`store.fenced(election.fence)`), a quota guard
 * one more op; neither is one more loop. The retry policy lives in ./retry.ts, once.
 */
import type { z } from 'zod';
import { CompareFailedError, CorruptValueError, NotLeaderError } from '../errors/index.ts';
import type { Logger } from '../logging/index.ts';
import type { Compare, KeyValue, KvBackend, Write } from './backend.ts';

export type Stored<T> = { key: string; value: T; modRevision: number; createRevision: number };

/** One write (or one compare) of a transaction. Values are JSON-encoded; `raw` writes a string as is. */
export type Op =
  /** Write the key only if it does not exist. */
  | { op: 'create'; key: string; value: unknown; lease?: string | undefined }
  /** Write the key only if it is unchanged since read at `modRevision`. */
  | { op: 'update'; key: string; value: unknown; modRevision: number; lease?: string | undefined }
  /** Write the key whatever it holds. */
  | { op: 'put'; key: string; value: unknown; lease?: string | undefined }
  | { op: 'put-raw'; key: string; raw: string; lease?: string | undefined }
  /** Delete the key (only if unchanged since `modRevision`, when given). */
  | { op: 'delete'; key: string; modRevision?: number | undefined }
  | { op: 'delete-prefix'; prefix: string }
  /** Write nothing; the key must be unchanged since `modRevision` (0: absent). */
  | { op: 'expect'; key: string; modRevision: number }
  /** Write nothing; any compare in the backend's vocabulary (a fence, a guard). */
  | { op: 'compare'; compare: Compare };

/** A compare that holds only while this process leads; throws NotLeaderError when it does not. */
export type Fence = () => Compare;

export type StoreOptions = {
  logger?: Logger | undefined;
  fence?: Fence | undefined;
  /** What a value that fails its schema does: skipped with a warning (default) or thrown. */
  invalid?: 'skip' | 'throw';
  /** Called once per transaction sent (for a service's commit counter). */
  onCommit?: (() => void) | undefined;
};

export class Store {
  readonly backend: KvBackend;
  readonly #options: StoreOptions;
  readonly #logger: Logger | undefined;

  constructor(backend: KvBackend, options: StoreOptions = {}) {
    this.backend = backend;
    this.#options = options;
    this.#logger = options.logger?.child({ component: 'store' });
  }

  /** The same store, with `fence` compared in every transaction (and `onCommit` counting them). */
  fenced(fence: Fence, options: Pick<StoreOptions, 'onCommit'> = {}): Store {
    return new Store(this.backend, { ...this.#options, ...options, fence });
  }

  async get<S extends z.ZodType>(key: string, schema: S): Promise<Stored<z.output<S>> | undefined> {
    const kv = await this.backend.get(key);
    return kv ? this.#decode(kv, schema) : undefined;
  }

  /** Every value under a prefix (keys one level down or deeper), sorted by key. */
  async list<S extends z.ZodType>(
    prefix: string,
    schema: S,
    options: { directChildrenOnly?: boolean; keyFilter?: (key: string) => boolean } = {},
  ): Promise<Stored<z.output<S>>[]> {
    const out: Stored<z.output<S>>[] = [];
    for (const kv of await this.backend.range(prefix)) {
      if (options.directChildrenOnly && kv.key.slice(prefix.length).includes('/')) continue;
      if (options.keyFilter && !options.keyFilter(kv.key)) continue;
      const stored = this.#decode(kv, schema);
      if (stored) out.push(stored);
    }
    return out;
  }

  /** Every key under a prefix, with its revisions and no value. */
  async keys(prefix: string): Promise<KeyValue[]> {
    return this.backend.range(prefix, { keysOnly: true });
  }

  /** The distinct first segments of the keys under a prefix. */
  async childNames(prefix: string): Promise<string[]> {
    const names = new Set<string>();
    for (const kv of await this.keys(prefix)) {
      const rest = kv.key.slice(prefix.length);
      const slash = rest.indexOf('/');
      const name = slash < 0 ? rest : rest.slice(0, slash);
      if (name) names.add(name);
    }
    return [...names];
  }

  /**
   * All ops in one transaction: every compare must hold, or nothing is written. Resolves with
   * the revision of the write; rejects with CompareFailedError naming the keys that changed, or
   * NotLeaderError when the fence failed.
   */
  async commit(ops: readonly Op[]): Promise<number> {
    const compares: Compare[] = [];
    const writes: Write[] = [];
    const fence = this.#options.fence?.();
    if (fence) compares.push(fence);
    for (const op of ops) {
      switch (op.op) {
        case 'create':
          compares.push({ key: op.key, absent: true });
          writes.push({ put: op.key, value: JSON.stringify(op.value), lease: op.lease });
          break;
        case 'update':
          compares.push({ key: op.key, modRevision: op.modRevision });
          writes.push({ put: op.key, value: JSON.stringify(op.value), lease: op.lease });
          break;
        case 'put':
          writes.push({ put: op.key, value: JSON.stringify(op.value), lease: op.lease });
          break;
        case 'put-raw':
          writes.push({ put: op.key, value: op.raw, lease: op.lease });
          break;
        case 'delete':
          if (op.modRevision !== undefined) compares.push({ key: op.key, modRevision: op.modRevision });
          writes.push({ del: op.key });
          break;
        case 'delete-prefix':
          writes.push({ delPrefix: op.prefix });
          break;
        case 'expect':
          compares.push({ key: op.key, modRevision: op.modRevision });
          break;
        case 'compare':
          compares.push(op.compare);
          break;
      }
    }
    this.#options.onCommit?.();
    const res = await this.backend.txn(compares, writes);
    if (res.succeeded) return res.revision;
    if (fence && res.failedKeys.includes(fence.key)) {
      throw new NotLeaderError(`no longer the leader (${fence.key} changed); write refused`);
    }
    throw new CompareFailedError(res.failedKeys);
  }

  #decode<S extends z.ZodType>(kv: KeyValue, schema: S): Stored<z.output<S>> | undefined {
    let json: unknown;
    let parsed: ReturnType<S['safeParse']> | undefined;
    try {
      json = JSON.parse(kv.value);
      parsed = schema.safeParse(json) as ReturnType<S['safeParse']>;
    } catch {
      parsed = undefined;
    }
    if (!parsed?.success) {
      if (this.#options.invalid === 'throw') {
        throw new CorruptValueError(`${kv.key} holds a value that does not match its schema`);
      }
      this.#logger?.warn(
        { key: kv.key, issues: parsed?.error?.issues.slice(0, 3) },
        'stored value does not match its schema; skipped',
      );
      return undefined;
    }
    return {
      key: kv.key,
      value: parsed.data as z.output<S>,
      modRevision: kv.modRevision,
      createRevision: kv.createRevision,
    };
  }
}
