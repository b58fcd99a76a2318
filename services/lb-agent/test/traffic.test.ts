/**
 * The whole traffic path on the local region's two real cells: a real scheduler runs the sample
 * app's versions in cell-a and cell-b, discovery writes their ready endpoints, an lb-agent routes
 * a domain through a private nginx. Requests reach both cells; a 10 % canary gets ≈10 %; the
 * header and the cookie force a version; with stickiness no user flaps back while the weight
 * rises; and under a steady closed-loop load a rollout, a rollback, a scale-down and a container
 * killed with SIGKILL fail no request and never reload nginx.
 */
import { readdir, readFile } from 'node:fs/promises';
import type { Traffic } from '@berth/shared/model';
import { uniqueId, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  appRecord,
  cells,
  claim,
  deleteNamespaces,
  env,
  putApp,
  scale,
  startDiscovery,
  startScheduler,
  versionRecord,
  type World,
  world,
} from '../../discovery/test/harness.ts';
import {
  domainRecord,
  get,
  type LoadSample,
  removeNginx,
  startAgent,
  startLoad,
  startNginx,
  type TestAgent,
  type TestNginx,
  trafficRecord,
} from './harness.ts';

const app = `tr-${uniqueId(6)}`;
const domain = `${app}.example.test`;
const group = 'public';
let w: World;
let scheduler: Awaited<ReturnType<typeof startScheduler>>;
let discovery: Awaited<ReturnType<typeof startDiscovery>>;
let nginx: TestNginx;
let agent: TestAgent;
let url: string;

type Answer = { version: string; hostname: string };

async function ask(headers: Record<string, string> = {}): Promise<Answer & { status: number }> {
  const r = await get(url, domain, headers);
  if (r.status !== 200) return { status: r.status, version: '', hostname: '' };
  const body = JSON.parse(r.body) as Answer;
  return { status: r.status, version: body.version, hostname: body.hostname };
}

async function setTraffic(weights: Traffic['weights'], stickiness: Traffic['stickiness'] = null): Promise<void> {
  await w.etcd.put(w.keys.slbTraffic(group, app)).value(JSON.stringify(trafficRecord(app, weights, stickiness)));
}

/** Pod names of the app per cell, as the cells list them. */
async function podsByCell(): Promise<Record<string, string[]>> {
  const out: Record<string, string[]> = {};
  for (const [name, cell] of Object.entries(cells)) {
    const list = await cell.core.listNamespacedPod({ namespace: app });
    out[name] = list.items.map((p) => p.metadata?.name as string);
  }
  return out;
}

/** Until the app runs `n` pods of v1, over both cells (terminating ones included). */
async function v1PodsAre(n: number): Promise<void> {
  await waitFor(
    async () =>
      Object.values(await podsByCell())
        .flat()
        .filter((p) => p.includes('-v1-')).length === n,
    {
      timeoutMs: 120_000,
      intervalMs: 250,
      message: `${n} pods of v1`,
    },
  );
}

/** Until `check` holds for 20 answers in a row. */
async function settle(check: (a: Answer & { status: number }) => boolean, message: string, headers = {}) {
  await waitFor(
    async () => {
      for (let i = 0; i < 20; i++) if (!check(await ask(headers))) return false;
      return true;
    },
    { timeoutMs: 120_000, intervalMs: 200, message },
  );
}

/** The pid of a pod's sample-app process on this host, found by the pod's UID in its cgroup path. */
async function containerPid(cell: string, pod: string): Promise<number> {
  const uid = (await cells[cell]?.core.readNamespacedPod({ name: pod, namespace: app }))?.metadata?.uid;
  if (!uid) throw new Error(`pod ${pod} has no uid`);
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cgroup = await readFile(`/proc/${entry}/cgroup`, 'utf8').catch(() => '');
    if (!cgroup.includes(`/pod${uid}/`)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.startsWith('/sample-app')) return Number(entry);
  }
  throw new Error(`no process of pod ${pod} (uid ${uid})`);
}

function failures(samples: LoadSample[]): LoadSample[] {
  return samples.filter((s) => s.status !== 200);
}

beforeAll(async () => {
  w = await world();
  // A preStop delay covering discovery → etcd → agent → nginx, with margin (measured well under 1 s).
  scheduler = await startScheduler(w, { PRESTOP_DELAY_SECONDS: '3' });
  discovery = await startDiscovery(w);
  await waitFor(() => discovery.service.election.isLeader, { timeoutMs: 10_000, message: 'discovery leads' });
  nginx = await startNginx({ workers: 2 });
  url = `http://127.0.0.1:${nginx.port}/`;
  agent = await startAgent({ etcdEndpoints: env.ETCD_ENDPOINTS as string, prefix: w.prefix, group, nginx });
}, 60_000);

afterAll(async () => {
  await agent?.stop();
  if (nginx) await removeNginx(nginx);
  await discovery?.service.stop();
  await scheduler?.service.stop();
  await deleteNamespaces(app);
  await w?.close();
});

