import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EventSubjects, NatsClient, readEvents } from '@berth/shared/nats';
import { cellPullCredential } from '@berth/shared/registry';
import { REPO_ROOT, regionCredentials, uniqueId, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  appRecord,
  cells,
  cellWrites,
  cellWritesOf,
  cordon,
  deleteNamespaces,
  deploymentsIn,
  env,
  placement,
  pullSecretIn,
  putApp,
  sampleAvailable,
  scale,
  spawnScheduler,
  startScheduler,
  versionRecord,
  type World,
  waitAvailable,
  world,
} from './harness.ts';

let w: World;
let scheduler: Awaited<ReturnType<typeof startScheduler>>;
const apps: string[] = [];
const appName = (base: string) => {
  const name = `${base}-${uniqueId(6)}`;
  apps.push(name);
  return name;
};

/*
 * The cells key, as a file (REGISTRY_PULL_KEY_FILE, the way make up hands it over): every app
 * namespace gets its cell's pull Secret. The test's key is not the region's, so what is asserted
 * is the Secret: a token-auth registry (make up's) refuses its credential, so the cells must hold
 * the sample images already. beforeAll pulls them anonymously (the group `berth` is public).
 */
const keyDir = mkdtempSync(join(tmpdir(), 'berth-pull-key-'));
let pullKey = randomBytes(32);
const pullKeyFile = join(keyDir, 'cells.key');
const pull = { REGISTRY_PULL_KEY_FILE: pullKeyFile };
writeFileSync(pullKeyFile, `${pullKey.toString('hex')}\n`, { mode: 0o600 });

beforeAll(async () => {
  for (const cell of ['cell-a', 'cell-b']) {
    for (const tag of ['v1', 'v2']) {
      execFileSync(
        'ctr',
        [
          '--address',
          join(REPO_ROOT, `.local/run/${cell}-containerd.sock`),
          '--namespace',
          'k8s.io',
          'images',
          'pull',
          '--plain-http',
          `${env.REGISTRY_ADDR ?? '127.0.0.1:5000'}/berth/sample-app:${tag}`,
        ],
        { stdio: 'ignore', timeout: 60_000 },
      );
    }
  }
  w = await world();
  scheduler = await startScheduler(w, pull);
});

afterAll(async () => {
  await scheduler?.service.stop();
  for (const app of apps) await deleteNamespaces(app);
  await w?.close();
  rmSync(keyDir, { recursive: true, force: true });
});

/** Each cell has the app's pull Secret with its own credential, and every Deployment pulls with it. */
async function expectPullSecrets(app: string, key: Buffer): Promise<void> {
  for (const cell of ['cell-a', 'cell-b']) {
    const got = await pullSecretIn(cell, app);
    const want = cellPullCredential(key, w.region, cell);
    expect(got?.type).toBe('kubernetes.io/dockerconfigjson');
    expect(got?.username).toBe(`cell@${w.region}/${cell}`);
    expect(got?.password === want.password, `${cell}'s pull password`).toBe(true);
    expect(Buffer.from(got?.auth ?? '', 'base64').toString() === `${want.username}:${want.password}`).toBe(true);
    const deps = await cells[cell]?.apps.listNamespacedDeployment({ namespace: app });
    expect(deps?.items.length).toBeGreaterThan(0);
    for (const dep of deps?.items ?? []) {
      expect(dep.spec?.template.spec?.imagePullSecrets).toEqual([{ name: 'berth-registry' }]);
      expect(dep.spec?.template.spec?.containers[0]?.image?.startsWith(`${got?.registry}/`)).toBe(true);
    }
  }
}

async function podNames(cell: string, app: string): Promise<string[]> {
  const list = await cells[cell]?.core.listNamespacedPod({ namespace: app });
  return (list?.items ?? []).map((p) => p.metadata?.name as string).sort();
}

