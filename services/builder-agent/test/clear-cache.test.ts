/**
 * Clearing a config's cache, as the API asks it: a NATS request on `{root}.agents.clear-cache`
 * answered by a real agent process. A cache no build holds is gone at once; one a build holds is
 * dropped when that build ends.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { builderClearCacheSubject, type ClearCacheReply, clearCacheReplySchema } from '@berth/shared/builds';
import { exited, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  type AgentProcess,
  gitRepo,
  openWorld,
  putConfig,
  queueRun,
  shellImage,
  spawnAgent,
  type World,
  waitForState,
  waitLogged,
} from './harness.ts';

let world: World;
let shell: string;
let agent: AgentProcess;

beforeAll(async () => {
  world = await openWorld();
  shell = await shellImage();
  agent = await spawnAgent(world);
  await waitFor(() => agent.ready(), { timeoutMs: 30_000, message: 'the agent ready' });
});

afterAll(async () => {
  if (agent && agent.child.exitCode === null && agent.child.signalCode === null) {
    agent.child.kill('SIGTERM');
    await exited(agent.child);
  }
  await world?.close();
});

/** What the API sends; the first answer (one agent here). */
async function clearCache(configId: string): Promise<ClearCacheReply> {
  const msg = await world.nats.connection.request(
    builderClearCacheSubject(world.subjectRoot),
    JSON.stringify({ configId, by: 'admin' }),
    { timeout: 10_000 },
  );
  return clearCacheReplySchema.parse(msg.json());
}

/** A config whose compile step leaves a dependency in the cache (`$HOME/.m2`), then runs `then`. */
async function cachedConfig(then = 'true') {
  const repo = gitRepo(world, { Dockerfile: 'FROM scratch\nCOPY out.txt /out.txt\n', 'src.txt': 'source\n' });
  return putConfig(world, {
    git: { url: repo.url, branch: 'main' },
    cache: true,
    compile: {
      image: shell,
      script: [
        'set -e',
        'cd /workspace',
        'mkdir -p "$HOME/.m2" && head -c 65536 /dev/zero > "$HOME/.m2/dep.jar"',
        'cat src.txt > out.txt',
        then,
      ].join('\n'),
    },
  });
}

describe('clearing a config cache', () => {
  test('after a build the request frees the cache: the agent answers what it freed and the dir is gone', async () => {
    const config = await cachedConfig();
    const run = await waitForState(world, (await queueRun(world, config, agent.id)).id, ['succeeded', 'failed']);
    expect(run.reason).toBeNull();
    const cacheDir = join(agent.dataDir, 'cache', config.id);
    expect(existsSync(join(cacheDir, 'home/.m2/dep.jar'))).toBe(true);

    const reply = await clearCache(config.id);
    expect(reply.agentId).toBe(agent.id);
    expect(reply.freedBytes).toBeGreaterThanOrEqual(65536);
    expect(reply.deferred).toBe(false);
    expect(existsSync(cacheDir)).toBe(false);
    // The log line reaches this process through the agent's stdout, maybe after the reply.
    await waitFor(() => agent.output().includes('"msg":"cache cleared"'), { message: 'the agent logs the clear' });
    const metrics = await (await fetch(`http://127.0.0.1:${agent.port}/metrics`)).text();
    expect(metrics).toMatch(/^berth_builder_cache_clears_total\{[^}]*deferred="false"[^}]*\} 1$/m);

    // The next build of the config starts cold.
    const next = await waitForState(world, (await queueRun(world, config, agent.id)).id, ['succeeded', 'failed']);
    expect(next.cache).toEqual({ enabled: true, hit: false });
    // A config this agent never built: nothing to free.
    expect(await clearCache(`${world.id}cfgnone`)).toEqual({ agentId: agent.id, freedBytes: 0, deferred: false });
  });

  test('a cache a build holds is dropped when that build ends', async () => {
    // The compile step waits for a file the test writes into the cache dir (bind-mounted at /cache).
    const config = await cachedConfig('echo waiting; while [ ! -f /cache/go ]; do sleep 1; done');
    const queued = await queueRun(world, config, agent.id);
    await waitLogged(world, queued.id, '[compile] waiting');
    const cacheDir = join(agent.dataDir, 'cache', config.id);

    const reply = await clearCache(config.id);
    expect(reply).toMatchObject({ agentId: agent.id, deferred: true });
    expect(reply.freedBytes).toBeGreaterThanOrEqual(65536);
    expect(existsSync(join(cacheDir, 'home/.m2/dep.jar'))).toBe(true);

    writeFileSync(join(cacheDir, 'go'), '');
    const run = await waitForState(world, queued.id, ['succeeded', 'failed']);
    expect(run.state).toBe('succeeded');
    await waitFor(() => !existsSync(cacheDir), { timeoutMs: 10_000, message: 'the cache dropped after the build' });
  });
});
