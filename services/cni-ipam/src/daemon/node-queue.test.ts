import { BerthKeys } from '@berth/shared/keys';
import { type Compare, type KvBackend, MemoryBackend, type RangeOptions, type Write } from '@berth/shared/store';
import { describe, expect, it } from 'vitest';
import { Allocator, handleOf } from '../ipam/allocator.ts';
import { Pools } from '../ipam/pools.ts';
import { NodeQueue } from './node-queue.ts';

const keys = new BerthKeys('/unit');
const cell = 'cell-a';

async function setup(pool = '198.18.0.0/24') {
  const store = new MemoryBackend();
  await new Pools(store, keys, cell).add(pool);
  const allocator = new Allocator({ backend: store, keys, cell });
  const batches: number[] = [];
  const queue = new NodeQueue({ allocator, batchMax: 32, onBatch: (n) => batches.push(n) });
  return { store, allocator, queue, batches };
}

/** Runs `race` (another writer) before the first transaction that carries a batch (over 3 writes). */
class RacingBackend implements KvBackend {
  raced = false;
  readonly inner: KvBackend;
  readonly race: () => Promise<void>;
  constructor(inner: KvBackend, race: () => Promise<void>) {
    this.inner = inner;
    this.race = race;
  }
  get(key: string) {
    return this.inner.get(key);
  }
  range(prefix: string, options?: RangeOptions) {
    return this.inner.range(prefix, options);
  }
  async txn(compares: readonly Compare[], writes: readonly Write[]) {
    if (!this.raced && writes.length > 3) {
      this.raced = true;
      await this.race();
    }
    return this.inner.txn(compares, writes);
  }
}

const req = (id: string, node = 'n1') => ({ network: 'net', containerId: id, ifName: 'eth0', node });

describe('a node’s queue (on an in-memory etcd)', () => {
  it('ADDs that arrive together take their addresses in one transaction, claiming blocks as they fill', async () => {
    const { store, queue, batches } = await setup();
    store.txns = 0;
    // 30 addresses need two blocks of 16 (the first loses the network and gateway addresses).
    const ips = await Promise.all(
      Array.from({ length: 30 }, (_, i) => queue.allocate(req(`c${i}`))).map((p) => p.then((a) => a.ip)),
    );
    expect(new Set(ips).size).toBe(30);
    expect(ips).not.toContain('198.18.0.0');
    expect(ips).not.toContain('198.18.0.1');
    // The first ADD alone (nothing was in flight), then the other 29 together: one transaction for
    // them and one claim per block they needed.
    expect(batches).toEqual([1, 29]);
    expect(store.txns).toBeLessThanOrEqual(5);
  });

  it('DELs that arrive together free their addresses in one transaction', async () => {
    const { store, queue, allocator } = await setup();
    await Promise.all(Array.from({ length: 10 }, (_, i) => queue.allocate(req(`c${i}`))));
    store.txns = 0;
    const freed = await Promise.all(
      Array.from({ length: 10 }, (_, i) => queue.release(handleOf('net', `c${i}`, 'eth0'))),
    );
    expect(freed.every((r) => r !== undefined)).toBe(true);
    expect(store.txns).toBe(2); // the first DEL alone, then the other nine together
    expect(await store.range(keys.ipamIps(cell))).toEqual([]);
    expect(await allocator.find(handleOf('net', 'c3', 'eth0'))).toBeUndefined();
  });

  it('ADDs and DELs of other containers share one transaction, and a freed address is not taken in it', async () => {
    const { store, queue, batches } = await setup();
    const before = await Promise.all(Array.from({ length: 6 }, (_, i) => queue.allocate(req(`old${i}`))));
    store.txns = 0;
    batches.length = 0;
    const busy = queue.allocate(req('busy'));
    const mixed = Array.from({ length: 6 }, (_, i) => [
      queue.release(handleOf('net', `old${i}`, 'eth0')),
      queue.allocate(req(`new${i}`)),
    ]).flat();
    const results = await Promise.all([busy, ...mixed]);
    expect(batches).toEqual([1, 12]);
    expect(store.txns).toBe(2);
    const fresh = results.filter((r): r is Awaited<typeof busy> => r !== undefined && 'record' in r).map((a) => a.ip);
    expect(fresh).toHaveLength(7);
    // The addresses freed in the batch are not handed out by it.
    for (const old of before) expect(fresh).not.toContain(old.ip);
    const held = (await store.range(keys.ipamIps(cell))).map((kv) => (JSON.parse(kv.value) as { ip: string }).ip);
    expect(held.sort()).toEqual([...fresh].sort());
  });

  it('never reorders an ADD and a DEL of one container', async () => {
    const { queue, allocator } = await setup();
    const first = queue.allocate(req('busy'));
    const del = queue.release(handleOf('net', 'again', 'eth0'));
    const again = queue.allocate(req('again'));
    await Promise.all([first, del, again]);
    // The DEL ran before the ADD queued after it, so the ADD's address stands.
    expect(await allocator.find(handleOf('net', 'again', 'eth0'))).toBeDefined();
  });

  it('a batch that loses a race is done again one request at a time, and nothing is taken twice', async () => {
    const inner = new MemoryBackend();
    await new Pools(inner, keys, cell).add('198.18.0.0/24');
    const racing = new RacingBackend(inner, async () => {
      // A direct plugin takes an address of the node's block between the batch's read and write.
      await new Allocator({ backend: inner, keys, cell }).allocate(req('intruder'));
    });
    const queue = new NodeQueue({ allocator: new Allocator({ backend: racing, keys, cell }), batchMax: 32 });
    const ips = await Promise.all(
      ['warm', ...Array.from({ length: 8 }, (_, i) => `r${i}`)].map((id) => queue.allocate(req(id)).then((a) => a.ip)),
    );
    expect(racing.raced).toBe(true);
    const all = (await inner.range(keys.ipamIps(cell))).map((kv) => (JSON.parse(kv.value) as { ip: string }).ip);
    expect(new Set(ips).size).toBe(9);
    expect(all).toHaveLength(10);
    expect(new Set(all).size).toBe(10);
  });

  it('an ADD again for a container in the batch returns its address, not a second one', async () => {
    const { queue } = await setup();
    const a = await queue.allocate(req('same'));
    const [b, c] = await Promise.all([queue.allocate(req('same')), queue.allocate(req('other'))]);
    expect(b.ip).toBe(a.ip);
    expect(c.ip).not.toBe(a.ip);
  });
});
