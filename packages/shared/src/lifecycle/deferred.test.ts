import { describe, expect, it } from 'vitest';
import { deferred } from './deferred.ts';

describe('deferred', () => {
  it('settles its promise when resolved from outside', async () => {
    const d = deferred<number>();
    d.resolve(7);
    await expect(d.promise).resolves.toBe(7);
  });

  it('rejects its promise when rejected from outside', async () => {
    const d = deferred();
    d.reject(new Error('gone'));
    await expect(d.promise).rejects.toThrow('gone');
  });
});