describe('traffic through nginx to two real cells', () => {
  it('routes a domain to v1 in both cells', { timeout: 180_000 }, async () => {
    await putApp(w, appRecord(app, { lastVersion: 1 }), [
      versionRecord(app, 1, { replicas: 2, env: { APP_VERSION: 'v1' } }),
    ]);
    await claim(w, domain, app, group);
    await w.etcd.put(w.keys.slbDomain(group, domain)).value(JSON.stringify(domainRecord(domain, app, group)));
    const seen = new Set<string>();
    await waitFor(
      async () => {
        const a = await ask();
        if (a.status === 200 && a.version === 'v1') seen.add(a.hostname);
        return seen.size >= 2;
      },
      { timeoutMs: 150_000, intervalMs: 100, message: 'answers from both v1 pods' },
    );
    const pods = await podsByCell();
    const cellsAnswering = Object.entries(pods)
      .filter(([, names]) => names.some((n) => seen.has(n)))
      .map(([cell]) => cell)
      .sort();
    expect(cellsAnswering).toEqual(['cell-a', 'cell-b']);
  });

  it('sends ≈10 % to a 10 % canary and forces v2 by header and by cookie', { timeout: 180_000 }, async () => {
    const before = await nginx.pids();
    await putApp(w, appRecord(app, { lastVersion: 2 }), [
      versionRecord(app, 1, { replicas: 2, env: { APP_VERSION: 'v1' } }),
      versionRecord(app, 2, { replicas: 2, env: { APP_VERSION: 'v2' } }),
    ]);
    await setTraffic({ v1: 90, v2: 10 });
    await settle((a) => a.version === 'v2', 'v2 forced by header', { 'x-berth-version': 'v2' });
    expect((await ask({ cookie: 'berth_version=v2' })).version).toBe('v2');
    const counts: Record<string, number> = {};
    const n = 2000;
    for (let i = 0; i < n; i++) {
      const a = await ask();
      counts[a.version || String(a.status)] = (counts[a.version || String(a.status)] ?? 0) + 1;
    }
    expect((counts.v1 ?? 0) + (counts.v2 ?? 0)).toBe(n);
    expect(Math.abs((counts.v2 ?? 0) / n - 0.1)).toBeLessThanOrEqual(0.03);
    expect(await nginx.pids()).toEqual(before);
  });

  it('keeps every sticky user on their version or moves them forward as the weight rises', {
    timeout: 60_000,
  }, async () => {
    const users = Array.from({ length: 200 }, (_, i) => `user-${i}`);
    const history = new Map<string, string[]>();
    for (const weight of [10, 30, 60]) {
      await setTraffic({ v1: 100 - weight, v2: weight }, { cookie: 'berth_route' });
      // Applied when the forced header still works and a fixed user answers steadily.
      await waitFor(
        async () => {
          const doc = await nginx.control.routes();
          const rev = doc.apps[app]?.revision ?? 0;
          return rev >= Number((await w.etcd.get(w.keys.slbTraffic(group, app)).exec()).kvs[0]?.mod_revision ?? 0);
        },
        { timeoutMs: 10_000, message: `weight ${weight} applied` },
      );
      for (const u of users) {
        const a = await ask({ cookie: `berth_route=${u}` });
        history.set(u, [...(history.get(u) ?? []), a.version]);
      }
    }
    const flapped = [...history].filter(([, vs]) => vs.some((v, i) => i > 0 && v === 'v1' && vs[i - 1] === 'v2'));
    expect(flapped).toEqual([]);
    const onV2 = [...history.values()].map((vs) => vs.filter((v) => v === 'v2').length);
    // Some users moved (the weight did something), and the share at 60 % is about 60 %.
    const last = [...history.values()].filter((vs) => vs[2] === 'v2').length / users.length;
    expect(onV2.some((n) => n > 0)).toBe(true);
    expect(last).toBeGreaterThan(0.45);
    expect(last).toBeLessThan(0.75);
    await setTraffic({ v1: 90, v2: 10 });
  });

  it('fails no request through a rollout, a rollback, a scale-down and a SIGKILL, with no reload', {
    timeout: 300_000,
  }, async () => {
    const before = await nginx.pids();
    const load = startLoad(url, domain, 4);
    try {
      // Rollout: all traffic to v2, then v1 scaled to zero.
      await setTraffic({ v1: 0, v2: 100 });
      await settle((a) => a.version === 'v2', 'everything on v2');
      await scale(w, app, 'v1', 0);
      await v1PodsAre(0);
      // Rollback: v1 back, traffic back to it.
      await scale(w, app, 'v1', 2);
      await setTraffic({ v1: 100, v2: 0 });
      await settle((a) => a.version === 'v1', 'everything on v1 again');
      // Scale-down of the serving version: its endpoint leaves nginx before the container stops.
      await scale(w, app, 'v1', 1);
      await v1PodsAre(1);
      await scale(w, app, 'v1', 2);
      await settle((a) => a.version === 'v1', 'v1 serving');
      // A container killed with SIGKILL: nginx retries its requests on the other peer.
      // The victim: a v1 pod of cell-a that serves now (not one still starting or terminating).
      const pid = await waitFor(
        async () => {
          const list = await cells['cell-a']?.core.listNamespacedPod({ namespace: app });
          const victim = list?.items.find(
            (p) =>
              p.metadata?.name?.includes('-v1-') &&
              !p.metadata.deletionTimestamp &&
              p.status?.containerStatuses?.every((c) => c.ready),
          );
          return victim ? await containerPid('cell-a', victim.metadata?.name as string) : undefined;
        },
        { timeoutMs: 60_000, intervalMs: 250, message: 'a serving v1 pod in cell-a' },
      );
      process.kill(pid, 'SIGKILL');
      const killedAt = load.samples.length;
      await waitFor(() => load.samples.length > killedAt + 500, {
        timeoutMs: 60_000,
        message: '500 requests after the kill',
      });
    } finally {
      await load.stop();
    }
    const failed = failures(load.samples);
    expect(load.samples.length).toBeGreaterThan(1000);
    expect(failed.slice(0, 5)).toEqual([]);
    expect(failed.length).toBe(0);
    // Endpoints and weights moved many times; nginx never reloaded.
    expect(await nginx.pids()).toEqual(before);
  });
});
