import { RateLimitedError } from '@berth/shared/errors';
import { problemFromError } from '@berth/shared/http';
import { describe, expect, it } from 'vitest';
import { StreamLimits } from './stream-limits.ts';

const limits = () =>
  new StreamLimits({
    limits: {
      follow: { max: 2, setting: 'MAX_FOLLOWS_PER_USER' },
      exec: { max: 1, setting: 'MAX_EXEC_PER_USER' },
    },
  });

describe('StreamLimits', () => {
  it('refuses one more than the limit with a 429 naming the setting, and takes a freed slot', () => {
    const l = limits();
    const first = l.acquire('follow', 'ann');
    l.acquire('follow', 'ann');
    let refused: unknown;
    try {
      l.acquire('follow', 'ann');
    } catch (err) {
      refused = err;
    }
    expect(refused).toBeInstanceOf(RateLimitedError);
    const problem = problemFromError(refused, '/api/v1/apps/shop/logs');
    expect(problem).toMatchObject({ status: 429, limit: 'MAX_FOLLOWS_PER_USER', max: 2, open: 2 });
    expect(problem.detail).toContain('MAX_FOLLOWS_PER_USER');
    first();
    expect(() => l.acquire('follow', 'ann')).not.toThrow();
  });

  it('counts each user and each kind apart', () => {
    const l = limits();
    l.acquire('exec', 'ann');
    expect(() => l.acquire('exec', 'bob')).not.toThrow();
    expect(() => l.acquire('follow', 'ann')).not.toThrow();
    expect(() => l.acquire('exec', 'ann')).toThrow(/MAX_EXEC_PER_USER/);
  });

  it('frees a slot once however often its release is called', () => {
    const l = limits();
    const release = l.acquire('follow', 'ann');
    l.acquire('follow', 'ann');
    release();
    release();
    expect(l.openOf('follow', 'ann')).toBe(1);
  });
});
