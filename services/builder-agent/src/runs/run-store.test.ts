import { type BuildConfig, type BuildRun, buildRunSchema } from '@berth/shared/builds';
import { BerthKeys } from '@berth/shared/keys';
import { MemoryBackend, Store } from '@berth/shared/store';
import { describe, expect, test } from 'vitest';
import { finish, RunRecord, StaleAttemptError } from './run-store.ts';

const keys = new BerthKeys('/t');
const now = new Date().toISOString();
const config: BuildConfig = {
  name: 'main',
  app: 'shop',
  id: 'cfg0000000000001',
  git: { url: '/srv/shop.git', branch: 'main' },
  dockerfile: 'Dockerfile',
  context: '.',
  cache: true,
  tag: '{branch}-{sha7}',
  target: 'team/shop',
  autoDeploy: false,
  webhookSecretHash: '0'.repeat(64),
  createdAt: now,
  createdBy: 'admin',
  updatedAt: now,
};
const run: BuildRun = {
  id: 'run0000000000001',
  app: 'shop',
  config: 'main',
  configId: config.id,
  number: 1,
  trigger: { type: 'manual', by: 'admin' },
  ref: 'main',
  commit: null,
  attempt: 1,
  state: 'queued',
  reason: null,
  placement: null,
  steps: [],
  cache: { enabled: true, hit: null },
  image: null,
  createdAt: now,
  updatedAt: now,
  finishedAt: null,
};

async function setup(stored: BuildRun = run) {
  const store = new Store(new MemoryBackend());
  await store.commit([
    { op: 'put', key: keys.buildConfig('shop', 'main'), value: config },
    { op: 'put', key: keys.buildRun(run.id), value: stored },
  ]);
  return store;
}

const load = (store: Store, attempt = 1) =>
  RunRecord.load({ store, keys, runId: run.id, attempt, actor: 'builder-agent' });

describe('a run record fenced by its attempt', () => {
  test('a job for another attempt, a finished run or a missing run is stale', async () => {
    expect(await load(await setup(), 2)).toEqual({ stale: 'the run is at attempt 1, not 2' });
    expect(await load(await setup({ ...run, state: 'cancelled' }))).toEqual({ stale: 'the run is already cancelled' });
    expect(await load(new Store(new MemoryBackend()))).toEqual({ stale: 'the run does not exist' });
  });

  test('a write of attempt 1 after attempt 2 was written fails, and attempt 2 stays', async () => {
    const store = await setup();
    const loaded = await load(store);
    if (!('record' in loaded)) throw new Error('expected a record');
    await loaded.record.update({ apply: (r) => ({ ...r, state: 'cloning' }) });
    await store.commit([{ op: 'put', key: keys.buildRun(run.id), value: { ...run, attempt: 2 } }]);
    await expect(loaded.record.update({ apply: (r) => finish(r, 'succeeded', null) })).rejects.toBeInstanceOf(
      StaleAttemptError,
    );
    expect((await store.get(keys.buildRun(run.id), buildRunSchema))?.value.attempt).toBe(2);
  });

  test('a concurrent write of the same attempt is re-read and the change applied on top', async () => {
    const store = await setup();
    const loaded = await load(store);
    if (!('record' in loaded)) throw new Error('expected a record');
    await store.commit([
      {
        op: 'put',
        key: keys.buildRun(run.id),
        value: { ...run, placement: { agentId: 'a', rank: 1, reason: 'affinity' } },
      },
    ]);
    const next = await loaded.record.update({ apply: (r) => ({ ...r, state: 'cloning' }) });
    expect(next.state).toBe('cloning');
    expect(next.placement?.agentId).toBe('a');
  });

  test('a run finished by someone else (the API) is not overwritten', async () => {
    const store = await setup();
    const loaded = await load(store);
    if (!('record' in loaded)) throw new Error('expected a record');
    await store.commit([{ op: 'put', key: keys.buildRun(run.id), value: finish({ ...run }, 'failed', 'agent-lost') }]);
    await expect(loaded.record.update({ apply: (r) => ({ ...r, state: 'building' }) })).rejects.toBeInstanceOf(
      StaleAttemptError,
    );
  });

  test('fields the agent does not know are kept when it writes the run', async () => {
    const store = await setup({ ...run, futureField: { kept: true } } as BuildRun);
    const loaded = await load(store);
    if (!('record' in loaded)) throw new Error('expected a record');
    await loaded.record.update({ apply: (r) => ({ ...r, state: 'cloning' }) });
    const raw = await store.backend.get(keys.buildRun(run.id));
    expect(JSON.parse(raw?.value ?? '{}')).toMatchObject({ state: 'cloning', futureField: { kept: true } });
  });
});
