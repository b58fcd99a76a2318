import { UnavailableError } from '@berth/shared/errors';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { WorkQueue } from './queue.ts';

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

describe('work queue', () => {
  beforeEach(() => {
    vi.useFakeTimers();
    // The jitter factor is 0.5 + random/2: with random = 1 every delay is its full ceiling.
    vi.spyOn(Math, 'random').mockReturnValue(1);
  });

  afterEach(() => {
    vi.restoreAllMocks();
    vi.useRealTimers();
  });

  it('retries a failing key with a backoff that doubles and then stays at the cap', async () => {
    const q = new WorkQueue({ concurrency: 1, backoffInitialMs: 100, backoffMaxMs: 1000 });
    const start = Date.now();
    const calls: number[] = [];
    q.start(async () => {
      calls.push(Date.now() - start);
      throw new UnavailableError('cell unreachable');
    });
    q.add('app-a');
    await vi.advanceTimersByTimeAsync(100 + 200 + 400 + 800 + 1000 + 1000);
    expect(calls).toEqual([0, 100, 300, 700, 1500, 2500, 3500]);
    await q.stop();
  });

  it('a success resets the backoff', async () => {
    const q = new WorkQueue({ concurrency: 1, backoffInitialMs: 100, backoffMaxMs: 1000 });
    const start = Date.now();
    const calls: number[] = [];
    let fail = 3;
    q.start(async () => {
      calls.push(Date.now() - start);
      if (fail-- > 0) throw new UnavailableError('not yet');
    });
    q.add('app-a');
    await vi.advanceTimersByTimeAsync(100 + 200 + 400);
    expect(calls).toEqual([0, 100, 300, 700]);
    await q.idle();
    q.add('app-a');
    await vi.advanceTimersByTimeAsync(0);
    expect(calls).toEqual([0, 100, 300, 700, 700]);
    await q.stop();
  });

  it('never works on one key twice at once; a key added meanwhile runs once more after', async () => {
    const q = new WorkQueue({ concurrency: 4 });
    let running = 0;
    let maxRunning = 0;
    const runs: string[] = [];
    const gates: { resolve: () => void }[] = [];
    q.start(async (key) => {
      running++;
      maxRunning = Math.max(maxRunning, running);
      runs.push(key);
      const gate = deferred();
      gates.push(gate);
      await gate.promise;
      running--;
    });
    q.add('app-a');
    await vi.advanceTimersByTimeAsync(0);
    expect(runs).toEqual(['app-a']);
    // Changed three times while being reconciled: one more run, after this one.
    q.add('app-a');
    q.add('app-a');
    q.add('app-a');
    await vi.advanceTimersByTimeAsync(0);
    expect(runs).toEqual(['app-a']);
    gates.shift()?.resolve();
    await vi.advanceTimersByTimeAsync(0);
    expect(runs).toEqual(['app-a', 'app-a']);
    gates.shift()?.resolve();
    await q.idle();
    expect(runs).toEqual(['app-a', 'app-a']);
    expect(maxRunning).toBe(1);
    await q.stop();
  });

  it('a key waiting is queued once; other keys run in parallel up to the concurrency', async () => {
    const q = new WorkQueue({ concurrency: 2 });
    const runs: string[] = [];
    const gates: { resolve: () => void }[] = [];
    q.start(async (key) => {
      runs.push(key);
      const gate = deferred();
      gates.push(gate);
      await gate.promise;
    });
    for (const key of ['a', 'b', 'c', 'c', 'd', 'c']) q.add(key);
    await vi.advanceTimersByTimeAsync(0);
    expect(runs).toEqual(['a', 'b']);
    expect(q.length).toBe(4);
    while (gates.length > 0) {
      gates.shift()?.resolve();
      await vi.advanceTimersByTimeAsync(0);
    }
    await q.idle();
    expect(runs).toEqual(['a', 'b', 'c', 'd']);
    await q.stop();
  });

  it('a key re-added while it waits for a retry waits for that retry', async () => {
    const q = new WorkQueue({ concurrency: 1, backoffInitialMs: 100 });
    const calls: number[] = [];
    const start = Date.now();
    q.start(async () => {
      calls.push(Date.now() - start);
      if (calls.length === 1) throw new UnavailableError('once');
    });
    q.add('app-a');
    await vi.advanceTimersByTimeAsync(0);
    q.addAfter('app-a', 10); // a timer is already pending for this key: ignored
    await vi.advanceTimersByTimeAsync(100);
    await q.idle();
    expect(calls).toEqual([0, 100]);
    await q.stop();
  });
});