describe('placement and apply', () => {
  it('places 4 replicas 2+2 over the two cells; scaling to 5 adds exactly one pod and changes nothing else', async () => {
    const app = appName('spread');
    await putApp(w, appRecord(app), [versionRecord(app, 1, { replicas: 4 })]);
    await waitAvailable(app, 'v1', { 'cell-a': 2, 'cell-b': 2 });
    expect((await placement(w, app, 'v1'))?.cells).toEqual({ 'cell-a': 2, 'cell-b': 2 });
    await expectPullSecrets(app, pullKey);
    const podsBefore = { a: await podNames('cell-a', app), b: await podNames('cell-b', app) };
    const writesBefore = await cellWrites(scheduler.service);

    await scale(w, app, 'v1', 5);
    await waitFor(async () => (await placement(w, app, 'v1'))?.desired === 5, { message: 'placement follows' });
    const five = (await placement(w, app, 'v1'))?.cells ?? {};
    expect(Object.values(five).reduce((a, b) => a + b)).toBe(5);
    await waitAvailable(app, 'v1', five);
    const podsAfter = { a: await podNames('cell-a', app), b: await podNames('cell-b', app) };
    // Every pod that ran still runs, and exactly one is new.
    expect(podsAfter.a).toEqual(expect.arrayContaining(podsBefore.a));
    expect(podsAfter.b).toEqual(expect.arrayContaining(podsBefore.b));
    expect(podsAfter.a.length + podsAfter.b.length).toBe(5);
    // One Deployment changed in one cell: one write (the pull Secrets, unchanged, are not rewritten).
    expect((await cellWrites(scheduler.service)) - writesBefore).toBe(1);
    // Its pods answer HTTP on their pod addresses in cell-a.
    const pods = await cells['cell-a']?.core.listNamespacedPod({ namespace: app });
    const ip = pods?.items[0]?.status?.podIP;
    const res = await fetch(`http://${ip}:8080/`);
    expect(((await res.json()) as { version: string }).version).toBe('v1');
  });

  it('gives a cell with too little free memory fewer replicas, and reports Unschedulable with numbers when nothing fits', async () => {
    const node = (await cells['cell-a']?.core.listNode())?.items[0];
    const allocKi = Number((node?.status?.allocatable?.memory ?? '0Ki').replace('Ki', ''));
    // cell-a and cell-b are alike (one real node each, on this host): a pod outside Berth takes
    // half of cell-a's memory, so one replica fits in what is left of cell-a, three in cell-b.
    const ballast = appName('ballast');
    await cells['cell-a']?.core.createNamespace({ body: { metadata: { name: ballast } } });
    await cells['cell-a']?.core.createNamespacedPod({
      namespace: ballast,
      body: {
        metadata: { name: 'ballast' },
        spec: {
          nodeName: node?.metadata?.name,
          terminationGracePeriodSeconds: 0,
          containers: [
            {
              name: 'ballast',
              image: env.BERTH_SAMPLE_IMAGE ?? '127.0.0.1:5000/berth/sample-app:v1',
              resources: { requests: { memory: `${Math.floor(allocKi / 2)}Ki` } },
            },
          ],
        },
      },
    });
    const memoryMi = Math.floor(allocKi / 1024 / 4) + 64;
    const app = appName('tight');
    try {
      // Running: the scheduler's watch of cell-a's pods saw it (bound at creation) long before.
      await waitFor(
        async () =>
          (await cells['cell-a']?.core.readNamespacedPod({ name: 'ballast', namespace: ballast }))?.status?.phase ===
          'Running',
        { timeoutMs: 60_000, message: 'the ballast pod Running in cell-a' },
      );
      await putApp(w, appRecord(app), [versionRecord(app, 1, { replicas: 4, memory: `${memoryMi}Mi` })]);
      await waitFor(async () => (await placement(w, app, 'v1'))?.cells, { message: 'placed' });
    } finally {
      await cells['cell-a']?.core.deleteNamespacedPod({ name: 'ballast', namespace: ballast, gracePeriodSeconds: 0 });
    }
    const p = await placement(w, app, 'v1');
    expect(p?.cells['cell-a'] ?? 0).toBeLessThan(p?.cells['cell-b'] ?? 0);
    expect((p?.cells['cell-a'] ?? 0) + (p?.cells['cell-b'] ?? 0)).toBe(4);

    const huge = appName('huge');
    await putApp(w, appRecord(huge), [versionRecord(huge, 1, { replicas: 2, memory: '100Ti' })]);
    await waitFor(async () => (await placement(w, huge, 'v1'))?.conditions.find((c) => c.type === 'Unschedulable'), {
      message: 'condition written',
    });
    const u = (await placement(w, huge, 'v1'))?.conditions.find((c) => c.type === 'Unschedulable');
    expect(u?.status).toBe('True');
    expect(u?.message).toMatch(/^placed 0 of 2 replicas: each needs 20m cpu and 100\d*(\.\d)?Ti|100Ti|102400Gi/);
    expect(u?.message).toContain('free in active cells: cell-a');
    expect(await deploymentsIn('cell-b', huge)).toEqual([]);
  });

  it('cordoning cell-b moves its replicas to cell-a without dropping below the ready count; uncordoning spreads them back', async () => {
    const app = appName('move');
    await putApp(w, appRecord(app), [versionRecord(app, 1, { replicas: 4 })]);
    await waitAvailable(app, 'v1', { 'cell-a': 2, 'cell-b': 2 });
    let lowest = 4;
    let lowestAt = '';
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        // A failed read is no sample (it would count a running Deployment as none).
        const got = await sampleAvailable(app, ['v1']);
        if (got && got.total < lowest) {
          lowest = got.total;
          lowestAt = `${new Date().toISOString()} ${JSON.stringify(got.seen)}`;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    await cordon(w, 'cell-b', 'cordoned');
    await waitAvailable(app, 'v1', { 'cell-a': 4 });
    expect(await deploymentsIn('cell-b', app)).toEqual([]);
    await cordon(w, 'cell-b', 'active');
    await waitAvailable(app, 'v1', { 'cell-a': 2, 'cell-b': 2 });
    watching = false;
    await watcher;
    expect(lowest, `lowest sample: ${lowestAt}`).toBeGreaterThanOrEqual(4);
  });

  it('a rollback brings the old version up before it takes the new one down', async () => {
    const app = appName('roll');
    await putApp(w, appRecord(app, { lastVersion: 2 }), [
      versionRecord(app, 1, { replicas: 0 }),
      versionRecord(app, 2, { replicas: 2, imageTag: 'v2' }),
    ]);
    await waitAvailable(app, 'v2', { 'cell-a': 1, 'cell-b': 1 });
    let lowest = 2;
    let lowestAt = '';
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        const got = await sampleAvailable(app, ['v1', 'v2']);
        if (got && got.total < lowest) {
          lowest = got.total;
          lowestAt = `${new Date().toISOString()} ${JSON.stringify(got.seen)}`;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    await scale(w, app, 'v1', 2);
    await scale(w, app, 'v2', 0);
    await waitAvailable(app, 'v1', { 'cell-a': 1, 'cell-b': 1 });
    await waitFor(async () => (await deploymentsIn('cell-a', app)).length === 1, { timeoutMs: 60_000 });
    watching = false;
    await watcher;
    expect(lowest, `lowest sample: ${lowestAt}`).toBeGreaterThanOrEqual(2);
    expect(await deploymentsIn('cell-a', app)).toEqual([`${app}-v1`]);
  });

  it('deleting an app removes its objects from every cell', async () => {
    const app = appName('gone');
    await putApp(w, appRecord(app), [versionRecord(app, 1, { replicas: 2 })]);
    await waitAvailable(app, 'v1', { 'cell-a': 1, 'cell-b': 1 });
    await w.etcd.delete().prefix(w.keys.app(app));
    await waitFor(
      async () => {
        for (const cell of Object.values(cells)) {
          const ns = await cell.core.readNamespace({ name: app }).catch(() => undefined);
          if (ns && ns.status?.phase !== 'Terminating') return false;
          const deps = await cell.apps.listNamespacedDeployment({ namespace: app }).catch(() => ({ items: [] }));
          if (deps.items.some((d) => !d.metadata?.deletionTimestamp) && ns?.status?.phase !== 'Terminating')
            return false;
        }
        return true;
      },
      { timeoutMs: 60_000, message: 'namespaces gone or terminating' },
    );
    await waitFor(async () => !(await placement(w, app, 'v1')), { message: 'placement removed' });
  });
});

describe('status and activity', () => {
  it("reports status per cell, and a pod whose image cannot be pulled shows in the app's activity feed", async () => {
    const app = appName('nopull');
    await putApp(w, appRecord(app), [versionRecord(app, 1, { replicas: 2, imageTag: 'no-such-tag' })]);
    const subjects = new EventSubjects(w.subjectRoot);
    const nats = await NatsClient.connect({
      servers: [env.NATS_URL ?? ''],
      name: 'scheduler-test',
      ...regionCredentials().nats,
    });
    try {
      const event = await waitFor(
        async () => {
          const feed = await readEvents(nats.js, subjects, { filter: subjects.resource(app) });
          // The pull failure; a loaded kubelet may warn about other things first (a volume mount).
          return feed.find(
            (e) =>
              e.event.kind === 'pod' &&
              e.event.data?.cell === 'cell-a' &&
              /no-such-tag|ImagePull|pull/i.test(String(e.event.data?.message)),
          )?.event;
        },
        { timeoutMs: 90_000, intervalMs: 500, message: "the pod's image pull failure in the app's feed" },
      );
      expect(event.resourceId).toBe(app);
      expect(event.actor).toEqual({ type: 'system', name: 'kubernetes/cell-a' });
    } finally {
      await nats.drain();
    }
    // Status per cell: desired one each, and cell-a's replica not available.
    const raw = await waitFor(
      () =>
        w.etcd
          .get(w.keys.status(app, 'v1', 'cell-a'))
          .string()
          .then((r) => r ?? undefined),
      {
        message: 'status of cell-a written',
      },
    );
    const status = JSON.parse(raw as string) as { desired: number; available: number };
    expect(status).toMatchObject({ desired: 1, available: 0 });
    await w.etcd.delete().prefix(w.keys.app(app));
  });
});

describe('restarts and leadership', () => {
  it('a scheduler restarted on a converged region makes zero writes to any cell', async () => {
    const app = appName('calm');
    await putApp(w, appRecord(app), [versionRecord(app, 1, { replicas: 2 }), versionRecord(app, 2, { replicas: 1 })]);
    await waitAvailable(app, 'v1', { 'cell-a': 1, 'cell-b': 1 });
    await waitFor(async () => (await placement(w, app, 'v2'))?.cells, { message: 'v2 placed' });
    await waitAvailable(app, 'v2', (await placement(w, app, 'v2'))?.cells ?? {});
    await scheduler.service.controller.idle();
    await scheduler.service.stop();

    scheduler = await startScheduler(w, pull);
    await waitFor(() => scheduler.service.controller.cellHealth('cell-a') === 'ok', { message: 'new leader running' });
    await scheduler.service.controller.idle();
    expect(await cellWrites(scheduler.service)).toBe(0);
  });

  it("a rotated pull key rewrites every app's pull Secrets and nothing else: no pod restarts", async () => {
    const app = appName('rotate');
    await putApp(w, appRecord(app), [versionRecord(app, 1, { replicas: 2 })]);
    await waitAvailable(app, 'v1', { 'cell-a': 1, 'cell-b': 1 });
    await expectPullSecrets(app, pullKey);
    const podsBefore = [...(await podNames('cell-a', app)), ...(await podNames('cell-b', app))];
    await scheduler.service.controller.idle();
    await scheduler.service.stop();

    pullKey = randomBytes(32);
    writeFileSync(pullKeyFile, pullKey.toString('hex'), { mode: 0o600 });
    scheduler = await startScheduler(w, pull);
    const rotated = cellPullCredential(pullKey, w.region, 'cell-b');
    await waitFor(async () => (await pullSecretIn('cell-b', app))?.password === rotated.password, {
      timeoutMs: 30_000,
      message: "cell-b's pull Secret rewritten with the new key",
    });
    await scheduler.service.controller.idle();
    await expectPullSecrets(app, pullKey);
    // Only Secrets were written, and the pods run on as they were.
    const writes = await cellWrites(scheduler.service);
    expect(writes).toBeGreaterThanOrEqual(2);
    expect(await cellWritesOf(scheduler.service, 'Secret')).toBe(writes);
    expect([...(await podNames('cell-a', app)), ...(await podNames('cell-b', app))]).toEqual(podsBefore);
    // The password went into no log line.
    expect(scheduler.logs()).not.toContain(rotated.password);
  });

  it('killing the leader hands over to the standby, which converges without duplicate objects', {
    timeout: 150_000,
  }, async () => {
    const t0 = Date.now();
    const phase = (what: string) => console.log(`[handover] ${what} at ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    // The leader is a real process, killed with SIGKILL: it cannot resign, its lease must expire.
    await scheduler.service.stop();
    const { process: leader, output } = spawnScheduler(w, 'doomed-leader', pull);
    try {
      await waitFor(async () => (await w.etcd.get(w.keys.election('scheduler')).string()) === 'doomed-leader', {
        timeoutMs: 30_000,
        message: 'the process leads',
      }).catch((err: Error) => {
        throw new Error(`${err.message}; its output:\n${output()}`);
      });
      phase('the process leads');
      scheduler = await startScheduler(w, pull); // the standby
      const app = appName('handover');
      await putApp(w, appRecord(app), [versionRecord(app, 1, { replicas: 2 })]);
      await waitAvailable(app, 'v1', { 'cell-a': 1, 'cell-b': 1 });
      phase('placed by the process');
      const killedAt = Date.now();
      leader.kill('SIGKILL');
      await scale(w, app, 'v1', 4);
      await waitFor(() => scheduler.service.controller.cellHealth('cell-a') === 'ok', {
        timeoutMs: 15_000,
        message: 'standby leads',
      });
      phase('the standby leads');
      expect(Date.now() - killedAt).toBeLessThan(3000 + 5000); // within the lease TTL, plus start-up
      await waitAvailable(app, 'v1', { 'cell-a': 2, 'cell-b': 2 });
      phase('converged');
      expect(await deploymentsIn('cell-a', app)).toEqual([`${app}-v1`]);
      expect(await deploymentsIn('cell-b', app)).toEqual([`${app}-v1`]);
    } finally {
      if (leader.exitCode === null) leader.kill('SIGKILL');
    }
  });
});
