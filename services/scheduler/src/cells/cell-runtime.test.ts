import type { V1Pod } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { PodRestarts } from './cell-runtime.ts';

function pod(name: string, ...restarts: number[]): V1Pod {
  return {
    metadata: { name, namespace: 'shop' },
    status: { containerStatuses: restarts.map((n, i) => ({ name: `c${i}`, restartCount: n }) as never) },
  };
}

describe('pod restarts', () => {
  it('a rollout’s pod events change nothing until a container restarts', () => {
    const r = new PodRestarts();
    expect(r.changed('add', pod('a'))).toBe(false);
    expect(r.changed('update', pod('a', 0))).toBe(false);
    expect(r.changed('update', pod('a', 0))).toBe(false);
    expect(r.changed('update', pod('a', 1))).toBe(true);
    expect(r.changed('update', pod('a', 1))).toBe(false);
  });

  it('counts every container, and a pod that goes with restarts changes the sum', () => {
    const r = new PodRestarts();
    expect(r.changed('add', pod('a', 0, 2))).toBe(true);
    expect(r.changed('add', pod('b', 0))).toBe(false);
    expect(r.changed('delete', pod('b', 0))).toBe(false);
    expect(r.changed('delete', pod('a', 0, 2))).toBe(true);
    // Seen again after it went: counted from zero.
    expect(r.changed('add', pod('a', 0, 2))).toBe(true);
  });
});
