/**
 * Build configs and runs through the API, against the region's real etcd, Redis and NATS: who may
 * read and write configs, where runs land on the agents' BullMQ queues (the test registers three
 * agents under etcd leases as builder-agent does, and reads the queues with BullMQ itself),
 * spill, rehome when an agent's lease goes, agent-lost for an active job, cancel, retry, and the
 * log over Server-Sent Events from JetStream.
 */
import {
  type BuilderRegistration,
  type BuildLogBatch,
  type BuildRun,
  builderCancelSubject,
  buildQueueName,
  buildRunSchema,
  rank,
} from '@berth/shared/builds';
import type { Etcd3 } from '@berth/shared/etcd';
import { NatsClient } from '@berth/shared/nats';
import { Redis } from '@berth/shared/redis';
import { regionCredentials, regionEnv, uniqueId, waitFor } from '@berth/shared/testing';
import { Queue, Worker } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appBody, ensureRegion, startApi, type TestApi } from './harness.ts';

let api: TestApi;
let owner: string;
let master: string;
let developer: string;
let reporter: string;
let other: string;
let redis: Redis;
const region = `br${uniqueId(6)}`;
const group = `bg${uniqueId(6)}`;
const app = 'shop';
const agentIds = ['agent-a', 'agent-b', 'agent-c'];
const leases = new Map<string, ReturnType<Etcd3['lease']>>();
const queues = new Map<string, Queue>();

function queue(agentId: string): Queue {
  let q = queues.get(agentId);
  if (!q) {
    q = new Queue(buildQueueName(region, agentId), { connection: redis });
    queues.set(agentId, q);
  }
  return q;
}

/** Registers an agent as builder-agent does: its registration under a lease of its own. */
async function register(agentId: string, options: { slots?: number; draining?: boolean } = {}): Promise<void> {
  const etcd = api.service.runtime.etcd;
  const lease = etcd.lease(60);
  const at = new Date().toISOString();
  const registration: BuilderRegistration = {
    id: agentId,
    region,
    slots: options.slots ?? 2,
    weight: options.slots ?? 2,
    labels: {},
    draining: options.draining ?? false,
    diskFreeBytes: 10_000_000_000,
    cacheBytes: 0,
    version: 'test',
    startedAt: at,
    reportedAt: at,
  };
  await lease.put(api.service.runtime.keys.builder(region, agentId)).value(JSON.stringify(registration));
  leases.set(agentId, lease);
}

async function unregister(agentId: string): Promise<void> {
  await leases.get(agentId)?.revoke();
  leases.delete(agentId);
}

async function clearQueues(): Promise<void> {
  for (const id of agentIds) await queue(id).obliterate({ force: true });
}

async function createConfig(name: string, extra: Record<string, unknown> = {}) {
  const res = await api.call('POST', `/apps/${app}/build-configs`, {
    token: owner,
    body: { name, git: { url: 'file:///srv/git/shop.git' }, target: `${group}/shop`, ...extra },
  });
  expect(res.status, JSON.stringify(res.json)).toBe(201);
  return res.json as { id: string; webhook: { url: string; secret: string } };
}

async function startRun(config: string, token = developer): Promise<BuildRun> {
  const res = await api.call('POST', `/apps/${app}/build-configs/${config}/runs`, { token, body: {} });
  expect(res.status, JSON.stringify(res.json)).toBe(201);
  return res.json as BuildRun;
}

async function getRun(id: string): Promise<BuildRun> {
  const res = await api.call('GET', `/builds/${id}`, { token: developer });
  expect(res.status).toBe(200);
  return res.json as BuildRun;
}

