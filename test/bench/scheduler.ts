/**
 * Placement and convergence of 1000 versions over 10 KWOK cells of 100 nodes each, with a real
 * scheduler process, the region's etcd and real (simulated-node) API servers:
 *   - time from the last API-style write to all placements written,
 *   - time to all Deployments applied in the cells,
 *   - time to all versions available,
 *   - writes to cells per version, and placement writes per version.
 * Run: node test/bench/scheduler.ts   (brings up the extra KWOK cells it needs; they stay up)
 * Env: BENCH_APPS (500), BENCH_VERSIONS_PER_APP (2), BENCH_REPLICAS (2), BENCH_CELLS (10), BENCH_NODES (100)
 */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { createEtcdClient } from '@berth/shared/etcd';
import { BerthKeys } from '@berth/shared/keys';
import { loadCellClient } from '@berth/shared/kube';
import { type App, type Cell, LABELS, MANAGED_BY, type Version } from '@berth/shared/model';
import { freePort, REPO_ROOT, regionEnv, uniqueId, waitFor } from '@berth/shared/testing';

const APPS = Number(process.env.BENCH_APPS ?? 500);
const PER_APP = Number(process.env.BENCH_VERSIONS_PER_APP ?? 2);
const REPLICAS = Number(process.env.BENCH_REPLICAS ?? 2);
const KWOK_CELLS = Number(process.env.BENCH_CELLS ?? 10);
const NODES = Number(process.env.BENCH_NODES ?? 100);
const VERSIONS = APPS * PER_APP;

const started = Date.now();
console.log(`bringing up ${KWOK_CELLS} KWOK cells × ${NODES} nodes (infra/cells.sh up)…`);
execFileSync('bash', [join(REPO_ROOT, 'infra/cells.sh'), 'up'], {
  stdio: 'ignore',
  env: { ...process.env, BERTH_KWOK_CELLS: String(KWOK_CELLS), BERTH_KWOK_NODES: String(NODES) },
});
console.log(`cells up in ${((Date.now() - started) / 1000).toFixed(0)} s`);

const env = regionEnv();
const kubeconfigDir = env.KUBECONFIG_DIR ?? join(REPO_ROOT, '.local/cells');
const cellNames = Array.from({ length: KWOK_CELLS }, (_, i) => `cell-${String.fromCharCode(98 + i)}`);
const id = uniqueId(6);
const prefix = `/bench-${id}`;
const region = `bench-${id}`;
const owner = `bench-${id}`;
const keys = new BerthKeys(prefix);
const etcd = createEtcdClient({ endpoints: (env.ETCD_ENDPOINTS ?? '').split(',') });
const clients = cellNames.map((c) => loadCellClient(kubeconfigDir, c));
const now = new Date().toISOString();

for (const name of cellNames) {
  const cell: Cell = {
    name,
    region,
    apiServer: 'https://127.0.0.1',
    state: 'active',
    labels: {},
    createdAt: now,
    updatedAt: now,
  };
  await etcd.put(keys.cell(region, name)).value(JSON.stringify(cell));
}

const port = await freePort();
const scheduler = spawn(process.execPath, [join(REPO_ROOT, 'services/scheduler/src/index.ts')], {
  env: {
    PATH: process.env.PATH,
    HTTP_ADDR: `127.0.0.1:${port}`,
    ETCD_ENDPOINTS: env.ETCD_ENDPOINTS,
    NATS_URL: env.NATS_URL,
    ETCD_PREFIX: prefix,
    BERTH_REGION: region,
    KUBECONFIG_DIR: kubeconfigDir,
    EVENT_SUBJECT_ROOT: `bench${id}`,
    PRESTOP_DELAY_SECONDS: '0',
    LOG_LEVEL: 'warn',
  },
  stdio: ['ignore', 'ignore', 'inherit'],
});

