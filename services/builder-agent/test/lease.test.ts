/**
 * An agent whose lease is lost takes nothing new until it has registered again: etcd (a private
 * one) is killed for longer than the lease's TTL, a job added meanwhile waits in the queue, and
 * once etcd is back the agent registers under a new lease, resumes, and builds it.
 */

import { buildQueueName } from '@berth/shared/builds';
import { type PrivateEtcd, startPrivateEtcd, waitFor } from '@berth/shared/testing';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { addJob, gitRepo, openWorld, putConfig, queueRun, startAgent, type World, waitForState } from './harness.ts';

let etcd: PrivateEtcd;
let world: World;
let agent: Awaited<ReturnType<typeof startAgent>>;

beforeAll(async () => {
  etcd = await startPrivateEtcd();
  world = await openWorld({ etcdEndpoints: etcd.endpoint });
  agent = await startAgent(world, { BUILDER_LEASE_TTL_SECONDS: '4' });
});

afterAll(async () => {
  await agent?.service.stop();
  await world?.close();
  await etcd?.destroy();
});

test('a lost lease pauses the worker; after registering again it resumes and builds what waited', async () => {
  const repo = gitRepo(world, { Dockerfile: 'FROM scratch\nCOPY a.txt /a.txt\n', 'a.txt': 'a\n' });
  const config = await putConfig(world, { git: { url: repo.url, branch: 'main' } });
  const run = await queueRun(world, config, agent.id, {}, { enqueue: false });
  const firstLease = (await world.etcd.get(world.keys.builder(world.regionName, agent.id)).exec()).kvs[0]?.lease;

  await etcd.kill();
  await waitFor(() => !agent.service.worker.running, { timeoutMs: 15_000, message: 'worker paused' });
  await waitFor(async () => (await fetch(`${agent.service.runtime.http.url}/readyz`)).status === 503, {
    message: 'not ready while unregistered',
  });
  await addJob(world, agent.id, { runId: run.id, attempt: 1 });
  const queue = new Queue(buildQueueName(world.regionName, agent.id), { connection: world.redis });
  // A blocking read under way when the worker paused may fetch it: it goes back to waiting.
  await waitFor(async () => (await queue.getJobState(run.id)) === 'waiting', { message: 'the job waits' });

  await etcd.restart();
  await waitFor(() => agent.service.worker.running, { timeoutMs: 30_000, message: 'worker resumed' });
  const lease = (await world.etcd.get(world.keys.builder(world.regionName, agent.id)).exec()).kvs[0]?.lease;
  expect(lease).toBeDefined();
  expect(lease).not.toBe(firstLease);
  expect((await waitForState(world, run.id, ['succeeded', 'failed'])).state).toBe('succeeded');
  await queue.close();
});
