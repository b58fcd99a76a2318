import { builderCancelSubject } from '@berth/shared/builds';
import { waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  addJob,
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
  waitForState,
  waitLogged,
} from './harness.ts';

let world: World;
let agent: Awaited<ReturnType<typeof startAgent>>;
let shell: string;

beforeAll(async () => {
  world = await openWorld();
  shell = await shellImage();
  agent = await startAgent(world, { BUILDER_SLOTS: '2' });
});

afterAll(async () => {
  await agent?.service.stop();
  await world?.close();
});

/** A repository whose Dockerfile copies what the compile step made. */
function compiledRepo() {
  return gitRepo(world, {
    Dockerfile: 'FROM scratch\nCOPY out.txt /out.txt\n',
    'src.txt': 'source\n',
  });
}

const CACHE_SCRIPT = [
  'set -e',
  'test -d /workspace && cd /workspace',
  'if [ -f "$HOME/.m2/dep.jar" ]; then echo "dependency from cache"; else echo "downloading dependency"; mkdir -p "$HOME/.m2"; echo jar > "$HOME/.m2/dep.jar"; fi',
  'cat src.txt > out.txt',
].join('\n');

/** What the API sends to cancel an active run: `{runId, attempt}` on the agent's cancel subject. */
function cancel(runId: string, attempt = 1): void {
  world.nats.connection.publish(builderCancelSubject(world.subjectRoot, agent.id), JSON.stringify({ runId, attempt }));
}

async function compileContainers(runId: string) {
  return (await docker.listContainers({ all: true, filters: { label: ['berth.build'] } })).filter((c) =>
    c.Labels['berth.build']?.includes(runId),
  );
}

