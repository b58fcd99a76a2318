import { BerthKeys } from '@berth/shared/keys';
import { MemoryBackend } from '@berth/shared/store';
import { describe, expect, it } from 'vitest';
import { countFallback, fallbackReason } from './fallback.ts';

const keys = new BerthKeys('/berth');
const at = { cell: 'cell-a', node: 'node0' };
const key = keys.ipamFallbacks('cell-a', 'node0');

describe('fallback counter', () => {
  it('counts each fallback with its time and reason', async () => {
    const backend = new MemoryBackend();
    await countFallback(backend, keys, at, 'no-daemon', () => new Date('2026-01-01T00:00:00Z'));
    await countFallback(backend, keys, at, 'daemon-failed', () => new Date('2026-01-01T00:00:01Z'));
    expect(JSON.parse((await backend.get(key))?.value ?? '')).toEqual({
      count: 2,
      lastAt: '2026-01-01T00:00:01.000Z',
      lastReason: 'daemon-failed',
    });
  });

  it('racing fallbacks of one node lose no count', async () => {
    const backend = new MemoryBackend();
    await Promise.all(Array.from({ length: 3 }, () => countFallback(backend, keys, at, 'no-daemon')));
    expect(JSON.parse((await backend.get(key))?.value ?? '').count).toBe(3);
  });

  it('never fails the command: an unreachable etcd is ignored', async () => {
    const backend = new MemoryBackend();
    backend.get = () => Promise.reject(new Error('etcd down'));
    await expect(countFallback(backend, keys, at, 'no-daemon')).resolves.toBeUndefined();
  });

  it('is counted only when the thin plugin set a known reason', () => {
    expect(fallbackReason({ BERTH_IPAM_FALLBACK: 'no-daemon' })).toBe('no-daemon');
    expect(fallbackReason({ BERTH_IPAM_FALLBACK: 'daemon-failed' })).toBe('daemon-failed');
    expect(fallbackReason({ BERTH_IPAM_FALLBACK: 'bogus' })).toBeUndefined();
    expect(fallbackReason({})).toBeUndefined();
  });
});
