import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { readEvents } from '@berth/shared/nats';
import { waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  docker,
  gitRepo,
  logText,
  manifestStatus,
  openWorld,
  putConfig,
  queueRun,
  readLog,
  shellImage,
  startAgent,
  type World,
  waitForState,
} from './harness.ts';

let world: World;
let agent: Awaited<ReturnType<typeof startAgent>>;

beforeAll(async () => {
  world = await openWorld();
  agent = await startAgent(world, { BUILDER_SLOTS: '2' });
});

afterAll(async () => {
  await agent?.service.stop();
  await world?.close();
});

describe('a build from a local bare repository', () => {
  test('clones the exact commit, builds, pushes, and confirms the digest in the registry', async () => {
    const repo = gitRepo(world, {
      Dockerfile: 'FROM scratch\nCOPY hello.txt /hello.txt\n',
      'hello.txt': 'hello from berth\n',
    });
    const config = await putConfig(world, { git: { url: repo.url, branch: 'main' } });
    const incarnation = randomUUID();
    await world.etcd.put(world.keys.app('shop')).value(JSON.stringify({ name: 'shop', incarnation }));
    const queued = await queueRun(world, config, agent.id);

    const run = await waitForState(world, queued.id, ['succeeded', 'failed', 'cancelled']);
    expect(run.reason).toBeNull();
    expect(run.state).toBe('succeeded');
    expect(run.commit).toBe(repo.commit);
    const tag = `main-${repo.commit.slice(0, 7)}-${run.number}`;
    // The repository as Berth names it (an app's image), without the registry's address.
    expect(run.image).toEqual({
      repository: config.target,
      tag,
      digest: expect.stringMatching(/^sha256:[0-9a-f]{64}$/),
    });
    expect(await manifestStatus(world, config.target, run.image?.digest ?? '')).toBe(200);
    // Every step has its times; compile is skipped without a compile image.
    expect(run.steps.map((s) => [s.name, s.state])).toEqual([
      ['clone', 'succeeded'],
      ['compile', 'skipped'],
      ['build', 'succeeded'],
      ['push', 'succeeded'],
    ]);
    for (const step of run.steps.filter((s) => s.state === 'succeeded')) {
      expect(step.startedAt).not.toBeNull();
      expect(step.finishedAt).not.toBeNull();
      expect(step.durationMs).toBeGreaterThanOrEqual(0);
    }
    expect(run.finishedAt).not.toBeNull();

    // The log: batches in order, each stamped with its step, Docker's own output included.
    const batches = await readLog(world, run.id);
    expect(batches.map((b) => b.seq)).toEqual(batches.map((_, i) => i + 1));
    const stepOrder = ['clone', 'compile', 'build', 'push'];
    const steps = batches.map((b) => stepOrder.indexOf(b.step));
    expect(steps).toEqual([...steps].sort((a, b) => a - b));
    const text = logText(batches);
    expect(text).toMatch(/\[build\] Step 2\/\d+ : COPY hello.txt \/hello.txt/);
    expect(text).toContain(`[push] confirmed ${config.target}@${run.image?.digest}`);

    // A `build` event per state, through the outbox, by the agent.
    const events = await waitFor(
      async () => {
        const got = await readEvents(world.nats.js, world.subjects, { filter: world.subjects.kind('build') });
        const mine = got.filter((e) => e.event.resourceName === run.id);
        return mine.length >= 4 ? mine : undefined;
      },
      { message: 'build events' },
    );
    expect(events.map((e) => e.event.action)).toEqual(['cloning', 'building', 'pushing', 'succeeded']);
    expect(events[3]?.event).toMatchObject({
      kind: 'build',
      resourceId: 'shop',
      incarnation,
      actor: { type: 'service', name: 'builder-agent' },
      data: { runId: run.id, attempt: 1, state: 'succeeded', commit: repo.commit, image: run.image },
    });

    // Metrics: builds by result, step durations.
    const metrics = await waitFor(async () => {
      const text = await (await fetch(`${agent.service.runtime.http.url}/metrics`)).text();
      return /berth_builder_builds_total\{result="succeeded"[^}]*\} [1-9]/.test(text) ? text : undefined;
    });
    expect(metrics).toMatch(/berth_builder_step_duration_seconds_count\{[^}]*step="push"[^}]*\} [1-9]/);
    expect(metrics).toMatch(/berth_builder_active_builds\{[^}]*\} 0/);

    const image = await docker.getImage(`${world.registry}/${run.image?.repository}:${tag}`).inspect();
    expect(image.Config.Labels?.['berth.commit']).toBe(repo.commit);
  });

  test('a branch moved on: the second run builds the new commit, from the same mirror', async () => {
    const repo = gitRepo(world, { Dockerfile: 'FROM scratch\nCOPY a.txt /a.txt\n', 'a.txt': 'one\n' });
    const config = await putConfig(world, { git: { url: `file://${repo.url}`, branch: 'main' }, tag: '{sha}' });
    const first = await waitForState(world, (await queueRun(world, config, agent.id)).id, ['succeeded', 'failed']);
    expect(first.state).toBe('succeeded');
    writeFileSync(`${repo.work}/a.txt`, 'two\n');
    const env = {
      ...process.env,
      GIT_AUTHOR_NAME: 't',
      GIT_AUTHOR_EMAIL: 't@t',
      GIT_COMMITTER_NAME: 't',
      GIT_COMMITTER_EMAIL: 't@t',
    };
    execFileSync('git', ['commit', '-qam', 'two'], { cwd: repo.work, env });
    execFileSync('git', ['push', '-q', 'origin', 'main'], { cwd: repo.work, env });
    const second = await waitForState(world, (await queueRun(world, config, agent.id)).id, ['succeeded', 'failed']);
    expect(second.state).toBe('succeeded');
    expect(second.commit).not.toBe(first.commit);
    expect(second.image?.tag).toBe(second.commit);
  });

  test('COPY of a missing file fails the build step with Docker’s message in the run and the log', async () => {
    const repo = gitRepo(world, { Dockerfile: 'FROM scratch\nCOPY missing.txt /missing.txt\n', 'a.txt': 'a\n' });
    const config = await putConfig(world, { git: { url: repo.url, branch: 'main' } });
    const run = await waitForState(world, (await queueRun(world, config, agent.id)).id, ['succeeded', 'failed']);
    expect(run.state).toBe('failed');
    const build = run.steps.find((s) => s.name === 'build');
    expect(build?.state).toBe('failed');
    expect(build?.error).toMatch(/missing\.txt/);
    expect(run.reason).toMatch(/missing\.txt/);
    expect(run.steps.find((s) => s.name === 'push')?.state).toBe('pending');
    expect(run.image).toBeNull();
    const text = logText(await readLog(world, run.id));
    expect(text).toMatch(/\[build\] .*missing\.txt/);
  });

  test('a failing RUN fails the build step with its exit code in the run and the log', async () => {
    const shell = await shellImage();
    const repo = gitRepo(world, { Dockerfile: `FROM ${shell}\nRUN echo about to fail && exit 3\n` });
    const config = await putConfig(world, { git: { url: repo.url, branch: 'main' } });
    const run = await waitForState(world, (await queueRun(world, config, agent.id)).id, ['succeeded', 'failed']);
    expect(run.state).toBe('failed');
    expect(run.steps.find((s) => s.name === 'build')?.error).toMatch(/returned a non-zero code: 3/);
    const text = logText(await readLog(world, run.id));
    expect(text).toContain('[build] about to fail');
    expect(text).toMatch(/\[build\] .*non-zero code: 3/);
  });

  test('a ref that does not exist fails the clone step', async () => {
    const repo = gitRepo(world, { Dockerfile: 'FROM scratch\n' });
    const config = await putConfig(world, { git: { url: repo.url, branch: 'main' } });
    const run = await waitForState(world, (await queueRun(world, config, agent.id, { ref: 'nope' })).id, [
      'succeeded',
      'failed',
    ]);
    expect(run.state).toBe('failed');
    expect(run.steps.find((s) => s.name === 'clone')?.error).toMatch(/ref "nope"/);
  });
});
