import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  CompareFailedError,
  ConflictError,
  CorruptValueError,
  NotLeaderError,
  UnavailableError,
} from '../errors/index.ts';
import { MemoryBackend } from './memory-backend.ts';
import { retryOnConflict, transact } from './retry.ts';
import { Store } from './store.ts';

const num = z.number();

describe('Store.commit', () => {
  it('writes every op or none, and names the keys whose compare failed', async () => {
    const backend = new MemoryBackend();
    const store = new Store(backend);
    const rev = await store.commit([
      { op: 'create', key: '/a', value: 1 },
      { op: 'put', key: '/b', value: 2 },
    ]);
    expect((await store.get('/a', num))?.modRevision).toBe(rev);

    const err = await store
      .commit([
        { op: 'create', key: '/a', value: 9 },
        { op: 'expect', key: '/b', modRevision: rev },
        { op: 'put', key: '/c', value: 3 },
      ])
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CompareFailedError);
    expect((err as CompareFailedError).failedKeys).toEqual(['/a']);
    expect(await store.get('/c', num)).toBeUndefined();
  });

  it('a fenced view compares the fence in every transaction and says NotLeader when it fails', async () => {
    const backend = new MemoryBackend();
    const store = new Store(backend);
    await store.commit([{ op: 'put', key: '/leader', value: 'me' }]);
    const seat = (await store.keys('/leader'))[0]?.createRevision ?? 0;
    const fenced = store.fenced(() => ({ key: '/leader', createRevision: seat }));
    await fenced.commit([{ op: 'put', key: '/x', value: 1 }]);

    // Another candidate took the seat (deleted and re-created the key).
    backend.applyNow([{ del: '/leader' }]);
    backend.applyNow([{ put: '/leader', value: '"other"' }]);
    await expect(fenced.commit([{ op: 'put', key: '/x', value: 2 }])).rejects.toBeInstanceOf(NotLeaderError);
    expect((await store.get('/x', num))?.value).toBe(1);

    const notLeading = store.fenced(() => {
      throw new NotLeaderError('not leading');
    });
    await expect(notLeading.commit([{ op: 'put', key: '/x', value: 3 }])).rejects.toBeInstanceOf(NotLeaderError);
  });

  it('skips a value that does not match its schema, or names its key when asked to', async () => {
    const backend = new MemoryBackend();
    backend.applyNow([
      { put: '/v/a', value: '1' },
      { put: '/v/b', value: '"not a number"' },
      { put: '/v/c', value: '{broken' },
    ]);
    expect((await new Store(backend).list('/v/', num)).map((s) => s.key)).toEqual(['/v/a']);
    await expect(new Store(backend, { invalid: 'throw' }).get('/v/b', num)).rejects.toThrow(CorruptValueError);
  });
});

describe('the one retry loop', () => {
  it('retries only compare failures, and gives up with a ConflictError after maxAttempts', async () => {
    let calls = 0;
    await expect(
      retryOnConflict(
        async () => {
          calls++;
          throw new CompareFailedError(['/k']);
        },
        { maxAttempts: 4, baseDelayMs: 0 },
      ),
    ).rejects.toBeInstanceOf(ConflictError);
    expect(calls).toBe(4);

    calls = 0;
    await expect(
      retryOnConflict(async () => {
        calls++;
        throw new UnavailableError('etcd down');
      }),
    ).rejects.toBeInstanceOf(UnavailableError);
    expect(calls).toBe(1);
  });

  it('transact re-reads after a racing write, and maps a failed compare to the caller’s error', async () => {
    const backend = new MemoryBackend();
    const store = new Store(backend);
    await store.commit([{ op: 'put', key: '/n', value: 1 }]);
    let attempts = 0;
    const result = await transact(store, async () => {
      attempts++;
      const cur = await store.get('/n', num);
      // Someone writes between our read and our commit, once.
      if (attempts === 1) backend.beforeTxn = (b) => b.applyNow([{ put: '/n', value: '10' }]);
      return {
        ops: [{ op: 'update', key: '/n', value: (cur?.value ?? 0) + 1, modRevision: cur?.modRevision ?? 0 }],
        result: () => cur?.value,
      };
    });
    expect(attempts).toBe(2);
    expect(result).toBe(10);
    expect((await store.get('/n', num))?.value).toBe(11);

    const mapped = transact(store, async () => ({
      ops: [{ op: 'create', key: '/n', value: 0 }],
      onFailed: (keys) => (keys.includes('/n') ? new ConflictError('/n exists') : undefined),
      result: () => 0,
    }));
    await expect(mapped).rejects.toThrow('/n exists');
  });
});
