import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { CellWriteLimiter } from './limiter.ts';

/** A write the test answers by hand, at a time of its choosing on the fake clock. */
type Pending = { key: string; resolve: () => void; reject: (e: unknown) => void };

function harness(options: { initial?: number; max?: number } = {}) {
  let now = 0;
  const limiter = new CellWriteLimiter({ cell: 'c1', ...options, now: () => now });
  const pending: Pending[] = [];
  let peak = 0;
  const send = (key: string) =>
    limiter.run(
      key,
      () =>
        new Promise<string>((resolve, reject) => {
          pending.push({ key, resolve: () => resolve(key), reject });
          peak = Math.max(peak, limiter.inflight);
        }),
    );
  /** Lets queued continuations (slot hand-offs) run. */
  const settle = async () => {
    for (let i = 0; i < 10; i++) await Promise.resolve();
  };
  /** Answers every pending write after `ms` of fake time, each with `answer`. */
  const answerAll = async (ms: number, answer: 'ok' | number | 'timeout' = 'ok') => {
    now += ms;
    const batch = pending.splice(0);
    for (const p of batch) {
      if (answer === 'ok') p.resolve();
      else p.reject(answer === 'timeout' ? new Error('aborted') : Object.assign(new Error('x'), { code: answer }));
    }
    await settle();
    return batch.length;
  };
  return { limiter, pending, send, settle, answerAll, peak: () => peak };
}

/** Keeps `n` distinct writes offered so the limiter is always at its limit. */
function offer(h: ReturnType<typeof harness>, n: number, prefix = 'o'): Promise<unknown>[] {
  return Array.from({ length: n }, (_, i) => h.send(`${prefix}/${i}`).catch(() => undefined));
}

describe('CellWriteLimiter', () => {
  it('starts at 8 and doubles after each round of fast answers, up to the maximum', async () => {
    const h = harness({ max: 64 });
    offer(h, 1000);
    await h.settle();
    const limits: number[] = [];
    for (let round = 0; round < 6; round++) {
      limits.push(h.limiter.limit);
      await h.answerAll(5);
    }
    expect(limits).toEqual([8, 16, 32, 64, 64, 64]);
    expect(h.peak()).toBe(64);
  });

  it('never has more writes in flight than the limit', async () => {
    const h = harness({ initial: 4, max: 16 });
    offer(h, 200);
    await h.settle();
    for (let round = 0; round < 10; round++) {
      expect(h.limiter.inflight).toBeLessThanOrEqual(h.limiter.limit);
      expect(h.pending.length).toBeLessThanOrEqual(h.limiter.limit);
      // Answer one at a time: each answer frees exactly one slot.
      const first = h.pending.shift();
      first?.resolve();
      await h.settle();
    }
    expect(h.peak()).toBeLessThanOrEqual(16);
  });

  it.each([
    ['429', 429],
    ['a 5xx', 503],
    ['no answer', 'timeout'],
  ] as const)('halves on %s, once per round, then grows by one a round', async (_name, answer) => {
    const h = harness({ initial: 16, max: 64 });
    offer(h, 1000);
    await h.settle();
    expect(h.pending.length).toBe(16);
    // All 16 in flight fail together: one cut, not four.
    await h.answerAll(5, answer);
    expect(h.limiter.limit).toBe(8);
    await h.answerAll(5);
    expect(h.limiter.limit).toBe(9);
    await h.answerAll(5);
    expect(h.limiter.limit).toBe(10);
  });

  it('halves on an answer much slower than the usual, not on one a little slower', async () => {
    const h = harness({ initial: 8, max: 8 });
    offer(h, 1000);
    await h.settle();
    for (let i = 0; i < 3; i++) await h.answerAll(100);
    expect(h.limiter.usualMs).toBe(100);
    await h.answerAll(250); // 2.5× the usual: fine
    expect(h.limiter.limit).toBe(8);
    await h.answerAll(2000); // far above 3× the usual
    expect(h.limiter.limit).toBe(4);
  });

  it('a 409 or 404 is an answer about the object, not about load', async () => {
    const h = harness({ initial: 8 });
    offer(h, 100);
    await h.settle();
    await h.answerAll(5, 409);
    await h.answerAll(5, 404);
    expect(h.limiter.limit).toBe(8);
  });

  it('never goes below one', async () => {
    const h = harness({ initial: 8 });
    offer(h, 100);
    await h.settle();
    for (let i = 0; i < 6; i++) await h.answerAll(5, 429);
    expect(h.limiter.limit).toBe(1);
    expect(h.pending.length).toBe(1);
  });

  it('does not grow a limit that is not used', async () => {
    const h = harness({ initial: 8 });
    for (let i = 0; i < 20; i++) {
      void h.send(`a/${i}`);
      await h.settle();
      await h.answerAll(5);
    }
    expect(h.limiter.limit).toBe(8);
  });

  it('sends one write of an object at a time, and the latest queued write wins', async () => {
    const h = harness();
    const order: string[] = [];
    const gates: (() => void)[] = [];
    const write = (what: string) => () =>
      new Promise<string>((resolve) => {
        order.push(what);
        gates.push(() => resolve(what));
      });
    const first = h.limiter.run('ns/Deployment/web', write('v1'));
    const second = h.limiter.run('ns/Deployment/web', write('v2'));
    const third = h.limiter.run('ns/Deployment/web', write('v3'));
    const other = h.limiter.run('ns/Deployment/api', write('api'));
    await h.settle();
    expect(order).toEqual(['v1', 'api']); // v2 waits for v1; another object does not
    gates.shift()?.();
    await h.settle();
    expect(order).toEqual(['v1', 'api', 'v3']); // v2 was superseded before it was sent
    for (const open of gates.splice(0)) open();
    expect(await Promise.all([first, second, third, other])).toEqual(['v1', 'v3', 'v3', 'api']);
    expect(h.limiter.inflight).toBe(0);
  });

  it('a failed write of an object passes its error to the callers waiting on it, then frees the object', async () => {
    const h = harness();
    let fail: (e: unknown) => void = () => {};
    const first = h.limiter.run('k', () => new Promise((_r, reject) => (fail = reject)));
    const second = h.limiter.run('k', () => Promise.reject(new Error('second')));
    await h.settle();
    fail(Object.assign(new Error('conflict'), { code: 409 }));
    await expect(first).rejects.toThrow('conflict');
    await expect(second).rejects.toThrow('second');
    await expect(h.limiter.run('k', async () => 'again')).resolves.toBe('again');
  });

  it('exposes the limit and in-flight writes as gauges', async () => {
    const metrics = new Registry();
    const limiter = new CellWriteLimiter({ cell: 'c9', metrics, initial: 2 });
    let release: () => void = () => {};
    const w = limiter.run('k', () => new Promise<void>((r) => (release = r)));
    const text = await metrics.metrics();
    expect(text).toContain('berth_scheduler_cell_write_limit{cell="c9"} 2');
    expect(text).toContain('berth_scheduler_cell_writes_inflight{cell="c9"} 1');
    release();
    await w;
    expect(await metrics.metrics()).toContain('berth_scheduler_cell_writes_inflight{cell="c9"} 0');
  });
});
