import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { CompareFailedError, ConflictError, InputError } from '../src/errors/index.ts';
import {
  createEtcdClient,
  type Etcd3,
  EtcdLease,
  LeaderElection,
  openWatchStream,
  PrefixWatcher,
  type WatchChange,
} from '../src/etcd/index.ts';
import { Etcd3Backend, type RetryOptions, Store, transact } from '../src/store/index.ts';
import { regionCredentials, regionEnv, startPrivateEtcd, uniquePrefix, waitFor } from '../src/testing/index.ts';

let client: Etcd3;
let store: Store;

beforeAll(() => {
  client = createEtcdClient({
    endpoints: (regionEnv().ETCD_ENDPOINTS as string).split(','),
    ...regionCredentials().etcd,
  });
  store = new Store(new Etcd3Backend(client));
});

afterAll(() => {
  client.close();
});

/** Resolves every waiter once `count` of them are waiting. */
function barrier(count: number): () => Promise<void> {
  let waiting = 0;
  let release!: () => void;
  const all = new Promise<void>((r) => {
    release = r;
  });
  return () => {
    waiting++;
    if (waiting === count) release();
    return all;
  };
}

async function freshList(prefix: string): Promise<Record<string, string>> {
  return client.getAll().prefix(prefix).strings();
}

/** Compare-and-swap of one key through the store's one retry loop. */
function updateKey<T>(
  st: Store,
  key: string,
  read: () => Promise<{ value: T; modRevision: number } | undefined>,
  mutate: (current: T | undefined) => T,
  options: RetryOptions = {},
): Promise<T> {
  return transact(
    st,
    async () => {
      const current = await read();
      const next = mutate(current?.value);
      return {
        ops: [
          current
            ? { op: 'update', key, value: next, modRevision: current.modRevision }
            : { op: 'create', key, value: next },
        ],
        result: () => next,
      };
    },
    options,
  );
}

describe('the store on real etcd: compare-and-swap through the one retry loop', () => {
  const counter = z.object({ writers: z.array(z.string()) });
  const read = (key: string) => () => store.get(key, counter);
  const readNumber = (key: string) => () => store.get(key, z.number());

  it('two concurrent updates of one key both land, in some order, with no lost update', async () => {
    const key = `${uniquePrefix()}/counter`;
    await client.put(key).value(JSON.stringify({ writers: [] }));
    const bothRead = barrier(2);
    let conflicts = 0;
    const update = (writer: string) =>
      updateKey<{ writers: string[] }>(
        store,
        key,
        async () => {
          const current = await read(key)();
          // Both writers read the same revision before either writes: one of them must conflict.
          if (conflicts === 0) await bothRead();
          return current;
        },
        (current) => ({ writers: [...(current?.writers ?? []), writer] }),
        { onConflict: () => conflicts++ },
      );
    await Promise.all([update('a'), update('b')]);

    const stored = await store.get(key, counter);
    expect(stored?.value.writers.sort()).toEqual(['a', 'b']);
    expect(conflicts).toBe(1);
  });

  it('many concurrent increments lose nothing', async () => {
    const key = `${uniquePrefix()}/n`;
    await Promise.all(
      Array.from({ length: 20 }, () =>
        updateKey<number>(store, key, readNumber(key), (current) => (current ?? 0) + 1, { maxAttempts: 50 }),
      ),
    );
    expect((await store.get(key, z.number()))?.value).toBe(20);
  });

  it('a non-conflict error is not retried', async () => {
    const key = `${uniquePrefix()}/x`;
    let calls = 0;
    await expect(
      updateKey(store, key, readNumber(key), () => {
        calls++;
        throw new InputError('refused by the mutator');
      }),
    ).rejects.toBeInstanceOf(InputError);
    expect(calls).toBe(1);

    // etcd itself refuses a value over its request size limit (1.5 MiB): surfaced, not retried.
    let writes = 0;
    await expect(
      updateKey<string>(
        store,
        key,
        () => store.get(key, z.string()),
        () => {
          writes++;
          return 'x'.repeat(2 * 1024 * 1024);
        },
      ),
    ).rejects.toThrow(/too large|exceeds|larger than max|RESOURCE_EXHAUSTED/i);
    expect(writes).toBe(1);
  });

  it('gives up with a ConflictError after the bounded number of attempts', async () => {
    const key = `${uniquePrefix()}/hot`;
    let calls = 0;
    await expect(
      updateKey<number>(
        store,
        key,
        async () => {
          const current = await readNumber(key)();
          calls++;
          // Someone else writes the key between our read and our write, every time.
          await client.put(key).value(JSON.stringify(calls * 100));
          return current;
        },
        (current) => (current ?? 0) + 1,
        { maxAttempts: 3 },
      ),
    ).rejects.toBeInstanceOf(ConflictError);
    expect(calls).toBe(3);
  });

  it('a failed transaction names the keys whose compare failed, read back in the same call', async () => {
    const prefix = uniquePrefix();
    await client.put(`${prefix}/a`).value('1');
    const a = await store.keys(`${prefix}/a`);
    await client.put(`${prefix}/a`).value('2');
    const err = await store
      .commit([
        { op: 'expect', key: `${prefix}/a`, modRevision: a[0]?.modRevision ?? 0 },
        { op: 'create', key: `${prefix}/b`, value: 1 },
      ])
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CompareFailedError);
    expect((err as CompareFailedError).failedKeys).toEqual([`${prefix}/a`]);
    expect(await client.get(`${prefix}/b`).string()).toBeNull();
  });
});