beforeAll(async () => {
  api = await startApi({ BUILD_AGENT_LOST_AFTER: '2s' });
  redis = new Redis(regionEnv().REDIS_URL as string, { maxRetriesPerRequest: null, ...regionCredentials().redis });
  await ensureRegion(api, region);
  owner = await api.user('b-owner');
  master = await api.user('b-master');
  developer = await api.user('b-dev');
  reporter = await api.user('b-reporter');
  other = await api.user('b-other');
  expect((await api.call('POST', '/image-groups', { token: owner, body: { name: group } })).status).toBe(201);
  expect(
    (await api.call('POST', '/apps', { token: owner, body: { ...appBody(app, region), image: `${group}/shop` } }))
      .status,
  ).toBe(201);
  for (const [user, role] of [
    ['b-master', 'Master'],
    ['b-dev', 'Developer'],
    ['b-reporter', 'Reporter'],
  ]) {
    expect((await api.call('PUT', `/apps/${app}/members/${user}`, { token: owner, body: { role } })).status).toBe(200);
  }
  for (const id of agentIds) await register(id);
});

afterAll(async () => {
  for (const id of [...leases.keys()]) await unregister(id).catch(() => undefined);
  for (const q of queues.values()) {
    await q.obliterate({ force: true }).catch(() => undefined);
    await q.close();
  }
  redis?.disconnect();
  await api?.stop();
});

describe('build configs', () => {
  it('Owner and Master write them, members read them, others see nothing', async () => {
    const created = await createConfig('web', { tag: '{branch}-{run}' });
    expect(created.webhook.url).toMatch(new RegExp(`/api/v1/hooks/github/${created.id}$`));
    expect(created.webhook.secret.length).toBeGreaterThanOrEqual(32);
    const read = await api.call('GET', `/apps/${app}/build-configs/web`, { token: reporter });
    expect(read.status).toBe(200);
    expect(read.json).toMatchObject({ name: 'web', git: { branch: 'main' }, cache: true, target: `${group}/shop` });
    expect(JSON.stringify(read.json)).not.toMatch(/secret/i);
    const list = await api.call('GET', `/apps/${app}/build-configs`, { token: developer });
    expect(list.json.items.map((c: { name: string }) => c.name)).toContain('web');
    expect((await api.call('GET', `/apps/${app}/build-configs/web`, { token: other })).status).toBe(404);
    const byDev = await api.call('POST', `/apps/${app}/build-configs`, {
      token: developer,
      body: { name: 'dev', git: { url: 'file:///x' }, target: `${group}/shop` },
    });
    expect(byDev.status).toBe(403);
    const patched = await api.call('PATCH', `/apps/${app}/build-configs/web`, {
      token: master,
      body: { autoDeploy: true, triggers: { tags: ['v*'] } },
    });
    expect(patched.status, JSON.stringify(patched.json)).toBe(200);
    expect(patched.json).toMatchObject({ autoDeploy: true, triggers: { tags: ['v*'] } });
    const twice = await api.call('POST', `/apps/${app}/build-configs`, {
      token: owner,
      body: { name: 'web', git: { url: 'file:///x' }, target: `${group}/shop` },
    });
    expect(twice.status).toBe(409);
  });

  it("refuses a target the app's owner may not push to, naming the field", async () => {
    const res = await api.call('POST', `/apps/${app}/build-configs`, {
      token: owner,
      body: { name: 'elsewhere', git: { url: 'file:///x' }, target: 'nosuchgroup/shop' },
    });
    expect(res.status).toBe(400);
    expect(res.json.errors?.[0]?.path ?? JSON.stringify(res.json)).toMatch(/target/);
  });

  it('rotating the webhook secret shows a new one; delete removes the config', async () => {
    const created = await createConfig('rotating');
    const rotated = await api.call('POST', `/apps/${app}/build-configs/rotating/webhook-secret`, { token: master });
    expect(rotated.status).toBe(200);
    expect(rotated.json.webhook.secret).not.toBe(created.webhook.secret);
    expect((await api.call('DELETE', `/apps/${app}/build-configs/rotating`, { token: developer })).status).toBe(403);
    expect((await api.call('DELETE', `/apps/${app}/build-configs/rotating`, { token: master })).status).toBe(204);
    expect((await api.call('GET', `/apps/${app}/build-configs/rotating`, { token: master })).status).toBe(404);
  });
});