describe('the compile step', () => {
  test('the second run of a config with its cache on is a cache hit and finds what the first left', async () => {
    const repo = compiledRepo();
    const config = await putConfig(world, {
      git: { url: repo.url, branch: 'main' },
      compile: { image: shell, script: CACHE_SCRIPT },
      cache: true,
    });
    const first = await waitForState(world, (await queueRun(world, config, agent.id)).id, ['succeeded', 'failed']);
    expect(first.reason).toBeNull();
    expect(first.state).toBe('succeeded');
    expect(first.cache).toEqual({ enabled: true, hit: false });
    const compile = first.steps.find((s) => s.name === 'compile');
    expect(compile?.state).toBe('succeeded');
    expect(compile?.durationMs).toBeGreaterThanOrEqual(0);
    expect(logText(await readLog(world, first.id))).toContain('[compile] downloading dependency');

    const second = await waitForState(world, (await queueRun(world, config, agent.id)).id, ['succeeded', 'failed']);
    expect(second.state).toBe('succeeded');
    expect(second.cache).toEqual({ enabled: true, hit: true });
    expect(logText(await readLog(world, second.id))).toContain('[compile] dependency from cache');
    expect(await compileContainers(second.id)).toEqual([]);
  });

  test('with the cache off every run starts empty', async () => {
    const repo = compiledRepo();
    const config = await putConfig(world, {
      git: { url: repo.url, branch: 'main' },
      compile: { image: shell, script: CACHE_SCRIPT },
      cache: false,
    });
    for (let i = 0; i < 2; i++) {
      const run = await waitForState(world, (await queueRun(world, config, agent.id)).id, ['succeeded', 'failed']);
      expect(run.state).toBe('succeeded');
      expect(run.cache).toEqual({ enabled: false, hit: false });
      expect(logText(await readLog(world, run.id))).toContain('[compile] downloading dependency');
    }
  });

  test('a compile script that exits non-zero fails the compile step with its output in the log', async () => {
    const repo = compiledRepo();
    const config = await putConfig(world, {
      git: { url: repo.url, branch: 'main' },
      compile: { image: shell, script: 'echo compiling; echo "error: no such symbol" >&2; exit 2' },
    });
    const run = await waitForState(world, (await queueRun(world, config, agent.id)).id, ['succeeded', 'failed']);
    expect(run.state).toBe('failed');
    expect(run.steps.find((s) => s.name === 'compile')?.error).toMatch(/exited with 2/);
    expect(run.steps.find((s) => s.name === 'build')?.state).toBe('pending');
    const text = logText(await readLog(world, run.id));
    expect(text).toContain('[compile] compiling');
    expect(text).toContain('[compile] error: no such symbol');
  });

  test('cancel of an active run kills its container and marks it cancelled', async () => {
    const repo = compiledRepo();
    const config = await putConfig(world, {
      git: { url: repo.url, branch: 'main' },
      compile: { image: shell, script: 'echo started; sleep 120' },
    });
    const queued = await queueRun(world, config, agent.id);
    await waitLogged(world, queued.id, '[compile] started');
    const started = Date.now();
    cancel(queued.id);
    const run = await waitForState(world, queued.id, ['cancelled', 'failed', 'succeeded'], 15_000);
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(run.state).toBe('cancelled');
    expect(run.steps.find((s) => s.name === 'compile')?.state).toBe('cancelled');
    expect(run.finishedAt).not.toBeNull();
    await waitFor(async () => (await compileContainers(queued.id)).length === 0, { message: 'container removed' });
  });

  test('a cancel for another attempt of the run is ignored', async () => {
    const repo = compiledRepo();
    const config = await putConfig(world, {
      git: { url: repo.url, branch: 'main' },
      compile: { image: shell, script: 'echo started; sleep 1; cat src.txt > out.txt' },
    });
    const queued = await queueRun(world, config, agent.id);
    await waitLogged(world, queued.id, '[compile] started');
    cancel(queued.id, 7);
    expect((await waitForState(world, queued.id, ['cancelled', 'failed', 'succeeded'])).state).toBe('succeeded');
  });

  test('a stale attempt cannot overwrite a newer one: the agent stops and writes nothing more', async () => {
    const repo = compiledRepo();
    const config = await putConfig(world, {
      git: { url: repo.url, branch: 'main' },
      compile: { image: shell, script: 'echo started; sleep 120' },
    });
    const queued = await queueRun(world, config, agent.id);
    await waitLogged(world, queued.id, '[compile] started');
    // The API re-queues the run as attempt 2 (to another agent, say) while attempt 1 runs here.
    const current = await getRun(world, queued.id);
    const attempt2 = {
      ...current,
      attempt: 2,
      state: 'queued' as const,
      steps: [],
      updatedAt: new Date().toISOString(),
    };
    await world.etcd.put(world.keys.buildRun(queued.id)).value(JSON.stringify(attempt2));

    // Attempt 1 stops: its container goes, and the run keeps attempt 2's record untouched.
    await waitFor(async () => (await compileContainers(queued.id)).length === 0, {
      timeoutMs: 15_000,
      message: 'attempt 1 stopped',
    });
    await waitLogged(world, queued.id, 'stopped: the run is at attempt 2', 5000);
    const after = await getRun(world, queued.id);
    expect(after).toEqual(attempt2);

    // And a job for attempt 1 that arrives late is dropped as stale.
    const revision = (await world.etcd.get(world.keys.buildRun(queued.id)).exec()).kvs[0]?.mod_revision;
    await addJob(world, agent.id, { runId: `${queued.id}`, attempt: 1 }).catch(() => undefined);
    await waitFor(() => agent.logs().includes('stale job dropped'), { timeoutMs: 10_000 });
    expect((await world.etcd.get(world.keys.buildRun(queued.id)).exec()).kvs[0]?.mod_revision).toBe(revision);
  });

  test('a step past its timeout fails the run, naming the step, and its container goes', async () => {
    const quick = await startAgent(world, { BUILD_COMPILE_TIMEOUT: '1s' });
    try {
      const repo = compiledRepo();
      const config = await putConfig(world, {
        git: { url: repo.url, branch: 'main' },
        compile: { image: shell, script: 'echo started; sleep 60' },
      });
      const run = await waitForState(
        world,
        (await queueRun(world, config, quick.id)).id,
        ['failed', 'succeeded'],
        20_000,
      );
      expect(run.state).toBe('failed');
      expect(run.reason).toBe('timeout: the compile step took longer than 1s');
      const step = run.steps.find((s) => s.name === 'compile');
      expect(step?.state).toBe('failed');
      expect(step?.durationMs).toBeGreaterThanOrEqual(1000);
      await waitFor(async () => (await compileContainers(run.id)).length === 0, { message: 'container removed' });
    } finally {
      await quick.service.stop();
    }
  });

  test('cancel during docker build aborts the build request and marks the run cancelled', async () => {
    const repo = gitRepo(world, { Dockerfile: `FROM ${shell}\nRUN echo building && sleep 120\n` });
    const config = await putConfig(world, { git: { url: repo.url, branch: 'main' } });
    const queued = await queueRun(world, config, agent.id);
    await waitLogged(world, queued.id, '[build] building');
    const started = Date.now();
    cancel(queued.id);
    const run = await waitForState(world, queued.id, ['cancelled', 'failed', 'succeeded'], 15_000);
    expect(run.state).toBe('cancelled');
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(run.steps.find((s) => s.name === 'build')?.state).toBe('cancelled');
    // dockerd cancelled the build when the request closed: its RUN container goes away.
    await waitFor(
      async () => {
        const running = await docker.listContainers({ filters: { status: ['running'] } });
        return !running.some((c) => c.Command.includes('echo building && sleep 120'));
      },
      { timeoutMs: 20_000, message: 'build container stopped' },
    );
  });

  test('stopping the agent past its drain time aborts the active build as agent-shutdown', async () => {
    const short = await startAgent(world, { SHUTDOWN_TIMEOUT: '3s' });
    const repo = compiledRepo();
    const config = await putConfig(world, {
      git: { url: repo.url, branch: 'main' },
      compile: { image: shell, script: 'echo started; sleep 120' },
    });
    const queued = await queueRun(world, config, short.id);
    await waitLogged(world, queued.id, '[compile] started');
    await short.service.stop();
    const run = await getRun(world, queued.id);
    expect(run.state).toBe('failed');
    expect(run.reason).toMatch(/^agent-shutdown/);
    expect(await compileContainers(queued.id)).toEqual([]);
  });
});