describe('list-then-watch', () => {
  it('a watcher started, then compacted past, then resumed, ends with the same view as a fresh list', async () => {
    const prefix = `${uniquePrefix()}/w/`;
    await client.put(`${prefix}a`).value('"1"');
    await client.put(`${prefix}b`).value('"2"');
    const changes: WatchChange<string>[] = [];
    const watcher = new PrefixWatcher<string>({ client, prefix, onChange: (c) => changes.push(c) });
    await watcher.start();
    await client.put(`${prefix}c`).value('"3"');
    await waitFor(() => watcher.get(`${prefix}c`)?.value === '3', { message: 'watcher sees c' });
    expect(watcher.listCount).toBe(1);

    await watcher.stop();
    // While it is stopped: a delete, an update, a create, and a compaction past all of them.
    await client.delete().key(`${prefix}a`);
    await client.put(`${prefix}b`).value('"22"');
    await client.put(`${prefix}d`).value('"4"');
    const head = await client.kv.range({ key: Buffer.from(prefix), limit: 1 });
    await client.kv.compact({ revision: head.header.revision, physical: true });
    changes.length = 0;

    await watcher.start();
    expect(watcher.listCount).toBe(2); // the compacted resume forced a re-list
    const view = Object.fromEntries([...watcher.view].map(([k, v]) => [k, JSON.stringify(v.value)]));
    expect(view).toEqual(await freshList(prefix));
    // The consumer is told what it missed, as ordinary changes.
    expect(changes.map((c) => `${c.type} ${c.key.slice(prefix.length)}`).sort()).toEqual([
      'delete a',
      'put b',
      'put d',
    ]);

    // And it keeps watching.
    await client.put(`${prefix}e`).value('"5"');
    await waitFor(() => watcher.get(`${prefix}e`), { message: 'watcher sees e after resume' });
    await watcher.stop();
  });

  it('keeps the last view while etcd is down and converges after it returns', async () => {
    const etcd = await startPrivateEtcd();
    const own = createEtcdClient({ endpoints: [etcd.endpoint] });
    try {
      const prefix = '/berth/apps/';
      await own.put(`${prefix}shop`).value('"v1"');
      const watcher = new PrefixWatcher<string>({ client: own, prefix, retryInitialMs: 50, retryMaxMs: 300 });
      await watcher.start();
      expect(watcher.get(`${prefix}shop`)?.value).toBe('v1');

      await etcd.kill();
      await waitFor(() => watcher.stale, { message: 'watcher turns stale' });
      expect(watcher.get(`${prefix}shop`)?.value).toBe('v1'); // last known view still served

      await etcd.restart();
      await waitFor(async () => {
        await own.put(`${prefix}blog`).value('"v9"');
        return true;
      });
      await waitFor(() => watcher.state === 'synced' && watcher.get(`${prefix}blog`)?.value === 'v9', {
        timeoutMs: 20_000,
        message: 'watcher converges after etcd returns',
      });
      await watcher.stop();
    } finally {
      own.close();
      await etcd.destroy();
    }
  });

  it("stopping a watch keeps the client's connections to etcd", async () => {
    // etcd3 closes every channel of a client when a watch stream it still writes to fails, and a
    // cancel is such a failure: calls queued at that moment would fail and every watch stop
    // would cost a reconnect. The KV channel must be the same object before and after.
    type Pool = { pool: { hosts: { cachedServices: Record<string, unknown> }[] } };
    const services = () => (client as unknown as Pool).pool.hosts[0]?.cachedServices ?? {};
    const key = `${uniquePrefix()}/watched`;
    await client.put(key).value('1');
    const kvBefore = services().KV;
    expect(kvBefore).toBeDefined();
    const seen: string[] = [];
    let created = false;
    const stream = await openWatchStream(
      client,
      { key: Buffer.from(key), startRevision: 0 },
      (res) => {
        for (const event of res.events) seen.push(event.kv.value.toString());
      },
      () => {
        created = true;
      },
    );
    await waitFor(() => created, { message: 'watch created' });
    await client.put(key).value('2');
    await waitFor(() => seen.includes('2'), { message: 'watch sees the put' });
    stream.cancel();
    await stream.done;
    expect(services().KV).toBe(kvBefore);
    expect(await client.get(key).string()).toBe('2');
  });
});