describe('dispatch', () => {
  it('the same config lands on the same agent, its rendezvous home; ten configs spread over the three', async () => {
    await clearQueues();
    const first = await createConfig('affine');
    const runs = [await startRun('affine'), await startRun('affine')];
    const home = rank(
      first.id,
      agentIds.map((id) => ({ id, weight: 2 })),
    )[0]?.id;
    for (const run of runs) {
      expect(run.placement).toEqual({ agentId: home, rank: 1, reason: 'affinity' });
      const job = await queue(home as string).getJob(run.id);
      expect(job?.data).toEqual({ runId: run.id, attempt: 1 });
    }
    const homes = new Set<string>();
    for (let i = 0; i < 10; i++) {
      await clearQueues();
      const c = await createConfig(`spread-${i}`);
      const run = await startRun(`spread-${i}`);
      expect(run.placement?.agentId).toBe(
        rank(
          c.id,
          agentIds.map((id) => ({ id, weight: 2 })),
        )[0]?.id,
      );
      homes.add(run.placement?.agentId as string);
    }
    expect(homes.size).toBeGreaterThanOrEqual(2);
    const listed = await api.call('GET', `/apps/${app}/build-configs/affine/runs?limit=1`, { token: reporter });
    expect(listed.json.items.map((r: BuildRun) => r.number)).toEqual([2]);
    const rest = await api.call('GET', `/apps/${app}/build-configs/affine/runs?cursor=${listed.json.next}`, {
      token: reporter,
    });
    expect(rest.json.items.map((r: BuildRun) => r.number)).toEqual([1]);
  });

  it('spills to the next agent when the home queue holds 2 × slots waiting jobs', async () => {
    await clearQueues();
    await createConfig('deep');
    const placed: BuildRun[] = [];
    for (let i = 0; i < 5; i++) placed.push(await startRun('deep'));
    const home = placed[0]?.placement?.agentId;
    expect(placed.slice(0, 4).every((r) => r.placement?.agentId === home && r.placement?.reason === 'affinity')).toBe(
      true,
    );
    expect(placed[4]?.placement).toMatchObject({ rank: 2, reason: 'spill' });
    expect(placed[4]?.placement?.agentId).not.toBe(home);
    expect(await queue(placed[4]?.placement?.agentId as string).getJob(placed[4]?.id as string)).toBeTruthy();
  });

  it('a run by hand may name its image tag instead of the template; a bad tag is a 400 naming it', async () => {
    await clearQueues();
    await createConfig('release');
    const res = await api.call('POST', `/apps/${app}/build-configs/release/runs`, {
      token: developer,
      body: { ref: 'main', tag: 'v1.2.0' },
    });
    expect(res.status, JSON.stringify(res.json)).toBe(201);
    expect(res.json.image).toEqual({ repository: `${group}/shop`, tag: 'v1.2.0', digest: null });
    const bad = await api.call('POST', `/apps/${app}/build-configs/release/runs`, {
      token: developer,
      body: { tag: '-nope' },
    });
    expect(bad.status).toBe(400);
    expect(bad.json.errors).toEqual([expect.objectContaining({ path: '$.tag' })]);
  });

  it('cancelling a waiting run takes its job off the queue', async () => {
    await clearQueues();
    await createConfig('cancel-me');
    const run = await startRun('cancel-me');
    const res = await api.call('POST', `/builds/${run.id}/cancel`, { token: developer });
    expect(res.status).toBe(200);
    expect(res.json).toMatchObject({ requested: false, build: { state: 'cancelled' } });
    expect(await queue(run.placement?.agentId as string).getJob(run.id)).toBeUndefined();
    expect((await api.call('POST', `/builds/${run.id}/cancel`, { token: developer })).status).toBe(409);
    expect((await api.call('POST', `/builds/${run.id}/cancel`, { token: reporter })).status).toBe(403);
    const retried = await api.call('POST', `/builds/${run.id}/retry`, { token: developer });
    expect(retried.status).toBe(200);
    expect(retried.json).toMatchObject({ attempt: 2, state: 'queued', history: [{ attempt: 1, state: 'cancelled' }] });
    const job = await queue(retried.json.placement.agentId).getJob(run.id);
    expect(job?.data).toEqual({ runId: run.id, attempt: 2 });
  });

  it('cancelling an active run asks its agent on the agent cancel subject', async () => {
    await clearQueues();
    await createConfig('cancel-active');
    const run = await startRun('cancel-active');
    const agentId = run.placement?.agentId as string;
    const nats = await NatsClient.connect({
      servers: (regionEnv().NATS_URL ?? '').split(','),
      name: 'cancel-test',
      ...regionCredentials().nats,
    });
    const sub = nats.connection.subscribe(builderCancelSubject(api.subjectRoot, agentId), { max: 1 });
    await nats.connection.flush();
    const connection = new Redis(regionEnv().REDIS_URL as string, {
      maxRetriesPerRequest: null,
      ...regionCredentials().redis,
    });
    let took!: () => void;
    const taken = new Promise<void>((r) => {
      took = r;
    });
    const worker = new Worker(
      buildQueueName(region, agentId),
      async () => {
        took();
        await new Promise((r) => setTimeout(r, 5000));
      },
      { connection, lockDuration: 10_000 },
    );
    worker.on('error', () => undefined);
    try {
      await taken;
      const res = await api.call('POST', `/builds/${run.id}/cancel`, { token: developer });
      expect(res.status).toBe(202);
      expect(res.json).toMatchObject({ requested: true, build: { id: run.id } });
      for await (const m of sub) {
        expect(JSON.parse(m.string())).toEqual({ runId: run.id, attempt: 1 });
        break;
      }
    } finally {
      await worker.close(true).catch(() => undefined);
      connection.disconnect();
      await nats.drain();
    }
  });

  it("moves an agent's waiting jobs to the next agent when its lease goes", async () => {
    await clearQueues();
    await createConfig('rehomed');
    const run = await startRun('rehomed');
    const home = run.placement?.agentId as string;
    await unregister(home);
    const moved = await waitFor(
      async () => {
        const r = await getRun(run.id);
        return r.placement && r.placement.agentId !== home ? r : undefined;
      },
      { timeoutMs: 15_000, message: 'the run moves off the lost agent' },
    );
    expect(moved.placement?.reason).toBe('rehome');
    expect(await queue(home).getJob(run.id)).toBeUndefined();
    expect((await queue(moved.placement?.agentId as string).getJob(run.id))?.data).toEqual({
      runId: run.id,
      attempt: 1,
    });
    await register(home);
  });

  it('an active job of a lost agent fails as agent-lost once its lock expired, and attempt 2 runs elsewhere', async () => {
    await clearQueues();
    await createConfig('lost');
    const run = await startRun('lost');
    const home = run.placement?.agentId as string;
    // The agent takes the job, as builder-agent's worker does, then dies: its connection goes
    // and its lock is not renewed.
    const connection = new Redis(regionEnv().REDIS_URL as string, {
      maxRetriesPerRequest: null,
      ...regionCredentials().redis,
    });
    connection.on('error', () => undefined);
    let took!: () => void;
    const taken = new Promise<void>((r) => {
      took = r;
    });
    const worker = new Worker(
      buildQueueName(region, home),
      async (job) => {
        // Earlier tests' runs may be queued here too (the dispatcher re-adds the jobs of placed
        // runs that clearQueues() took away): this "agent" finishes those at once and crashes
        // on this test's run only.
        if (job.id !== run.id) return;
        took();
        await new Promise(() => undefined);
      },
      // Long enough that a loaded machine still renews it until the "crash" below.
      { connection, lockDuration: 5000, autorun: true },
    );
    worker.on('error', () => undefined);
    await taken;
    connection.disconnect();
    await unregister(home);
    let last: unknown;
    const retried = await waitFor(
      async () => {
        const r = await getRun(run.id);
        last = r;
        return r.attempt === 2 && r.placement ? r : undefined;
      },
      { timeoutMs: 60_000, message: 'attempt 2 is queued on another agent' },
    ).catch(async (err) => {
      // What the dispatcher saw: the run, the lost agent's queue, the API's warnings.
      const q = queue(home);
      const counts = await q.getJobCounts('active', 'waiting', 'delayed', 'failed', 'completed');
      throw new Error(
        `${(err as Error).message}\nrun: ${JSON.stringify(last)}\nqueue ${home}: ${JSON.stringify(counts)}\napi logs: ${api.logs().slice(-4000)}`,
      );
    });
    expect(retried.state).toBe('queued');
    expect(retried.placement?.agentId).not.toBe(home);
    expect(retried.history?.[0]).toMatchObject({ attempt: 1, state: 'failed', reason: 'agent-lost' });
    expect((await queue(retried.placement?.agentId as string).getJob(run.id))?.data).toEqual({
      runId: run.id,
      attempt: 2,
    });
    const feed = await api.call('GET', `/apps/${app}/events?limit=200`, { token: owner });
    const failed = (feed.json?.items ?? []).find(
      (e: { kind: string; action: string; resourceName?: string }) =>
        e.kind === 'build' && e.action === 'failed' && e.resourceName === run.id,
    );
    expect(failed?.data).toMatchObject({ attempt: 1, reason: 'agent-lost' });
    await worker.close(true).catch(() => undefined);
    await register(home);
  });

  it('a run with no agent live waits unplaced, and is dispatched when an agent registers', async () => {
    await clearQueues();
    await createConfig('patient');
    for (const id of agentIds) await unregister(id);
    const run = await startRun('patient');
    expect(run.state).toBe('queued');
    expect(run.placement).toBeNull();
    await register('agent-b');
    const placed = await waitFor(async () => (await getRun(run.id)).placement ?? undefined, {
      timeoutMs: 15_000,
      message: 'the run is placed when an agent registers',
    });
    expect(placed.agentId).toBe('agent-b');
    expect(await queue('agent-b').getJob(run.id)).toBeTruthy();
    await register('agent-a');
    await register('agent-c');
  });
});

