/**
 * A build whose BullMQ job lock could not be renewed stops here (the stalled checker hands the
 * job out again), and this attempt writes nothing more: the lock is taken away by deleting its
 * key, which makes the next renewal fail, as after a Redis failover.
 */
import { buildQueueName } from '@berth/shared/builds';
import { waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, expect, test } from 'vitest';
import {
  docker,
  getRun,
  gitRepo,
  logText,
  openWorld,
  putConfig,
  queueRun,
  readLog,
  shellImage,
  startAgent,
  type World,
  waitLogged,
} from './harness.ts';

let world: World;
let agent: Awaited<ReturnType<typeof startAgent>>;
let shell: string;

beforeAll(async () => {
  world = await openWorld();
  shell = await shellImage();
  agent = await startAgent(world, { BUILDER_LOCK_DURATION: '5s' });
});

afterAll(async () => {
  await agent?.service.stop();
  await world?.close();
});

test('a lost job lock stops the build here and writes nothing for that attempt', async () => {
  const repo = gitRepo(world, { Dockerfile: 'FROM scratch\nCOPY out.txt /out.txt\n', 'src.txt': 'x\n' });
  const config = await putConfig(world, {
    git: { url: repo.url, branch: 'main' },
    compile: { image: shell, script: 'echo started; sleep 120' },
  });
  const queued = await queueRun(world, config, agent.id);
  await waitLogged(world, queued.id, '[compile] started');
  const before = await getRun(world, queued.id);
  expect(before.state).toBe('compiling');

  const lockKey = `bull:${buildQueueName(world.regionName, agent.id)}:${queued.id}:lock`;
  expect(await world.redis.del(lockKey)).toBe(1);

  await waitFor(() => agent.logs().includes('job lock not renewed'), { timeoutMs: 10_000, message: 'renewal failed' });
  await waitFor(
    async () =>
      (await docker.listContainers({ all: true, filters: { label: ['berth.build'] } })).every(
        (c) => !c.Labels['berth.build']?.includes(queued.id),
      ),
    { timeoutMs: 10_000, message: 'compile container removed' },
  );
  await waitFor(async () => logText(await readLog(world, queued.id)).includes('stopped: the job lock was lost'));
  const after = await getRun(world, queued.id);
  expect(after.attempt).toBe(1);
  expect(after.state).toBe('compiling');
  expect(after.finishedAt).toBeNull();
});
