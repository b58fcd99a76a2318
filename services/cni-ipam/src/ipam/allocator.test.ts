import { CorruptValueError } from '@berth/shared/errors';
import { BerthKeys } from '@berth/shared/keys';
import { MemoryBackend } from '@berth/shared/store';
import { describe, expect, it } from 'vitest';
import { Allocator, PoolExhaustedError } from './allocator.ts';
import { contains, ipToInt, parseCidr } from './cidr.ts';
import { Pools } from './pools.ts';

const keys = new BerthKeys('/unit');
const cell = 'cell-a';

async function setup(...pools: string[]) {
  const store = new MemoryBackend();
  const p = new Pools(store, keys, cell);
  for (const pool of pools) await p.add(pool);
  return { store, pools: p, allocator: new Allocator({ backend: store, keys, cell }) };
}

const req = (node: string, id: string, extra = {}) => ({
  network: 'net',
  containerId: id,
  ifName: 'eth0',
  node,
  ...extra,
});

describe('allocator (on an in-memory etcd)', () => {
  it('hands out addresses from the node’s own block, never the network, broadcast or gateway address', async () => {
    const { allocator } = await setup('198.18.0.0/24');
    const seen: string[] = [];
    for (let i = 0; i < 14; i++) seen.push((await allocator.allocate(req('n1', `c${i}`))).ip);
    expect(new Set(seen).size).toBe(14);
    expect(seen).not.toContain('198.18.0.0');
    expect(seen).not.toContain('198.18.0.1');
    expect(seen).not.toContain('198.18.0.255');
  });

  it('ADD twice for one container and interface returns the same address', async () => {
    const { allocator } = await setup('198.18.0.0/24');
    const a = await allocator.allocate(req('n1', 'same'));
    const b = await allocator.allocate(req('n1', 'same'));
    expect(b.ip).toBe(a.ip);
    const other = await allocator.allocate({ ...req('n1', 'same'), ifName: 'eth1' });
    expect(other.ip).not.toBe(a.ip);
  });

  it('claims a new block of 16 when its blocks are full, and uses its own blocks first', async () => {
    const { allocator, store } = await setup('198.18.0.0/20');
    const ips = [];
    for (let i = 0; i < 20; i++) ips.push((await allocator.allocate(req('n1', `c${i}`))).ip);
    const blocks = (await store.range(keys.ipamBlocks(cell))).map((kv) => JSON.parse(kv.value));
    expect(blocks).toHaveLength(2);
    expect(blocks.every((b) => b.node === 'n1')).toBe(true);
    for (const ip of ips) expect(blocks.some((b) => contains(parseCidr(b.cidr), ipToInt(ip)))).toBe(true);
    // Another node gets a block of its own.
    const other = await allocator.allocate(req('n2', 'x'));
    const after = (await store.range(keys.ipamBlocks(cell))).map((kv) => JSON.parse(kv.value));
    expect(after.find((b) => contains(parseCidr(b.cidr), ipToInt(other.ip)))?.node).toBe('n2');
  });

  it('DEL frees the address and is idempotent; a freed address is handed out again, last', async () => {
    const { allocator } = await setup('198.18.0.0/28'); // 13 usable addresses
    const a = await allocator.allocate(req('n1', 'c1'));
    expect((await allocator.release('net', 'c1', 'eth0'))?.ip).toBe(a.ip);
    expect(await allocator.release('net', 'c1', 'eth0')).toBeUndefined();
    expect(await allocator.release('net', 'never', 'eth0')).toBeUndefined();
    // The other 12 go first (a cache somewhere may still map the freed one to the old pod)…
    const next: string[] = [];
    for (let i = 2; i <= 13; i++) next.push((await allocator.allocate(req('n1', `c${i}`))).ip);
    expect(next).not.toContain(a.ip);
    expect(new Set(next).size).toBe(12);
    // …then the freed one comes round again.
    expect((await allocator.allocate(req('n1', 'c14'))).ip).toBe(a.ip);
  });

  it('borrows from another node’s block when no pool has a free block, and fails when nothing is left', async () => {
    const { allocator } = await setup('198.18.0.0/28'); // one block: 13 usable (network, gateway, broadcast)
    await allocator.allocate(req('n1', 'first'));
    const borrowed = await allocator.allocate(req('n2', 'second'));
    expect(borrowed.ip).toMatch(/^198\.18\.0\./);
    for (let i = 0; i < 11; i++) await allocator.allocate(req('n1', `c${i}`));
    await expect(allocator.allocate(req('n1', 'one-too-many'))).rejects.toBeInstanceOf(PoolExhaustedError);
  });

  it('a draining pool hands out nothing new; a pool in use cannot be removed', async () => {
    const { allocator, pools } = await setup('198.18.0.0/28', '198.18.1.0/28');
    const a = await allocator.allocate(req('n1', 'c1', { pools: ['198.18.0.0/28'] }));
    await pools.setState('198.18.0.0/28', 'draining');
    const b = await allocator.allocate(req('n1', 'c2'));
    expect(b.ip).toMatch(/^198\.18\.1\./);
    await expect(pools.remove('198.18.0.0/28')).rejects.toThrow(/still has 1 allocated address/);
    await allocator.release('net', 'c1', 'eth0');
    await pools.remove('198.18.0.0/28');
    expect((await pools.list()).map((p) => p.cidr)).toEqual(['198.18.1.0/28']);
    expect(a.ip).toMatch(/^198\.18\.0\./);
  });

  it('refuses overlapping pools and pools smaller than a block', async () => {
    const { pools } = await setup('198.18.0.0/16');
    await expect(pools.add('198.18.4.0/24')).rejects.toThrow(/overlaps pool 198.18.0.0\/16/);
    await expect(pools.add('198.19.0.0/30')).rejects.toThrow(/smaller than one block/);
    await expect(pools.add('198.19.0.1/24')).rejects.toThrow(/not a network address/);
  });

  it('releases a block that stayed empty for the grace, not before', async () => {
    let now = Date.parse('2026-01-01T00:00:00Z');
    const store = new MemoryBackend();
    await new Pools(store, keys, cell).add('198.18.0.0/24');
    const allocator = new Allocator({ backend: store, keys, cell, now: () => new Date(now) });
    await allocator.allocate(req('n1', 'c1'));
    await allocator.release('net', 'c1', 'eth0');
    now += 60_000;
    expect(await allocator.releaseEmptyBlocks(10 * 60_000)).toEqual([]);
    now += 10 * 60_000;
    expect(await allocator.releaseEmptyBlocks(10 * 60_000)).toHaveLength(1);
    expect(await store.range(keys.ipamAffinities(cell, 'n1'))).toEqual([]);
  });

  it('many concurrent ADDs on one node get distinct addresses', async () => {
    const { allocator } = await setup('198.18.0.0/22');
    const results = await Promise.all(Array.from({ length: 60 }, (_, i) => allocator.allocate(req('n1', `c${i}`))));
    expect(new Set(results.map((r) => r.ip)).size).toBe(60);
  });

  it('an ADD that loses its block to another writer tries again on fresh reads, one transaction each', async () => {
    const { allocator, store } = await setup('198.18.0.0/24');
    const first = await allocator.allocate(req('n1', 'c1'));
    const blockKey = keys.ipamBlock(cell, first.record.block);
    // Another writer changes the block between this ADD's read and its commit: the commit's
    // compare on the block fails, and the ADD reads again and commits once more.
    const current = await store.get(blockKey);
    store.beforeTxn = (b) => b.applyNow([{ put: blockKey, value: current?.value ?? '' }]);
    const txns = store.txns;
    const second = await allocator.allocate(req('n1', 'c2'));
    expect(store.txns - txns).toBe(2);
    expect(second.ip).not.toBe(first.ip);
    const block = JSON.parse((await store.get(blockKey))?.value ?? '{}');
    expect(Object.values(block.allocations).sort()).toEqual(['net.c1.eth0', 'net.c2.eth0']);
  });

  it('an unreadable record fails the call naming its key', async () => {
    const { allocator, store } = await setup('198.18.0.0/24');
    const a = await allocator.allocate(req('n1', 'c1'));
    const blockKey = keys.ipamBlock(cell, a.record.block);
    store.applyNow([{ put: blockKey, value: '{"cidr": ' }]);
    const err = await allocator.allocate(req('n1', 'c2')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CorruptValueError);
    expect((err as Error).message).toContain(blockKey);
  });
});