describe('autoDeploy', () => {
  it("a succeeded run of an autoDeploy config creates the app's next version with its tag", async () => {
    await clearQueues();
    await createConfig('deployer', { autoDeploy: true });
    const run = await startRun('deployer');
    // The agent pushes and confirms the image, then writes the run succeeded (fenced by attempt).
    const store = api.service.runtime.store;
    const stored = await store.get(api.service.runtime.keys.buildRun(run.id), buildRunSchema);
    const at = new Date().toISOString();
    await store.commit([
      {
        op: 'update',
        key: stored?.key as string,
        value: {
          ...stored?.value,
          state: 'succeeded',
          commit: 'a'.repeat(40),
          image: { repository: `${group}/shop`, tag: 'main-aaaaaaa', digest: `sha256:${'b'.repeat(64)}` },
          finishedAt: at,
          updatedAt: at,
        },
        modRevision: stored?.modRevision as number,
      },
    ]);
    const version = await waitFor(
      async () => {
        const res = await api.call('GET', `/apps/${app}/versions`, { token: owner });
        return res.json.items.find((v: { imageTag: string }) => v.imageTag === 'main-aaaaaaa');
      },
      { timeoutMs: 15_000, message: 'autoDeploy creates a version' },
    );
    expect(version).toMatchObject({ imageTag: 'main-aaaaaaa', createdBy: 'b-dev' });
    await waitFor(async () => (await getRun(run.id)).deployedVersion === version.name, {
      message: 'the run records the version it deployed',
    });
  });
});

