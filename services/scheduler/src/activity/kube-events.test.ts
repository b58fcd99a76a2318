import { NotLeaderError } from '@berth/shared/errors';
import type { BerthEvent, EventInput } from '@berth/shared/events';
import { BerthKeys } from '@berth/shared/keys';
import { createLogger } from '@berth/shared/logging';
import { type App, LABELS, MANAGED_BY } from '@berth/shared/model';
import { MemoryBackend, type Op, Store } from '@berth/shared/store';
import type { CoreV1Event, V1Pod } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { KubeEventFeed, kebab } from './kube-events.ts';

const keys = new BerthKeys('/t');
const app = { name: 'shop', incarnation: '6f1c2f8e-3c55-4a3a-9d59-0b1b3c1c2f00' } as App;

function setup(leading = () => true) {
  const backend = new MemoryBackend();
  const store = new Store(backend).fenced(() => {
    if (!leading()) throw new NotLeaderError('deposed');
    return { key: keys.election('scheduler'), modRevision: 0 };
  });
  const flushed: BerthEvent[] = [];
  const feed = new KubeEventFeed({
    store,
    events: {
      record(input: EventInput): { op: Op; event: BerthEvent } {
        const event = { ...input, v: 1, time: '2026-11-29T12:00:00.000Z' } as BerthEvent;
        return { op: { op: 'put', key: keys.outbox(event.id), value: event }, event };
      },
      flush: (events) => flushed.push(...events),
    },
    app: (name) => (name === app.name ? app : undefined),
    logger: createLogger({ service: 'test', level: 'silent' }),
  });
  return { backend, feed, flushed };
}

function warning(count: number, namespace = 'shop'): CoreV1Event {
  return {
    metadata: { uid: 'u1', namespace },
    involvedObject: { kind: 'Pod', name: 'shop-v1-abc' },
    reason: 'BackOff',
    message: 'Back-off restarting failed container',
    count,
  } as CoreV1Event;
}

function oomPod(restartCount: number): V1Pod {
  return {
    metadata: {
      uid: 'p1',
      name: 'shop-v1-abc',
      labels: { [LABELS.managedBy]: MANAGED_BY, [LABELS.app]: 'shop', [LABELS.version]: 'v1' },
    },
    status: { containerStatuses: [{ name: 'app', restartCount, lastState: { terminated: { reason: 'OOMKilled' } } }] },
  } as unknown as V1Pod;
}

describe('kube event feed', () => {
  it('commits a warning to the outbox, then publishes it, with the app and its incarnation', async () => {
    const { backend, feed, flushed } = setup();
    await feed.warning('cell-a', warning(1));
    expect((await backend.range(keys.outboxes())).length).toBe(1);
    expect(flushed).toHaveLength(1);
    expect(flushed[0]).toMatchObject({
      kind: 'pod',
      resourceId: 'shop',
      incarnation: app.incarnation,
      action: 'back-off',
      actor: { type: 'system', name: 'kubernetes/cell-a' },
    });
  });

  it('records a repeated warning at 1, 2, 4, 8… repeats, not each time', async () => {
    const { feed, flushed } = setup();
    for (let count = 1; count <= 9; count++) await feed.warning('cell-a', warning(count));
    expect(flushed.map((e) => e.data?.count)).toEqual([1, 2, 4, 8]);
  });

  it('ignores events of namespaces that are no app of this region', async () => {
    const { backend, feed } = setup();
    await feed.warning('cell-a', warning(1, 'kube-system'));
    expect(backend.txns).toBe(0);
  });

  it('records an OOM kill once, however many times the pod is updated after it', async () => {
    const { backend, feed, flushed } = setup();
    for (let i = 0; i < 5; i++) await feed.podUpdated('cell-a', oomPod(1));
    await feed.podUpdated('cell-a', oomPod(2));
    expect(backend.txns).toBe(2);
    expect(flushed.map((e) => [e.action, e.data?.restarts])).toEqual([
      ['oom-killed', 1],
      ['oom-killed', 2],
    ]);
  });

  it('records nothing when not leading, and does not throw', async () => {
    const { backend, feed, flushed } = setup(() => false);
    await feed.warning('cell-a', warning(1));
    expect(await backend.range('/t/')).toEqual([]);
    expect(flushed).toEqual([]);
  });

  it('turns reasons into event actions', () => {
    expect(kebab('FailedScheduling')).toBe('failed-scheduling');
    expect(kebab('ErrImagePull')).toBe('err-image-pull');
    expect(kebab('123')).toBe('event-123');
  });
});
