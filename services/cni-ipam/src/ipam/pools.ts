/** Pools of a cell: add, list, drain (no new addresses from it), remove (refused while in use). */
import type { BerthKeys } from '@berth/shared/keys';
import { overlaps, parseCidr } from './cidr.ts';
import { type BlockRecord, type PoolRecord, parseBlock, parsePool } from './model.ts';
import type { IpStore } from './store.ts';

export class PoolError extends Error {
  override name = 'PoolError';
}

export type PoolUsage = PoolRecord & { blocks: number; allocated: number; capacity: number };

export class Pools {
  readonly #store: IpStore;
  readonly #keys: BerthKeys;
  readonly #cell: string;

  constructor(store: IpStore, keys: BerthKeys, cell: string) {
    this.#store = store;
    this.#keys = keys;
    this.#cell = cell;
  }

  async list(): Promise<PoolUsage[]> {
    const [pools, blocks] = await Promise.all([
      this.#store.range(this.#keys.ipamPools(this.#cell)),
      this.#store.range(this.#keys.ipamBlocks(this.#cell)),
    ]);
    const parsed = blocks.map((b) => parseBlock(b.value));
    return pools
      .map((kv) => parsePool(kv.value))
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
    if (!(await this.#store.txn([{ key, absent: true }], [{ put: key, value: JSON.stringify(pool) }]))) {
      throw new PoolError(`pool ${cidr.text} already exists in cell ${this.#cell}`);
    }
    return pool;
  }

  async setState(cidrText: string, state: PoolRecord['state']): Promise<PoolRecord> {
    const key = this.#keys.ipamPool(this.#cell, parseCidr(cidrText).text);
    for (let i = 0; i < 10; i++) {
      const kv = await this.#store.get(key);
      if (!kv) throw new PoolError(`cell ${this.#cell} has no pool ${cidrText}`);
      const pool = { ...parsePool(kv.value), state };
      if (await this.#store.txn([{ key, modRevision: kv.modRevision }], [{ put: key, value: JSON.stringify(pool) }]))
        return pool;
    }
    throw new PoolError(`pool ${cidrText} kept changing; try again`);
  }

  /** Removes a pool and its empty blocks; refused while any address of it is allocated. */
  async remove(cidrText: string): Promise<void> {
    const cidr = parseCidr(cidrText);
    const key = this.#keys.ipamPool(this.#cell, cidr.text);
    const kv = await this.#store.get(key);
    if (!kv) throw new PoolError(`cell ${this.#cell} has no pool ${cidr.text}`);
    const blocks = (await this.#store.range(this.#keys.ipamBlocks(this.#cell)))
      .map((b) => ({ kv: b, block: parseBlock(b.value) }))
      .filter((b) => b.block.pool === cidr.text);
    const used = blocks.filter((b) => Object.keys(b.block.allocations).length > 0);
    if (used.length > 0) {
      const n = used.reduce((s, b) => s + Object.keys(b.block.allocations).length, 0);
      throw new PoolError(
        `pool ${cidr.text} still has ${n} allocated address${n === 1 ? '' : 'es'} in ${used.length} block${used.length === 1 ? '' : 's'}: drain it (cnictl pool drain) and wait, or release them first`,
      );
    }
    const compares = [
      { key, modRevision: kv.modRevision },
      ...blocks.map((b) => ({ key: b.kv.key, modRevision: b.kv.modRevision })),
    ];
    const writes = [
      { del: key },
      ...blocks.flatMap((b: { block: BlockRecord; kv: { key: string } }) => [
        { del: b.kv.key },
        { del: this.#keys.ipamAffinity(this.#cell, b.block.node, b.block.cidr) },
      ]),
    ];
    if (!(await this.#store.txn(compares, writes)))
      throw new PoolError(`pool ${cidr.text} changed while removing it; try again`);
  }
}