describe('build logs', () => {
  it('replays then follows over SSE, resumes with Last-Event-ID, and ends with the final state', async () => {
    await createConfig('logged');
    const run = await startRun('logged');
    const nats = await NatsClient.connect({
      servers: (regionEnv().NATS_URL ?? '').split(','),
      name: 'build-log-test',
      ...regionCredentials().nats,
    });
    const subject = `${api.subjectRoot}.builds.${run.id}.log`;
    const batch = (seq: number, text: string): BuildLogBatch => ({
      runId: run.id,
      attempt: 1,
      step: 'clone',
      seq,
      lines: [{ ts: new Date().toISOString(), stream: 'stdout', text }],
    });
    try {
      await nats.js.publish(subject, JSON.stringify(batch(1, 'line one')));
      await nats.js.publish(subject, JSON.stringify(batch(2, 'line two')));
      expect((await api.call('GET', `/builds/${run.id}/logs`, { token: other })).status).toBe(404);

      const sse = await openSse(`/builds/${run.id}/logs`, reporter);
      const first = await sse.next((events) => events.filter((e) => e.event === 'log').length >= 2);
      const ids = first.filter((e) => e.event === 'log').map((e) => Number(e.id));
      expect(first.map((e) => JSON.parse(e.data).lines[0].text)).toEqual(['line one', 'line two']);
      // Follow: a batch published now arrives on the open stream.
      await nats.js.publish(subject, JSON.stringify(batch(3, 'line three')));
      const followed = await sse.next((events) => events.some((e) => e.data.includes('line three')));
      expect(followed.some((e) => e.data.includes('line three'))).toBe(true);
      sse.close();

      // Resume after the first event: the second and third only.
      const resumed = await openSse(`/builds/${run.id}/logs`, reporter, String(ids[0]));
      const again = await resumed.next((events) => events.filter((e) => e.event === 'log').length >= 2);
      expect(again.map((e) => JSON.parse(e.data).lines[0].text)).toEqual(['line two', 'line three']);
      // The run ends (as its agent writes it): the stream ends with the final state.
      const store = api.service.runtime.store;
      const stored = await store.get(api.service.runtime.keys.buildRun(run.id), buildRunSchema);
      await store.commit([
        {
          op: 'update',
          key: stored?.key as string,
          value: { ...stored?.value, state: 'failed', reason: 'compile failed' },
          modRevision: stored?.modRevision as number,
        },
      ]);
      const end = await resumed.next((events) => events.some((e) => e.event === 'end'));
      expect(JSON.parse(end.find((e) => e.event === 'end')?.data as string)).toMatchObject({
        state: 'failed',
        reason: 'compile failed',
      });
      // …and the server closes it.
      await resumed.ended();

      const text = await api.call('GET', `/builds/${run.id}/logs?follow=false`, { token: reporter });
      expect(text.status).toBe(200);
      expect(text.body).toBe('[clone] line one\n[clone] line two\n[clone] line three\n');
    } finally {
      await nats.drain();
    }
  });
});

