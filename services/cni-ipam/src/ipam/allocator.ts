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
import { BerthError, CompareFailedError } from '@berth/shared/errors';
import type { BerthKeys } from '@berth/shared/keys';
import { type KeyValue, type KvBackend, type Op, retryOnConflict, Store } from '@berth/shared/store/lite';
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

/** No active pool, or no free address in any: add a pool or release leaked addresses. */
export class PoolExhaustedError extends BerthError {
  static readonly CODE = 'pool-exhausted';
}
/** CHECK found no address allocated to the container. */
export class AllocationNotFoundError extends BerthError {
  static readonly CODE = 'allocation-not-found';
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
  /** etcd's JSON gateway in the plugin and cnictl, etcd3 in the checker daemon, memory in unit tests. */
  backend: KvBackend;
  keys: BerthKeys;
  cell: string;
  /** For tests: called after a block is claimed and before the address is taken from it. */
  afterClaim?: (block: string) => Promise<void> | void;
  now?: () => Date;
  /** Attempts of one ADD or DEL when other writers keep winning the race. Default 200. */
  maxAttempts?: number;
};

type StoredBlock = { kv: KeyValue; block: BlockRecord };

/** What a batch of a node's requests came to (Allocator.commitMany), in the order asked. */
export type BatchResult = {
  adds: PromiseSettledResult<Allocation>[];
  dels: PromiseSettledResult<IpRecord | undefined>[];
};
type BatchDone = { adds: Map<number, Allocation>; dels: Map<number, IpRecord | undefined> };

export function handleOf(network: string, containerId: string, ifName: string): string {
  return `${network}.${containerId}.${ifName}`;
}

export class Allocator {
  readonly #o: AllocatorOptions;
  readonly #backend: KvBackend;
  /** Writes go through the shared store: a compare that did not hold is a CompareFailedError. */
  readonly #store: Store;

  constructor(options: AllocatorOptions) {
    this.#o = options;
    this.#backend = options.backend;
    this.#store = new Store(options.backend);
  }

