/**
 * Three agents as processes (the service's own entry point), as on three build machines: each
 * registers under its lease with an id from its machine and data dir; a SIGKILLed agent's key
 * is gone within the lease's TTL while the others stay; SIGTERM drains (the active build ends,
 * then the process exits 0 and its key is gone at once); a restart keeps the id.
 */
import { type BuilderRegistration, builderRegistrationSchema } from '@berth/shared/builds';
import { exited, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  type AgentProcess,
  gitRepo,
  openWorld,
  putConfig,
  queueRun,
  shellImage,
  spawnAgent as spawnProcess,
  type World,
  waitForState,
  waitLogged,
} from './harness.ts';

let world: World;
let shell: string;
const agents: AgentProcess[] = [];

async function spawnAgent(dataDir?: string): Promise<AgentProcess> {
  const agent = await spawnProcess(world, dataDir ? { dataDir } : {});
  agents.push(agent);
  return agent;
}

async function registrations(): Promise<Map<string, BuilderRegistration>> {
  const kvs = await world.etcd.getAll().prefix(world.keys.builders(world.regionName)).strings();
  return new Map(
    Object.values(kvs)
      .map((v) => builderRegistrationSchema.parse(JSON.parse(v)))
      .map((r) => [r.id, r]),
  );
}

beforeAll(async () => {
  world = await openWorld();
  shell = await shellImage();
});

afterAll(async () => {
  for (const a of agents) {
    if (a.child.exitCode === null && a.child.signalCode === null) a.child.kill('SIGKILL');
  }
  await world?.close();
});

describe('three agents as processes', () => {
  test('each registers under a lease; a SIGKILLed one is gone within the TTL, the others stay', async () => {
    const three = [await spawnAgent(), await spawnAgent(), await spawnAgent()];
    expect(new Set(three.map((a) => a.id)).size).toBe(3);
    const regs = await waitFor(
      async () => {
        const r = await registrations();
        return r.size === 3 ? r : undefined;
      },
      { timeoutMs: 30_000, message: 'three registrations' },
    );
    for (const a of three) {
      const reg = regs.get(a.id);
      expect(reg).toMatchObject({ id: a.id, region: world.regionName, slots: 2, weight: 2, draining: false });
      expect(reg?.diskFreeBytes).toBeGreaterThan(0);
      await waitFor(() => a.ready(), { message: `${a.id} ready` });
    }
    const leases = await Promise.all(
      three.map(async (a) => (await world.etcd.get(world.keys.builder(world.regionName, a.id)).exec()).kvs[0]?.lease),
    );
    expect(leases.every((l) => l && l !== '0')).toBe(true);

    // A build runs on the second agent; it is killed mid-build.
    const victim = three[1] as AgentProcess;
    const repo = gitRepo(world, { Dockerfile: 'FROM scratch\nCOPY out.txt /out.txt\n', 'src.txt': 'x\n' });
    const config = await putConfig(world, {
      git: { url: repo.url, branch: 'main' },
      compile: { image: shell, script: 'echo started; sleep 120' },
    });
    const run = await queueRun(world, config, victim.id);
    await waitForState(world, run.id, ['compiling'], 30_000);
    const killedAt = Date.now();
    victim.child.kill('SIGKILL');
    await exited(victim.child);
    await waitFor(async () => !(await registrations()).has(victim.id), {
      timeoutMs: 15_000,
      intervalMs: 200,
      message: 'the killed agent’s key expires',
    });
    const gone = Date.now() - killedAt;
    expect(gone).toBeLessThanOrEqual(12_000); // TTL 10 s, plus the watch's slack
    const left = await registrations();
    expect([...left.keys()].sort()).toEqual([three[0]?.id, three[2]?.id].sort());
    // The run stays as the agent left it: moving it is the API dispatcher's work.
    expect((await waitForState(world, run.id, ['compiling'])).attempt).toBe(1);
  });

  test('SIGTERM drains: the active build finishes, the process exits 0, the key goes at once', async () => {
    const agent = await spawnAgent();
    await waitFor(async () => (await registrations()).has(agent.id), { timeoutMs: 30_000 });
    const repo = gitRepo(world, { Dockerfile: 'FROM scratch\nCOPY out.txt /out.txt\n', 'src.txt': 'x\n' });
    const config = await putConfig(world, {
      git: { url: repo.url, branch: 'main' },
      compile: { image: shell, script: 'echo started; sleep 3; cat src.txt > out.txt' },
    });
    const run = await queueRun(world, config, agent.id);
    await waitLogged(world, run.id, '[compile] started');
    agent.child.kill('SIGTERM');
    await waitFor(async () => (await registrations()).get(agent.id)?.draining === true, {
      timeoutMs: 5000,
      intervalMs: 50,
      message: 'draining registered',
    });
    expect(await exited(agent.child)).toBe(0);
    expect((await waitForState(world, run.id, ['succeeded', 'failed'])).state).toBe('succeeded');
    expect((await registrations()).has(agent.id)).toBe(false);

    // The same machine and data dir come back as the same agent.
    const again = await spawnAgent(agent.dataDir);
    expect(again.id).toBe(agent.id);
    await waitFor(async () => (await registrations()).get(again.id)?.draining === false, { timeoutMs: 30_000 });
    again.child.kill('SIGTERM');
    expect(await exited(again.child)).toBe(0);
  });
});
