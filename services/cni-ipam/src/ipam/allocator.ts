/**
 * The allocator: addresses from a cell's pools, in blocks of 16 that nodes claim.
 *
 * ADD: the handle (`<network>.<containerId>.<ifName>`) already has an address → that one
 * (idempotent). Else the first free address in the node's own blocks; else a new block is claimed
 * (compare-and-swap on the block's key, starting at an offset derived from the node name so nodes
 * rarely race for the same block) and the address taken from it; else, when no pool has a free
 * block, an address is borrowed from another node's block. Every allocation is one etcd
 * transaction over the block (its mod revision), the address and the handle: two ADDs racing for
 * one address cannot both win, and nothing is half written. A crash after a claim leaves an empty
 * block owned by the node: its next ADD uses it, and an empty block is released after a grace.
 *
 * DEL: the handle's address is freed (one transaction); no handle → nothing to do (idempotent).
 */
import { createHash } from 'node:crypto';
import type { BerthKeys } from '@berth/shared/keys';
import { blockAt, blockCount, type Cidr, contains, intToIp, ipToInt, parseCidr, reservedOffsets } from './cidr.ts';
import {
  type BlockRecord,
  type HandleRecord,
  type IpRecord,
  type PoolRecord,
  parseBlock,
  parseHandle,
  parseIp,
  parsePool,
} from './model.ts';
import type { IpStore, KeyValue } from './store.ts';

export class PoolExhaustedError extends Error {
  override name = 'PoolExhaustedError';
}
export class AllocationNotFoundError extends Error {
  override name = 'AllocationNotFoundError';
}

export type AllocateRequest = {
  network: string;
  containerId: string;
  ifName: string;
  node: string;
  namespace?: string | undefined;
  pod?: string | undefined;
  /** Only these pools (CIDRs); default every active pool of the cell. */
  pools?: string[] | undefined;
  /** The gateway, never handed out; default the first address of the address's pool. */
  gateway?: string | undefined;
};

export type Allocation = { ip: string; pool: Cidr; gateway: string; record: IpRecord };

export type AllocatorOptions = {
  store: IpStore;
  keys: BerthKeys;
  cell: string;
  /** For tests: called after a block is claimed and before the address is taken from it. */
  afterClaim?: (block: string) => Promise<void> | void;
  now?: () => Date;
  maxAttempts?: number;
};

type StoredBlock = { kv: KeyValue; block: BlockRecord };

export function handleOf(network: string, containerId: string, ifName: string): string {
  return `${network}.${containerId}.${ifName}`;
}

export class Allocator {
  readonly #o: AllocatorOptions;

  constructor(options: AllocatorOptions) {
    this.#o = options;
  }

