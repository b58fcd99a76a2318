import { existsSync, mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '@berth/shared/logging';
import { afterAll, describe, expect, test } from 'vitest';
import { BuildCache } from './build-cache.ts';

const root = mkdtempSync(join(tmpdir(), 'cache-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const logger = createLogger({ service: 'test', level: 'silent' });

function fill(dir: string, bytes: number, lastUsedSecondsAgo: number) {
  mkdirSync(join(dir, 'home'), { recursive: true });
  writeFileSync(join(dir, 'home/blob'), Buffer.alloc(bytes));
  const marker = join(dir, '.berth-last-used');
  writeFileSync(marker, '');
  const t = new Date(Date.now() - lastUsedSecondsAgo * 1000);
  utimesSync(marker, t, t);
}

describe('per-config caches', () => {
  test('past the budget the least recently used go first, never one in use', async () => {
    const dir = join(root, 'lru');
    const cache = new BuildCache({ dir, tmpDir: join(root, 'tmp'), budgetBytes: 2500, logger });
    fill(join(dir, 'oldest'), 1000, 300);
    fill(join(dir, 'older'), 1000, 200);
    fill(join(dir, 'recent'), 1000, 10);
    const lease = await cache.acquire('oldest', true, 'run1');
    expect(lease.hit).toBe(true);
    // "oldest" is in use (and now the most recent): "older" goes instead.
    expect((await cache.evict()).evicted).toEqual(['older']);
    await lease.release();
    expect(cache.bytes).toBeLessThanOrEqual(2500);
  });

  test('a config seen for the first time is a miss; its second use a hit', async () => {
    const cache = new BuildCache({ dir: join(root, 'hits'), tmpDir: join(root, 'tmp'), budgetBytes: 1e9, logger });
    const first = await cache.acquire('cfg', true, 'r1');
    expect(first.hit).toBe(false);
    writeFileSync(join(first.dir, 'home/.m2'), 'x');
    await first.release();
    const second = await cache.acquire('cfg', true, 'r2');
    expect(second.hit).toBe(true);
    await second.release();
  });

  test('two builds of one config take its cache in turn', async () => {
    const cache = new BuildCache({ dir: join(root, 'turns'), tmpDir: join(root, 'tmp'), budgetBytes: 1e9, logger });
    const first = await cache.acquire('cfg', true, 'r1');
    let secondGot = false;
    const second = cache.acquire('cfg', true, 'r2').then((l) => {
      secondGot = true;
      return l;
    });
    await new Promise((r) => setImmediate(r));
    expect(secondGot).toBe(false);
    await first.release();
    await (await second).release();
    expect(secondGot).toBe(true);
  });

  test('with the cache off a run gets a fresh dir, removed after', async () => {
    const cache = new BuildCache({ dir: join(root, 'off'), tmpDir: join(root, 'tmp'), budgetBytes: 1e9, logger });
    const lease = await cache.acquire('cfg', false, 'r1');
    expect(lease.hit).toBe(false);
    writeFileSync(join(lease.dir, 'home/x'), 'x');
    await lease.release();
    expect(existsSync(lease.dir)).toBe(false);
  });

  test('clearing a cache not in use removes it and says how many bytes it held', async () => {
    const dir = join(root, 'clear');
    const cache = new BuildCache({ dir, tmpDir: join(root, 'tmp'), budgetBytes: 1e9, logger });
    fill(join(dir, 'cfg'), 1500, 10);
    fill(join(dir, 'other'), 700, 10);
    const cleared = await cache.clear('cfg');
    expect(cleared).toEqual({ freedBytes: 1500, deferred: false });
    expect(existsSync(join(dir, 'cfg'))).toBe(false);
    expect(existsSync(join(dir, 'other/home/blob'))).toBe(true);
    // Nothing left to free; the next build of the config starts cold.
    expect(await cache.clear('cfg')).toEqual({ freedBytes: 0, deferred: false });
    const lease = await cache.acquire('cfg', true, 'r1');
    expect(lease.hit).toBe(false);
    await lease.release();
  });

  test('a cache a build holds is dropped when the build releases it, before the next build gets it', async () => {
    const dir = join(root, 'clear-held');
    const cache = new BuildCache({ dir, tmpDir: join(root, 'tmp'), budgetBytes: 1e9, logger });
    fill(join(dir, 'cfg'), 1000, 10);
    const held = await cache.acquire('cfg', true, 'r1');
    expect(held.hit).toBe(true);
    const cleared = await cache.clear('cfg');
    expect(cleared.deferred).toBe(true);
    expect(cleared.freedBytes).toBe(1000);
    // The build goes on with its cache meanwhile.
    expect(existsSync(join(held.dir, 'home/blob'))).toBe(true);
    const next = cache.acquire('cfg', true, 'r2');
    await held.release();
    expect(existsSync(join(dir, 'cfg/home/blob'))).toBe(false);
    const lease = await next;
    expect(lease.hit).toBe(false);
    writeFileSync(join(lease.dir, 'home/new'), 'x');
    await lease.release();
    // Only that release dropped it: the next build's cache stays.
    expect(existsSync(join(dir, 'cfg/home/new'))).toBe(true);
  });
});