/** CPU seconds (user + system) a process has used, from /proc. */
function cpuSeconds(pid: number | undefined): number {
  if (!pid) return Number.NaN;
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  const ticks = Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14 and 15)
  return ticks / 100;
}

/** The scheduler's metric lines that start with `name` (a metric name, or a name and `{`). */
async function metricLines(name: string): Promise<string[]> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  return text.split('\n').filter((l) => l.startsWith(name));
}

const sampleValue = (line: string) => Number(line.split(' ').pop());

async function metric(name: string): Promise<number> {
  return (await metricLines(name)).reduce((n, l) => n + sampleValue(l), 0);
}

async function countDeployments(): Promise<{ deployments: number; available: number }> {
  let deployments = 0;
  let available = 0;
  await Promise.all(
    clients.map(async (c) => {
      const list = await c.apps.listDeploymentForAllNamespaces({
        labelSelector: `${LABELS.managedBy}=${MANAGED_BY},${LABELS.owner}=${owner}`,
      });
      deployments += list.items.length;
      available += list.items.filter((d) => (d.status?.availableReplicas ?? 0) >= (d.spec?.replicas ?? 1)).length;
    }),
  );
  return { deployments, available };
}

try {
  await waitFor(async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).ok, { timeoutMs: 30_000 });
  await waitFor(async () => (await metric('berth_scheduler_leader')) === 1, {
    timeoutMs: 30_000,
    message: 'scheduler leads',
  });

  // The API's writes: each app, then its versions.
  const healthCheck = {
    path: '/healthz',
    port: 8080,
    initialDelaySeconds: 0,
    periodSeconds: 10,
    timeoutSeconds: 1,
    failureThreshold: 3,
  };
  const ports = [{ name: 'http', port: 8080, protocol: 'TCP' as const }];
  const writeStart = Date.now();
  for (let a = 0; a < APPS; a++) {
    const name = `b${id}-${a}`;
    const app: App = {
      name,
      region,
      image: 'berth/sample-app',
      description: '',
      healthCheck,
      ports,
      minCells: 2,
      owner,
      lastVersion: PER_APP,
      createdAt: now,
      updatedAt: now,
    };
    const ops = etcd.put(keys.app(name)).value(JSON.stringify(app));
    await ops;
    await Promise.all(
      Array.from({ length: PER_APP }, (_, v) => {
        const version: Version = {
          app: name,
          name: `v${v + 1}`,
          number: v + 1,
          imageTag: 'v1',
          replicas: REPLICAS,
          cpu: '100m',
          memory: '64Mi',
          env: {},
          ports,
          healthCheck,
          command: [],
          createdAt: now,
          createdBy: owner,
          updatedAt: now,
        };
        return etcd.put(keys.version(name, version.name)).value(JSON.stringify(version));
      }),
    );
  }
  const lastWrite = Date.now();
  const placementsBefore = await etcd.getAll().prefix(keys.placements()).count();

  let lastReport = Date.now();
  await waitFor(
    async () => {
      const n = await etcd.getAll().prefix(keys.placements()).count();
      if (Date.now() - lastReport >= 15_000) {
        lastReport = Date.now();
        const reconciles = await metric('berth_scheduler_reconcile_duration_seconds_count');
        const seconds = await metric('berth_scheduler_reconcile_duration_seconds_sum');
        console.log(
          `  ${((Date.now() - lastWrite) / 1000).toFixed(0)} s: ${n} placements, ${reconciles} reconciles (mean ${((seconds / Math.max(1, reconciles)) * 1000).toFixed(0)} ms), ${await metric('berth_scheduler_cell_writes_total')} cell writes`,
        );
      }
      return n >= VERSIONS;
    },
    { timeoutMs: 600_000, intervalMs: 100, message: 'all placements written' },
  );
  const placed = Date.now();
  const expectedDeployments = VERSIONS * Math.min(REPLICAS, 2); // 2 replicas over ≥ 2 cells: one per cell
  await waitFor(async () => (await countDeployments()).deployments >= expectedDeployments, {
    timeoutMs: 900_000,
    intervalMs: 500,
    message: 'all Deployments applied',
  });
  const applied = Date.now();
  await waitFor(async () => (await countDeployments()).available >= expectedDeployments, {
    timeoutMs: 900_000,
    intervalMs: 1000,
    message: 'all versions available',
  });
  const available = Date.now();
  const cellWrites = await metric('berth_scheduler_cell_writes_total');
  const writesByKind = (await metricLines('berth_scheduler_cell_writes_total{')).reduce<Record<string, number>>(
    (acc, l) => {
      const kind = /kind="([^"]+)"/.exec(l)?.[1] ?? '?';
      const verb = /verb="([^"]+)"/.exec(l)?.[1] ?? '?';
      acc[`${kind} ${verb}`] = (acc[`${kind} ${verb}`] ?? 0) + sampleValue(l);
      return acc;
    },
    {},
  );
  // Every put of a key raises its version: the sum over placements and status is the scheduler's etcd writes.
  const etcdWrites = async (pfx: string) =>
    (await etcd.getAll().prefix(pfx).exec()).kvs.reduce((n, kv) => n + Number(kv.version), 0);
  const placementWrites = await etcdWrites(keys.placements());
  const statusWrites = await etcdWrites(keys.statuses());
  const cpu = cpuSeconds(scheduler.pid);

  console.log(
    `\nScheduler: ${VERSIONS} versions (${APPS} apps × ${PER_APP}, ${REPLICAS} replicas each) over ${KWOK_CELLS} KWOK cells × ${NODES} nodes`,
  );
  console.log('| figure | value |');
  console.log('| --- | --- |');
  console.log(`| API-style writes (apps + versions) | ${((lastWrite - writeStart) / 1000).toFixed(1)} s |`);
  console.log(`| last write → all placements written | ${((placed - lastWrite) / 1000).toFixed(1)} s |`);
  console.log(`| last write → all Deployments applied | ${((applied - lastWrite) / 1000).toFixed(1)} s |`);
  console.log(`| last write → all versions available | ${((available - lastWrite) / 1000).toFixed(1)} s |`);
  console.log(`| placements per second | ${(VERSIONS / ((placed - lastWrite) / 1000)).toFixed(0)} |`);
  console.log(`| cell writes per version (namespace, service, deployments) | ${(cellWrites / VERSIONS).toFixed(2)} |`);
  console.log(
    `| cell writes by kind | ${Object.entries(writesByKind)
      .map(([k, n]) => `${k} ${n}`)
      .join(', ')} |`,
  );
  console.log(
    `| etcd writes per version: placement, status (all cells) | ${(placementWrites / VERSIONS).toFixed(2)}, ${(statusWrites / VERSIONS).toFixed(2)} |`,
  );
  console.log(`| placement keys before / after | ${placementsBefore} / ${VERSIONS} |`);
  console.log(
    `| scheduler CPU (user+system) | ${cpu.toFixed(1)} s, ${((cpu / VERSIONS) * 1000).toFixed(1)} ms per version, ${((cpu / ((available - writeStart) / 1000)) * 100).toFixed(0)}% of one core over the run |`,
  );
  console.log(
    `| whole machine's load average (1 min) at the end | ${loadavg()[0]?.toFixed(1)} on ${cpus().length} cores |`,
  );
} finally {
  scheduler.kill('SIGTERM');
  // Clean up: the apps' namespaces in every cell, and the keys.
  await Promise.all(
    clients.map(async (c) => {
      const list = await c.core
        .listNamespace({ labelSelector: `${LABELS.owner}=${owner}` })
        .catch(() => ({ items: [] }));
      for (const ns of list.items)
        await c.core.deleteNamespace({ name: ns.metadata?.name as string }).catch(() => undefined);
    }),
  );
  await etcd.delete().prefix(`${prefix}/`);
  etcd.close();
}