type SseEvent = { id?: string; event: string; data: string };

/** An SSE reader over fetch: `next(until)` collects the events that arrive until `until` holds. */
async function openSse(path: string, token: string, lastEventId?: string) {
  const controller = new AbortController();
  const res = await fetch(`${api.url}/api/v1${path}`, {
    headers: { authorization: `Bearer ${token}`, ...(lastEventId ? { 'last-event-id': lastEventId } : {}) },
    signal: controller.signal,
  });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let ended = false;
  const pending: SseEvent[] = [];
  async function pump(): Promise<boolean> {
    const { value, done: streamDone } = await reader.read();
    if (streamDone) {
      ended = true;
      return false;
    }
    buffer += decoder.decode(value, { stream: true });
    for (let i = buffer.indexOf('\n\n'); i >= 0; i = buffer.indexOf('\n\n')) {
      const block = buffer.slice(0, i);
      buffer = buffer.slice(i + 2);
      const event: SseEvent = { event: 'message', data: '' };
      let any = false;
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        const [field, ...rest] = line.split(':');
        const value = rest.join(':').replace(/^ /, '');
        any = true;
        if (field === 'id') event.id = value;
        else if (field === 'event') event.event = value;
        else if (field === 'data') event.data += value;
      }
      if (any) pending.push(event);
    }
    return true;
  }
  return {
    /** Resolves once the server has closed the stream. */
    async ended(): Promise<void> {
      const deadline = Date.now() + 15_000;
      while (!ended) {
        if (Date.now() > deadline) throw new Error('SSE: the server did not close the stream');
        await pump();
      }
    },
    async next(until: (events: SseEvent[]) => boolean): Promise<SseEvent[]> {
      const deadline = Date.now() + 15_000;
      while (!until(pending)) {
        if (ended || Date.now() > deadline) throw new Error(`SSE: condition not met; got ${JSON.stringify(pending)}`);
        await pump();
      }
      return pending.splice(0);
    },
    close() {
      controller.abort();
    },
  };
}