  get #keys(): BerthKeys {
    return this.#o.keys;
  }

  #now(): string {
    return (this.#o.now?.() ?? new Date()).toISOString();
  }

  async pools(): Promise<PoolRecord[]> {
    const kvs = await this.#o.store.range(this.#keys.ipamPools(this.#o.cell));
    return kvs
      .map((kv) => parsePool(kv.value))
      .sort((a, b) => ipToInt(a.cidr.split('/')[0] as string) - ipToInt(b.cidr.split('/')[0] as string));
  }

  async find(handle: string): Promise<IpRecord | undefined> {
    const h = await this.#o.store.get(this.#keys.ipamHandle(this.#o.cell, handle));
    if (!h) return undefined;
    const ip = await this.#o.store.get(this.#keys.ipamIp(this.#o.cell, parseHandle(h.value).ip));
    return ip ? parseIp(ip.value) : undefined;
  }

  async allocate(req: AllocateRequest): Promise<Allocation> {
    const handle = handleOf(req.network, req.containerId, req.ifName);
    const pools = (await this.pools()).filter(
      (p) => p.state === 'active' && (!req.pools || req.pools.includes(p.cidr)),
    );
    if (pools.length === 0) {
      throw new PoolExhaustedError(
        req.pools
          ? `none of the pools ${req.pools.join(', ')} is an active pool of cell ${this.#o.cell}`
          : `cell ${this.#o.cell} has no active IP pool: add one with \`cnictl --cell ${this.#o.cell} pool add <cidr>\``,
      );
    }
    const cidrs = pools.map((p) => parseCidr(p.cidr));
    const maxAttempts = this.#o.maxAttempts ?? 200;
    for (let attempt = 0; attempt < maxAttempts; attempt++) {
      if (attempt > 0) await jitter(attempt);
      const existing = await this.find(handle);
      if (existing) return this.#result(existing, cidrs, req);
      // 1. The node's own blocks.
      // Read before the node's blocks: a claim made after this read makes ours fail (no extra block).
      const claims = (await this.#o.store.get(this.#keys.ipamClaims(this.#o.cell, req.node)))?.modRevision ?? 0;
      const own = await this.#ownBlocks(req.node, pools);
      for (const b of own) {
        const done = await this.#tryAllocate(b, req, handle, cidrs);
        if (done === 'conflict') break; // re-read everything and start over
        if (done) return done;
      }
      if (own.some((b) => this.#freeOffset(b.block, cidrs, req) !== undefined)) continue; // lost races: retry
      // 2. A new block.
      const claimed = await this.#claimBlock(req.node, cidrs, claims);
      if (claimed === 'conflict') continue;
      if (claimed) {
        await this.#o.afterClaim?.(claimed);
        continue; // the next round finds it among the node's own blocks
      }
      // 3. Borrow from another node's block.
      const borrowed = await this.#borrow(req, handle, cidrs);
      if (borrowed === 'conflict') continue;
      if (borrowed) return borrowed;
      throw new PoolExhaustedError(
        `no free address in the pools of cell ${this.#o.cell} (${cidrs.map((c) => c.text).join(', ')}): add a pool with \`cnictl --cell ${this.#o.cell} pool add <cidr>\`, or release leaked addresses with \`cnictl --cell ${this.#o.cell} release --leaked\``,
      );
    }
    throw new Error(`could not allocate an address after ${maxAttempts} attempts: too many concurrent changes`);
  }

  async release(network: string, containerId: string, ifName: string): Promise<IpRecord | undefined> {
    return this.releaseHandle(handleOf(network, containerId, ifName));
  }

  /** Frees the handle's address. Returns what was freed; nothing to free is not an error. */
  async releaseHandle(handle: string): Promise<IpRecord | undefined> {
    const { store } = this.#o;
    const handleKey = this.#keys.ipamHandle(this.#o.cell, handle);
    for (let attempt = 0; attempt < (this.#o.maxAttempts ?? 200); attempt++) {
      if (attempt > 0) await jitter(attempt);
      const h = await store.get(handleKey);
      if (!h) return undefined;
      const record = parseHandle(h.value);
      const ipKey = this.#keys.ipamIp(this.#o.cell, record.ip);
      const ip = await store.get(ipKey);
      const blockKey = this.#keys.ipamBlock(this.#o.cell, record.block);
      const blockKv = await store.get(blockKey);
      if (!blockKv) {
        if (await store.txn([{ key: handleKey, modRevision: h.modRevision }], [{ del: handleKey }, { del: ipKey }])) {
          return ip ? parseIp(ip.value) : undefined;
        }
        continue;
      }
      const block = parseBlock(blockKv.value);
      const offset = String(ipToInt(record.ip) - parseCidr(block.cidr).base);
      const allocations = { ...block.allocations };
      if (allocations[offset] === handle) delete allocations[offset];
      const next: BlockRecord = { ...block, allocations };
      if (Object.keys(allocations).length === 0) next.emptySince = this.#now();
      const ok = await store.txn(
        [
          { key: blockKey, modRevision: blockKv.modRevision },
          { key: handleKey, modRevision: h.modRevision },
        ],
        [{ put: blockKey, value: JSON.stringify(next) }, { del: ipKey }, { del: handleKey }],
      );
      if (ok) return ip ? parseIp(ip.value) : undefined;
    }
    throw new Error(`could not release ${handle}: too many concurrent changes`);
  }

  /** Frees an address by itself (cnictl release). */
  async releaseIp(ip: string): Promise<IpRecord | undefined> {
    const kv = await this.#o.store.get(this.#keys.ipamIp(this.#o.cell, ip));
    if (!kv) return undefined;
    return this.releaseHandle(parseIp(kv.value).handle);
  }

  /** Releases blocks that have been empty for longer than `graceMs`. Returns their CIDRs. */
  async releaseEmptyBlocks(graceMs: number): Promise<string[]> {
    const released: string[] = [];
    const now = (this.#o.now?.() ?? new Date()).getTime();
    for (const kv of await this.#o.store.range(this.#keys.ipamBlocks(this.#o.cell))) {
      const block = parseBlock(kv.value);
      if (Object.keys(block.allocations).length > 0) continue;
      const since = Date.parse(block.emptySince ?? block.claimedAt);
      if (!(now - since >= graceMs)) continue;
      const ok = await this.#o.store.txn(
        [{ key: kv.key, modRevision: kv.modRevision }],
        [{ del: kv.key }, { del: this.#keys.ipamAffinity(this.#o.cell, block.node, block.cidr) }],
      );
      if (ok) released.push(block.cidr);
    }
    return released;
  }

  // ---- internals ----------------------------------------------------------------------------

  async #ownBlocks(node: string, pools: PoolRecord[]): Promise<StoredBlock[]> {
    const { store } = this.#o;
    const affinities = await store.range(this.#keys.ipamAffinities(this.#o.cell, node), { keysOnly: true });
    const poolSet = new Set(pools.map((p) => p.cidr));
    const blocks = await Promise.all(
      affinities.map((a) => {
        const blockKeyPart = a.key.slice(a.key.lastIndexOf('/') + 1);
        return store.get(`${this.#keys.ipamBlocks(this.#o.cell)}${blockKeyPart}`);
      }),
    );
    return blocks
      .filter((kv): kv is KeyValue => kv !== undefined)
      .map((kv) => ({ kv, block: parseBlock(kv.value) }))
      .filter((b) => b.block.node === node && poolSet.has(b.block.pool))
      .sort((a, b) => parseCidr(a.block.cidr).base - parseCidr(b.block.cidr).base);
  }

  #gatewayFor(pool: Cidr, req: AllocateRequest): number {
    if (req.gateway) {
      const g = ipToInt(req.gateway);
      if (contains(pool, g)) return g;
    }
    return pool.base + 1;
  }

  #freeOffset(block: BlockRecord, cidrs: Cidr[], req: AllocateRequest): number | undefined {
    const blockCidr = parseCidr(block.cidr);
    const pool = cidrs.find((c) => c.text === block.pool) ?? parseCidr(block.pool);
    const reserved = reservedOffsets(pool, blockCidr, this.#gatewayFor(pool, req));
    const start = block.next ?? 0;
    for (let n = 0; n < blockCidr.size; n++) {
      const i = (start + n) % blockCidr.size;
      if (!reserved.has(i) && block.allocations[String(i)] === undefined) return i;
    }
    return undefined;
  }

  async #tryAllocate(
    stored: StoredBlock,
    req: AllocateRequest,
    handle: string,
    cidrs: Cidr[],
  ): Promise<Allocation | 'conflict' | undefined> {
    const offset = this.#freeOffset(stored.block, cidrs, req);
    if (offset === undefined) return undefined;
    const blockCidr = parseCidr(stored.block.cidr);
    const ip = intToIp(blockCidr.base + offset);
    const at = this.#now();
    const record: IpRecord = {
      ip,
      block: stored.block.cidr,
      pool: stored.block.pool,
      node: req.node,
      handle,
      network: req.network,
      containerId: req.containerId,
      ifName: req.ifName,
      ...(req.namespace ? { namespace: req.namespace } : {}),
      ...(req.pod ? { pod: req.pod } : {}),
      allocatedAt: at,
    };
    const { emptySince: _gone, ...rest } = stored.block;
    const block: BlockRecord = {
      ...rest,
      allocations: { ...stored.block.allocations, [String(offset)]: handle },
      next: (offset + 1) % blockCidr.size,
    };
    const handleRecord: HandleRecord = { ip, block: stored.block.cidr };
    const ipKey = this.#keys.ipamIp(this.#o.cell, ip);
    const handleKey = this.#keys.ipamHandle(this.#o.cell, handle);
    const ok = await this.#o.store.txn(
      [
        { key: stored.kv.key, modRevision: stored.kv.modRevision },
        { key: ipKey, absent: true },
        { key: handleKey, absent: true },
      ],
      [
        { put: stored.kv.key, value: JSON.stringify(block) },
        { put: ipKey, value: JSON.stringify(record) },
        { put: handleKey, value: JSON.stringify(handleRecord) },
      ],
    );
    return ok ? this.#result(record, cidrs, req) : 'conflict';
  }

  /**
   * Claims the first unclaimed block of the pools, searching from an offset of the node's own. The
   * claim holds only if the node claimed nothing since `claims` (the revision of its claims key
   * when its blocks were read): ADDs of one node that all find its blocks full at once claim one
   * block between them, not one each.
   */
  async #claimBlock(node: string, cidrs: Cidr[], claims: number): Promise<string | 'conflict' | undefined> {
    const claimed = new Set(
      (await this.#o.store.range(this.#keys.ipamBlocks(this.#o.cell), { keysOnly: true })).map((kv) =>
        kv.key.slice(kv.key.lastIndexOf('/') + 1),
      ),
    );
    const seed = createHash('sha256').update(node).digest().readUInt32BE(0);
    for (const pool of cidrs) {
      const count = blockCount(pool);
      const start = seed % count;
      for (let i = 0; i < count; i++) {
        const block = blockAt(pool, (start + i) % count);
        const blockKey = this.#keys.ipamBlock(this.#o.cell, block.text);
        if (claimed.has(blockKey.slice(blockKey.lastIndexOf('/') + 1))) continue;
        const record: BlockRecord = {
          cidr: block.text,
          pool: pool.text,
          node,
          claimedAt: this.#now(),
          allocations: {},
        };
        const ok = await this.#o.store.txn(
          [
            { key: blockKey, absent: true },
            { key: this.#keys.ipamClaims(this.#o.cell, node), modRevision: claims },
          ],
          [
            { put: blockKey, value: JSON.stringify(record) },
            { put: this.#keys.ipamAffinity(this.#o.cell, node, block.text), value: '' },
            {
              put: this.#keys.ipamClaims(this.#o.cell, node),
              value: JSON.stringify({ block: block.text, at: record.claimedAt }),
            },
          ],
        );
        return ok ? block.text : 'conflict';
      }
    }
    return undefined;
  }

  async #borrow(req: AllocateRequest, handle: string, cidrs: Cidr[]): Promise<Allocation | 'conflict' | undefined> {
    const pools = new Set(cidrs.map((c) => c.text));
    const blocks = (await this.#o.store.range(this.#keys.ipamBlocks(this.#o.cell)))
      .map((kv) => ({ kv, block: parseBlock(kv.value) }))
      .filter((b) => pools.has(b.block.pool) && b.block.node !== req.node);
    for (const b of blocks) {
      const done = await this.#tryAllocate(b, req, handle, cidrs);
      if (done) return done;
    }
    return undefined;
  }

  #result(record: IpRecord, cidrs: Cidr[], req: AllocateRequest): Allocation {
    const pool = cidrs.find((c) => c.text === record.pool) ?? parseCidr(record.pool);
    return { ip: record.ip, pool, gateway: intToIp(this.#gatewayFor(pool, req)), record };
  }
}

/** A short random pause after losing a race, growing a little with each loss. */
function jitter(attempt: number): Promise<void> {
  return new Promise((r) => setTimeout(r, Math.random() * Math.min(20, attempt)));
}
