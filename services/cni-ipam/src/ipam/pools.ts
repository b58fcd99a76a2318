/** Pools of a cell: add, list, drain (no new addresses from it), remove (refused while in use). */
import { BerthError, CompareFailedError } from '@berth/shared/errors';
import type { BerthKeys } from '@berth/shared/keys';
import { type KvBackend, type Op, retryOnConflict, Store } from '@berth/shared/store/lite';
import { overlaps, parseCidr } from './cidr.ts';
import { type PoolRecord, parseBlock, parsePool } from './model.ts';

/** A pool change refused: a bad or overlapping CIDR, no such pool, or a pool still in use. */
export class PoolError extends BerthError {
  static readonly CODE = 'pool-refused';
}

export type PoolUsage = PoolRecord & { blocks: number; allocated: number; capacity: number };

export class Pools {
  readonly #backend: KvBackend;
  readonly #store: Store;
  readonly #keys: BerthKeys;
  readonly #cell: string;

  constructor(backend: KvBackend, keys: BerthKeys, cell: string) {
    this.#backend = backend;
    this.#store = new Store(backend);
    this.#keys = keys;
    this.#cell = cell;
  }

  async list(): Promise<PoolUsage[]> {
    const [pools, blocks] = await Promise.all([
      this.#backend.range(this.#keys.ipamPools(this.#cell)),
      this.#backend.range(this.#keys.ipamBlocks(this.#cell)),
    ]);
    const parsed = blocks.map(parseBlock);
    return pools
      .map(parsePool)
      .map((p) => {
        const mine = parsed.filter((b) => b.pool === p.cidr);
        return {
          ...p,
          blocks: mine.length,
          allocated: mine.reduce((n, b) => n + Object.keys(b.allocations).length, 0),
          capacity: parseCidr(p.cidr).size - 2,
        };
      })
      .sort((a, b) => parseCidr(a.cidr).base - parseCidr(b.cidr).base);
  }

  async add(cidrText: string): Promise<PoolRecord> {
    let cidr: ReturnType<typeof parseCidr>;
    try {
      cidr = parseCidr(cidrText);
    } catch (err) {
      throw new PoolError((err as Error).message);
    }
    if (cidr.prefix > 28) throw new PoolError(`${cidr.text} is smaller than one block of 16 addresses (/28)`);
    for (const p of await this.list()) {
      if (overlaps(parseCidr(p.cidr), cidr))
        throw new PoolError(`${cidr.text} overlaps pool ${p.cidr} of cell ${this.#cell}`);
    }
    const pool: PoolRecord = { cidr: cidr.text, state: 'active', createdAt: new Date().toISOString() };
    const key = this.#keys.ipamPool(this.#cell, cidr.text);
    await this.#commit([{ op: 'create', key, value: pool }], `pool ${cidr.text} already exists in cell ${this.#cell}`);
    return pool;
  }

  async setState(cidrText: string, state: PoolRecord['state']): Promise<PoolRecord> {
    const key = this.#keys.ipamPool(this.#cell, parseCidr(cidrText).text);
    return retryOnConflict(
      async () => {
        const kv = await this.#backend.get(key);
        if (!kv) throw new PoolError(`cell ${this.#cell} has no pool ${cidrText}`);
        const pool = { ...parsePool(kv), state };
        await this.#store.commit([{ op: 'update', key, value: pool, modRevision: kv.modRevision }]);
        return pool;
      },
      { maxAttempts: 10, what: `pool ${cidrText}` },
    );
  }

  /** Removes a pool and its empty blocks; refused while any address of it is allocated. */
  async remove(cidrText: string): Promise<void> {
    const cidr = parseCidr(cidrText);
    const key = this.#keys.ipamPool(this.#cell, cidr.text);
    const kv = await this.#backend.get(key);
    if (!kv) throw new PoolError(`cell ${this.#cell} has no pool ${cidr.text}`);
    const blocks = (await this.#backend.range(this.#keys.ipamBlocks(this.#cell)))
      .map((b) => ({ kv: b, block: parseBlock(b) }))
      .filter((b) => b.block.pool === cidr.text);
    const used = blocks.filter((b) => Object.keys(b.block.allocations).length > 0);
    if (used.length > 0) {
      const n = used.reduce((s, b) => s + Object.keys(b.block.allocations).length, 0);
      throw new PoolError(
        `pool ${cidr.text} still has ${n} allocated address${n === 1 ? '' : 'es'} in ${used.length} block${used.length === 1 ? '' : 's'}: drain it (cnictl pool drain) and wait, or release them first`,
      );
    }
    const ops: Op[] = [
      { op: 'delete', key, modRevision: kv.modRevision },
      ...blocks.flatMap((b): Op[] => [
        { op: 'delete', key: b.kv.key, modRevision: b.kv.modRevision },
        { op: 'delete', key: this.#keys.ipamAffinity(this.#cell, b.block.node, b.block.cidr) },
      ]),
    ];
    await this.#commit(ops, `pool ${cidr.text} changed while removing it; try again`);
  }

  /** One transaction; a compare that did not hold is the caller's message, not a retry. */
  async #commit(ops: Op[], changed: string): Promise<void> {
    try {
      await this.#store.commit(ops);
    } catch (err) {
      if (err instanceof CompareFailedError) throw new PoolError(changed, { cause: err });
      throw err;
    }
  }
}
