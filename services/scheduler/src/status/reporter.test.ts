import { NotLeaderError } from '@berth/shared/errors';
import type { BerthEvent, EventInput } from '@berth/shared/events';
import { BerthKeys } from '@berth/shared/keys';
import { createLogger } from '@berth/shared/logging';
import { MemoryBackend, type Op, Store } from '@berth/shared/store';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { StatusReporter } from './reporter.ts';

const keys = new BerthKeys('/t');
const logger = createLogger({ service: 'test', level: 'silent' });

function setup(options: { leading?: () => boolean; maxTxnOps?: number } = {}) {
  const backend = new MemoryBackend();
  const store = new Store(backend).fenced(() => {
    if (options.leading && !options.leading()) throw new NotLeaderError('deposed');
    return { key: keys.election('scheduler'), modRevision: 0 };
  });
  const flushed: BerthEvent[] = [];
  let n = 0;
  const events = {
    record(input: EventInput): { op: Op; event: BerthEvent } {
      const event = { ...input, id: `e${n++}` } as unknown as BerthEvent;
      return { op: { op: 'put', key: keys.outbox(event.id), value: event }, event };
    },
    flush: (e: readonly BerthEvent[]) => flushed.push(...e),
  };
  const reporter = new StatusReporter({ store, events, logger, maxTxnOps: options.maxTxnOps ?? 128, flushDelayMs: 1 });
  reporter.start();
  return { backend, store, reporter, flushed };
}

const event: EventInput = {
  actor: { type: 'service', name: 'scheduler' },
  kind: 'version',
  resourceId: 'shop',
  action: 'available',
};

describe('the status reporter', () => {
  it('writes the rows of many apps in one transaction, the latest value of each key', async () => {
    const { backend, store, reporter } = setup();
    for (let i = 0; i < 30; i++) reporter.put(keys.status(`app-${i}`, 'v1', 'cell-a'), { ready: 0 });
    for (let i = 0; i < 30; i++) reporter.put(keys.status(`app-${i}`, 'v1', 'cell-a'), { ready: 2 });
    expect(reporter.pending(keys.status('app-3', 'v1', 'cell-a'))).toEqual({ ready: 2 });
    await reporter.idle();
    expect(backend.txns).toBe(1);
    const rows = await store.list(keys.statuses(), z.object({ ready: z.number() }));
    expect(rows.map((r) => r.value.ready)).toEqual(Array(30).fill(2));
  });

  it('publishes a row’s events after the transaction that wrote it, and splits at the limit', async () => {
    const { backend, store, reporter, flushed } = setup({ maxTxnOps: 8 });
    for (let i = 0; i < 6; i++) reporter.put(keys.availability(`app-${i}`, 'v1'), { n: i }, [event]);
    await reporter.idle();
    // Each row and its event are two ops; seven fit beside the fence: three rows a transaction.
    expect(backend.txns).toBe(2);
    expect(flushed).toHaveLength(6);
    expect((await store.keys(keys.outboxes())).length).toBe(6);
  });

  it('a removed app’s waiting rows are never written back', async () => {
    const { store, reporter } = setup();
    reporter.put(keys.status('gone', 'v1', 'cell-a'), { ready: 1 });
    reporter.put(keys.status('kept', 'v1', 'cell-a'), { ready: 1 });
    reporter.forget(keys.appStatus('gone'));
    await reporter.idle();
    expect((await store.keys(keys.statuses())).map((k) => k.key)).toEqual([keys.status('kept', 'v1', 'cell-a')]);
  });

  it('a deposed leader writes nothing and publishes nothing', async () => {
    const { backend, reporter, flushed } = setup({ leading: () => false });
    reporter.put(keys.availability('shop', 'v1'), { n: 1 }, [event]);
    await reporter.idle();
    expect(await backend.range('/t/')).toEqual([]);
    expect(flushed).toEqual([]);
  });
});