describe('leases and leader election', () => {
  it('a key under a kept-alive lease outlives the TTL', async () => {
    const key = `${uniquePrefix()}/leased`;
    const lease = await EtcdLease.grant(client, { ttlSeconds: 2 });
    await client.put(key).value('here').lease(lease.id);
    const start = Date.now();
    await waitFor(() => Date.now() - start > 3500, { timeoutMs: 5000, intervalMs: 250 });
    expect(await client.get(key).string()).toBe('here');
    await lease.revoke();
    expect(await client.get(key).string()).toBeNull();
  });

  it("killing the leader's lease hands leadership to the standby", async () => {
    const key = `${uniquePrefix()}/elections/scheduler`;
    const events: string[] = [];
    const make = (id: string) =>
      new LeaderElection({
        client,
        key,
        candidateId: id,
        ttlSeconds: 5,
        onElected: () => {
          events.push(`${id} elected`);
        },
        onDeposed: (reason) => {
          events.push(`${id} deposed: ${reason}`);
        },
      });
    const first = make('first');
    first.start();
    await waitFor(() => first.isLeader, { message: 'first leads' });
    const second = make('second');
    second.start();
    expect(await second.leader()).toBe('first');

    // Revoke the leader's lease behind its back, as etcd does when a leader stops keeping it alive.
    const res = await client.kv.range({ key: Buffer.from(key) });
    const leaseId = res.kvs[0]?.lease;
    expect(leaseId).toBeTruthy();
    await client.leaseClient.leaseRevoke({ ID: leaseId as string });

    await waitFor(() => second.isLeader, { timeoutMs: 5000, message: 'standby takes over' });
    await waitFor(() => !first.isLeader, { message: 'old leader steps down' });
    expect(await second.leader()).toBe('second');
    expect(events[0]).toBe('first elected');
    expect(events).toContain('second elected');
    expect(events.some((e) => e.startsWith('first deposed'))).toBe(true);

    await second.stop();
    await first.stop();
    await waitFor(async () => (await client.get(key).string()) === null, { message: 'seat empty after stop' });
  });

  it('a stopped leader resigns at once and the standby does not wait for the TTL', async () => {
    const key = `${uniquePrefix()}/elections/discovery`;
    const a = new LeaderElection({ client, key, candidateId: 'a', ttlSeconds: 30 });
    const b = new LeaderElection({ client, key, candidateId: 'b', ttlSeconds: 30 });
    a.start();
    await waitFor(() => a.isLeader);
    b.start();
    const stoppedAt = Date.now();
    await a.stop();
    await waitFor(() => b.isLeader, { timeoutMs: 5000, message: 'b leads' });
    expect(Date.now() - stoppedAt).toBeLessThan(5000);
    await b.stop();
  });
});