  get #keys(): BerthKeys {
    return this.#o.keys;
  }

  #now(): string {
    return (this.#o.now?.() ?? new Date()).toISOString();
  }

  /**
   * Runs one attempt again on fresh reads when another writer won a race. Many ADDs of one node
   * race for its blocks at a pod storm, hence many attempts with short pauses (up to 20 ms).
   */
  #retry<T>(what: string, attempt: () => Promise<T>): Promise<T> {
    return retryOnConflict(attempt, {
      maxAttempts: this.#o.maxAttempts ?? 200,
      baseDelayMs: 0.5,
      maxDelayMs: 20,
      what,
    });
  }

  async pools(): Promise<PoolRecord[]> {
    const kvs = await this.#backend.range(this.#keys.ipamPools(this.#o.cell));
    return kvs.map(parsePool).sort((a, b) => parseCidr(a.cidr).base - parseCidr(b.cidr).base);
  }

  async find(handle: string): Promise<IpRecord | undefined> {
    const h = await this.#backend.get(this.#keys.ipamHandle(this.#o.cell, handle));
    if (!h) return undefined;
    const ip = await this.#backend.get(this.#keys.ipamIp(this.#o.cell, parseHandle(h).ip));
    return ip ? parseIp(ip) : undefined;
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
    return this.#retry(`the address of ${handle}`, () => this.#allocateOnce(req, handle, cidrs));
  }

  /** One attempt on fresh reads; a lost race throws CompareFailedError (and the attempt runs again). */
  async #allocateOnce(req: AllocateRequest, handle: string, cidrs: Cidr[]): Promise<Allocation> {
    const existing = await this.find(handle);
    if (existing) return this.#result(existing, cidrs, req);
    // 1. The node's own blocks.
    // Read before the node's blocks: a claim made after this read makes ours fail (no extra block).
    const claims = (await this.#backend.get(this.#keys.ipamClaims(this.#o.cell, req.node)))?.modRevision ?? 0;
    for (const b of await this.#ownBlocks(req.node, cidrs)) {
      const done = await this.#tryAllocate(b, req, handle, cidrs);
      if (done) return done;
    }
    // 2. A new block, and the address from it.
    const claimed = await this.#claimBlock(req.node, cidrs, claims);
    if (claimed) {
      await this.#o.afterClaim?.(claimed.block.cidr);
      const done = await this.#tryAllocate(claimed, req, handle, cidrs);
      if (done) return done;
    }
    // 3. Borrow from another node's block.
    const borrowed = await this.#borrow(req, handle, cidrs);
    if (borrowed) return borrowed;
    throw new PoolExhaustedError(
      `no free address in the pools of cell ${this.#o.cell} (${cidrs.map((c) => c.text).join(', ')}): add a pool with \`cnictl --cell ${this.#o.cell} pool add <cidr>\`, or release leaked addresses with \`cnictl --cell ${this.#o.cell} release --leaked\``,
    );
  }

  async release(network: string, containerId: string, ifName: string): Promise<IpRecord | undefined> {
    return this.releaseHandle(handleOf(network, containerId, ifName));
  }

  /** Frees the handle's address. Returns what was freed; nothing to free is not an error. */
  async releaseHandle(handle: string): Promise<IpRecord | undefined> {
    const handleKey = this.#keys.ipamHandle(this.#o.cell, handle);
    return this.#retry(`the address of ${handle}`, async () => {
      const h = await this.#backend.get(handleKey);
      if (!h) return undefined;
      const record = parseHandle(h);
      const ipKey = this.#keys.ipamIp(this.#o.cell, record.ip);
      const ip = await this.#backend.get(ipKey);
      const freed = ip ? parseIp(ip) : undefined;
      const blockKey = this.#keys.ipamBlock(this.#o.cell, record.block);
      const blockKv = await this.#backend.get(blockKey);
      if (!blockKv) {
        await this.#store.commit([
          { op: 'delete', key: handleKey, modRevision: h.modRevision },
          { op: 'delete', key: ipKey },
        ]);
        return freed;
      }
      const block = parseBlock(blockKv);
      const offset = String(ipToInt(record.ip) - parseCidr(block.cidr).base);
      const allocations = { ...block.allocations };
      if (allocations[offset] === handle) delete allocations[offset];
      const next: BlockRecord = { ...block, allocations };
      if (Object.keys(allocations).length === 0) next.emptySince = this.#now();
      await this.#store.commit([
        { op: 'update', key: blockKey, value: next, modRevision: blockKv.modRevision },
        { op: 'delete', key: ipKey },
        { op: 'delete', key: handleKey, modRevision: h.modRevision },
      ]);
      return freed;
    });
  }

  /** Frees an address by itself (cnictl release). */
  async releaseIp(ip: string): Promise<IpRecord | undefined> {
    const kv = await this.#backend.get(this.#keys.ipamIp(this.#o.cell, ip));
    if (!kv) return undefined;
    return this.releaseHandle(parseIp(kv).handle);
  }

  /**
   * A node's ADDs and DELs at once (the resident allocator's batch; no handle twice): the
   * addresses freed and the addresses taken go in one transaction over the blocks they touch
   * (their mod revisions; each new address and handle created if absent, each freed handle
   * deleted only if unchanged). The ADDs take from the node's own blocks, claiming one more (its
   * own fenced transaction) when they are full. What does not fit, and every request when the
   * transaction loses a race, goes the ordinary way one by one: releaseHandle(), then allocate().
   * One result per request, in order.
   */
  async commitMany(adds: readonly AllocateRequest[], dels: readonly string[]): Promise<BatchResult> {
    const first = adds[0];
    const handles = [...adds.map((r) => handleOf(r.network, r.containerId, r.ifName)), ...dels];
    const batchable =
      handles.length > 1 &&
      new Set(handles).size === handles.length &&
      adds.every(
        (r) => r.node === first?.node && r.gateway === first.gateway && String(r.pools) === String(first.pools),
      );
    let done: BatchDone | undefined;
    if (batchable) {
      try {
        done = await this.#commitBatchOnce(adds, dels);
      } catch (err) {
        if (!(err instanceof CompareFailedError)) throw err;
      }
    }
    const out: BatchResult = { adds: [], dels: [] };
    for (const [i, handle] of dels.entries()) {
      if (done?.dels.has(i)) out.dels.push({ status: 'fulfilled', value: done.dels.get(i) });
      else out.dels.push(...(await Promise.allSettled([this.releaseHandle(handle)])));
    }
    for (const [i, req] of adds.entries()) {
      const allocation = done?.adds.get(i);
      if (allocation) out.adds.push({ status: 'fulfilled', value: allocation });
      else out.adds.push(...(await Promise.allSettled([this.allocate(req)])));
    }
    return out;
  }

  /** One transaction for the batch; a lost race (or a freed handle's block gone) is a CompareFailedError. */
  async #commitBatchOnce(adds: readonly AllocateRequest[], dels: readonly string[]): Promise<BatchDone> {
    const done: BatchDone = { adds: new Map(), dels: new Map() };
    /** Every block the batch touches, as it will be written; `changed` says which to write. */
    const blocks = new Map<string, StoredBlock>();
    const changed = new Set<string>();
    const ops: Op[] = [];

    // DELs: what to free. The offsets are freed only after the ADDs have chosen theirs, so no
    // address is freed and taken again in one transaction (etcd refuses a key twice in one).
    const frees: { blockKey: string; offset: string; handle: string }[] = [];
    for (const [i, handle] of dels.entries()) {
      const handleKey = this.#keys.ipamHandle(this.#o.cell, handle);
      const h = await this.#backend.get(handleKey);
      if (!h) {
        done.dels.set(i, undefined);
        continue;
      }
      const record = parseHandle(h);
      const ipKey = this.#keys.ipamIp(this.#o.cell, record.ip);
      const ip = await this.#backend.get(ipKey);
      const blockKey = this.#keys.ipamBlock(this.#o.cell, record.block);
      if (!blocks.has(blockKey)) {
        const kv = await this.#backend.get(blockKey);
        if (!kv) throw new CompareFailedError([blockKey]); // releaseHandle knows a block that is gone
        blocks.set(blockKey, { kv, block: parseBlock(kv) });
      }
      const base = parseCidr((blocks.get(blockKey) as StoredBlock).block.cidr).base;
      frees.push({ blockKey, offset: String(ipToInt(record.ip) - base), handle });
      ops.push({ op: 'delete', key: ipKey }, { op: 'delete', key: handleKey, modRevision: h.modRevision });
      done.dels.set(i, ip ? parseIp(ip) : undefined);
    }

    // ADDs: from the node's blocks as this batch leaves them.
    const staged: [number, IpRecord, Cidr[]][] = [];
    const first = adds[0];
    if (first) {
      const cidrs = (await this.pools())
        .filter((p) => p.state === 'active' && (!first.pools || first.pools.includes(p.cidr)))
        .map((p) => parseCidr(p.cidr));
      const waiting: number[] = [];
      for (const [i, req] of adds.entries()) {
        const existing =
          cidrs.length > 0 ? await this.find(handleOf(req.network, req.containerId, req.ifName)) : undefined;
        if (existing) done.adds.set(i, this.#result(existing, cidrs, req));
        else if (cidrs.length > 0) waiting.push(i);
      }
      // As allocate() does: the node's claims key is read before its blocks, so a claim of ours that
      // did not see a claim made since fails instead of taking a block more.
      let claims = (await this.#backend.get(this.#keys.ipamClaims(this.#o.cell, first.node)))?.modRevision ?? 0;
      const own = waiting.length > 0 ? await this.#ownBlocks(first.node, cidrs) : [];
      for (let b = 0; staged.length < waiting.length; b++) {
        const mine = own[b];
        let stored = mine ? (blocks.get(mine.kv.key) ?? mine) : undefined;
        if (!stored) {
          // The node's blocks are full: claim one more (its own transaction) and go on filling.
          stored = await this.#claimBlock(first.node, cidrs, claims);
          if (!stored) break;
          claims = stored.kv.modRevision;
        }
        blocks.set(stored.kv.key, stored);
        for (let i = waiting[staged.length]; i !== undefined; i = waiting[staged.length]) {
          const req = adds[i] as AllocateRequest;
          const offset = this.#freeOffset(stored.block, cidrs, req);
          if (offset === undefined) break;
          const taken = this.#take(stored.block, offset, req, handleOf(req.network, req.containerId, req.ifName));
          stored.block = taken.block;
          changed.add(stored.kv.key);
          ops.push(...taken.ops);
          staged.push([i, taken.record, cidrs]);
        }
      }
    }

    for (const f of frees) {
      const stored = blocks.get(f.blockKey) as StoredBlock;
      if (stored.block.allocations[f.offset] !== f.handle) continue;
      const { [f.offset]: _freed, ...allocations } = stored.block.allocations;
      stored.block = { ...stored.block, allocations };
      if (Object.keys(allocations).length === 0) stored.block.emptySince = this.#now();
      changed.add(f.blockKey);
    }
    for (const key of changed) {
      const { kv, block } = blocks.get(key) as StoredBlock;
      ops.push({ op: 'update', key, value: block, modRevision: kv.modRevision });
    }
    if (ops.length > 0) await this.#store.commit(ops);
    for (const [i, record, cidrs] of staged) done.adds.set(i, this.#result(record, cidrs, adds[i] as AllocateRequest));
    return done;
  }

  /**
   * Releases blocks that have been empty for longer than `graceMs`. Returns their CIDRs. A block
   * that changed since it was read is left for the next round, not retried: it is in use again.
   */
  async releaseEmptyBlocks(graceMs: number): Promise<string[]> {
    const released: string[] = [];
    const now = (this.#o.now?.() ?? new Date()).getTime();
    for (const kv of await this.#backend.range(this.#keys.ipamBlocks(this.#o.cell))) {
      const block = parseBlock(kv);
      if (Object.keys(block.allocations).length > 0) continue;
      const since = Date.parse(block.emptySince ?? block.claimedAt);
      if (!(now - since >= graceMs)) continue;
      try {
        await this.#store.commit([
          { op: 'delete', key: kv.key, modRevision: kv.modRevision },
          { op: 'delete', key: this.#keys.ipamAffinity(this.#o.cell, block.node, block.cidr) },
        ]);
        released.push(block.cidr);
      } catch (err) {
        if (!(err instanceof CompareFailedError)) throw err;
      }
    }
    return released;
  }

  // ---- internals ----------------------------------------------------------------------------

  async #ownBlocks(node: string, cidrs: Cidr[]): Promise<StoredBlock[]> {
    const affinities = await this.#backend.range(this.#keys.ipamAffinities(this.#o.cell, node), { keysOnly: true });
    const poolSet = new Set(cidrs.map((c) => c.text));
    const blocks = await Promise.all(
      affinities.map((a) => {
        const affinity = this.#keys.parse('ipamAffinity', a.key);
        return affinity ? this.#backend.get(this.#keys.ipamBlock(this.#o.cell, affinity.cidr)) : undefined;
      }),
    );
    return blocks
      .filter((kv): kv is KeyValue => kv !== undefined)
      .map((kv) => ({ kv, block: parseBlock(kv) }))
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

  /**
   * Takes the block's next free address in one transaction over the block (its mod revision),
   * the address and the handle. Undefined when the block is full; CompareFailedError when another
   * writer changed the block or took the address or the handle first.
   */
  async #tryAllocate(
    stored: StoredBlock,
    req: AllocateRequest,
    handle: string,
    cidrs: Cidr[],
  ): Promise<Allocation | undefined> {
    const offset = this.#freeOffset(stored.block, cidrs, req);
    if (offset === undefined) return undefined;
    const taken = this.#take(stored.block, offset, req, handle);
    await this.#store.commit([
      { op: 'update', key: stored.kv.key, value: taken.block, modRevision: stored.kv.modRevision },
      ...taken.ops,
    ]);
    return this.#result(taken.record, cidrs, req);
  }

  /** The block with `offset` taken by `handle`, and the address's and handle's records to create. */
  #take(
    block: BlockRecord,
    offset: number,
    req: AllocateRequest,
    handle: string,
  ): { block: BlockRecord; record: IpRecord; ops: Op[] } {
    const blockCidr = parseCidr(block.cidr);
    const ip = intToIp(blockCidr.base + offset);
    const record: IpRecord = {
      ip,
      block: block.cidr,
      pool: block.pool,
      node: req.node,
      handle,
      network: req.network,
      containerId: req.containerId,
      ifName: req.ifName,
      ...(req.namespace ? { namespace: req.namespace } : {}),
      ...(req.pod ? { pod: req.pod } : {}),
      allocatedAt: this.#now(),
    };
    const { emptySince: _gone, ...rest } = block;
    const handleRecord: HandleRecord = { ip, block: block.cidr };
    return {
      block: {
        ...rest,
        allocations: { ...block.allocations, [String(offset)]: handle },
        next: (offset + 1) % blockCidr.size,
      },
      record,
      ops: [
        { op: 'create', key: this.#keys.ipamIp(this.#o.cell, ip), value: record },
        { op: 'create', key: this.#keys.ipamHandle(this.#o.cell, handle), value: handleRecord },
      ],
    };
  }

  /**
   * Claims the first unclaimed block of the pools, searching from an offset of the node's own. The
   * claim holds only if the node claimed nothing since `claims` (the revision of its claims key
   * when its blocks were read): ADDs of one node that all find its blocks full at once claim one
   * block between them, not one each. Undefined when every block of the pools is claimed.
   */
  async #claimBlock(node: string, cidrs: Cidr[], claims: number): Promise<StoredBlock | undefined> {
    const claimed = new Set(
      (await this.#backend.range(this.#keys.ipamBlocks(this.#o.cell), { keysOnly: true })).map(
        (kv) => this.#keys.parse('ipamBlock', kv.key)?.cidr,
      ),
    );
    const seed = createHash('sha256').update(node).digest().readUInt32BE(0);
    for (const pool of cidrs) {
      const count = blockCount(pool);
      const start = seed % count;
      for (let i = 0; i < count; i++) {
        const block = blockAt(pool, (start + i) % count);
        if (claimed.has(block.text)) continue;
        const record: BlockRecord = {
          cidr: block.text,
          pool: pool.text,
          node,
          claimedAt: this.#now(),
          allocations: {},
        };
        const blockKey = this.#keys.ipamBlock(this.#o.cell, block.text);
        const claimsKey = this.#keys.ipamClaims(this.#o.cell, node);
        const ops: Op[] = [
          { op: 'create', key: blockKey, value: record },
          { op: 'expect', key: claimsKey, modRevision: claims },
          { op: 'put-raw', key: this.#keys.ipamAffinity(this.#o.cell, node, block.text), raw: '' },
          { op: 'put', key: claimsKey, value: { block: block.text, at: record.claimedAt } },
        ];
        const revision = await this.#store.commit(ops);
        const kv = { key: blockKey, value: JSON.stringify(record), modRevision: revision, createRevision: revision };
        return { kv, block: record };
      }
    }
    return undefined;
  }

  async #borrow(req: AllocateRequest, handle: string, cidrs: Cidr[]): Promise<Allocation | undefined> {
    const pools = new Set(cidrs.map((c) => c.text));
    const blocks = (await this.#backend.range(this.#keys.ipamBlocks(this.#o.cell)))
      .map((kv) => ({ kv, block: parseBlock(kv) }))
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
