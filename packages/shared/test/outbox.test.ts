/**
 * Events ride the change they record: with NATS killed, changes still commit, and every committed
 * change's event reaches the stream exactly once when NATS is back, in commit order, also when a
 * relay died between JetStream's ack and the outbox delete.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEtcdClient, type Etcd3 } from '../src/etcd/index.ts';
import { EventSubjects } from '../src/events/index.ts';
import { BerthKeys } from '../src/keys/index.ts';
import { createLogger } from '../src/logging/index.ts';
import { EventsComponent, NatsComponent, readEvents } from '../src/nats/index.ts';
import { Etcd3Backend, Store } from '../src/store/index.ts';
import {
  type PrivateNats,
  regionCredentials,
  regionEnv,
  startPrivateNats,
  uniqueId,
  waitFor,
} from '../src/testing/index.ts';

let etcd: Etcd3;
let store: Store;
let nats: PrivateNats;

beforeAll(async () => {
  etcd = createEtcdClient({
    endpoints: (regionEnv().ETCD_ENDPOINTS as string).split(','),
    ...regionCredentials().etcd,
  });
  store = new Store(new Etcd3Backend(etcd));
  nats = await startPrivateNats();
});

afterAll(async () => {
  await nats?.destroy();
  etcd?.close();
});

function events(keys: BerthKeys, subjects: EventSubjects, component: NatsComponent): EventsComponent {
  return new EventsComponent({
    nats: component,
    store,
    keys,
    subjects,
    logger: createLogger({ service: 'outbox-test', level: 'silent' }),
    relayIntervalMs: 100,
  });
}

describe('the event outbox', () => {
  it('changes made while NATS is down each reach the stream once, in commit order, when it is back', async () => {
    const id = uniqueId();
    const keys = new BerthKeys(`/t-${id}`);
    const subjects = new EventSubjects(`t${id}`);
    const component = new NatsComponent({ servers: [nats.url], name: 'outbox-test' });
    await component.start();
    const outbox = events(keys, subjects, component);
    await outbox.start();
    try {
      await nats.kill();
      // Twenty changes, each committed with its event in one transaction, while NATS is down.
      for (let i = 0; i < 20; i++) {
        const { op, event } = outbox.record({
          kind: 'app',
          resourceId: 'shop',
          action: 'scaled',
          actor: { type: 'user', name: 'alice' },
          data: { i },
        });
        await store.commit([{ op: 'put', key: `${keys.prefix}/apps/shop-${i}`, value: { i } }, op]);
        outbox.flush([event]);
      }
      expect((await store.keys(keys.outboxes())).length).toBe(20);

      await nats.start();
      await waitFor(async () => (await store.keys(keys.outboxes())).length === 0, {
        timeoutMs: 30_000,
        message: 'the relay published and deleted every outbox entry',
      });
      const stored = await readEvents(component.client.js, subjects, { filter: subjects.allEvents() });
      expect(stored.map((s) => (s.event.data as { i: number }).i)).toEqual([...Array(20).keys()]);
    } finally {
      await outbox.stop();
      await component.stop();
    }
  });

  it('an entry published but not deleted (the relay died after the ack) is not stored twice', async () => {
    const id = uniqueId();
    const keys = new BerthKeys(`/t-${id}`);
    const subjects = new EventSubjects(`t${id}`);
    const component = new NatsComponent({ servers: [nats.url], name: 'outbox-test' });
    await component.start();
    const first = events(keys, subjects, component);
    await first.start();
    await first.stop();
    try {
      const recorded = Array.from({ length: 5 }, (_, i) =>
        first.record({
          kind: 'app',
          resourceId: 'shop',
          action: 'updated',
          actor: { type: 'user', name: 'a' },
          data: { i },
        }),
      );
      await store.commit(recorded.map((r) => r.op));
      const raw = await store.backend.range(keys.outboxes());
      expect(await first.relayOnce()).toBe(5);
      // The delete never happened: the same entries are back, as after a crash between ack and delete.
      await store.backend.txn(
        [],
        raw.map((kv) => ({ put: kv.key, value: kv.value })),
      );
      const second = events(keys, subjects, component);
      expect(await second.relayOnce()).toBe(5);
      expect((await store.keys(keys.outboxes())).length).toBe(0);
      const stored = await readEvents(component.client.js, subjects, { filter: subjects.allEvents() });
      expect(stored.map((s) => s.event.id)).toEqual(recorded.map((r) => r.event.id));
    } finally {
      await component.stop();
    }
  });
});
