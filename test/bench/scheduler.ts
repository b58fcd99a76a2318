/**
 * Placement and apply of many versions over KWOK cells, with a real scheduler process, the
 * region's etcd and real (simulated-node) API servers, side by side with the cells' own write
 * floor measured in the same run (issue 10's benchmark):
 *   - last API-style write → all placements written, and placements per second;
 *   - the scheduler's CPU per version, net of its idle CPU measured just before;
 *   - Berth's apply time (last write → every Deployment in its cells with its replicas) against
 *     the floor: the same Namespace/Service/Deployment server-side applies sent by a plain client
 *     into separate namespaces, 16 requests in flight per cell;
 *   - the scheduler's etcd write transactions and puts per version, and cell writes per version
 *     (Berth's and the floor's, from the API servers' apiserver_request_total).
 * Run (needs `make up`): node test/bench/scheduler.ts
 *   small form: BENCH_APPS=10 BENCH_CELLS=2 BENCH_NODES=5 node test/bench/scheduler.ts
 * Env: BENCH_APPS (500), BENCH_VERSIONS_PER_APP (2), BENCH_REPLICAS (2), BENCH_CELLS (10), BENCH_NODES (100),
 *   BENCH_SCHEDULER_NODE_OPTIONS (NODE_OPTIONS of the scheduler, e.g. "--cpu-prof --cpu-prof-dir=DIR")
 * It starts its own KWOK cells after the region's (cell-c… beside cell-a and cell-b), and at the
 * end, also on failure or Ctrl-C, deletes what it made and stops the cells it started.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { createEtcdClient } from '@berth/shared/etcd';
import { BerthKeys } from '@berth/shared/keys';
import { type CellClient, loadCellClient } from '@berth/shared/kube';
import {
  type App,
  type Cell,
  deploymentName,
  LABELS,
  MANAGED_BY,
  type Placement,
  type Version,
} from '@berth/shared/model';
import { exited, freePort, REPO_ROOT, regionEnv, uniqueId, waitFor } from '@berth/shared/testing';
import { deploymentFor, namespaceFor, serviceFor } from '../../services/scheduler/src/apply/manifests.ts';
import {
  apiRequests,
  benchCellNames,
  requestDelta,
  runningCells,
  stopCells,
  upCells,
  WRITE_VERBS,
  wipeCells,
} from './scheduler/cells.ts';
import { DeploymentWatch } from './scheduler/deployments.ts';
import { type AppObjects, applyFloor } from './scheduler/floor.ts';

const APPS = Number(process.env.BENCH_APPS ?? 500);
const PER_APP = Number(process.env.BENCH_VERSIONS_PER_APP ?? 2);
const REPLICAS = Number(process.env.BENCH_REPLICAS ?? 2);
const KWOK_CELLS = Number(process.env.BENCH_CELLS ?? 10);
const NODES = Number(process.env.BENCH_NODES ?? 100);
const VERSIONS = APPS * PER_APP;
const FLOOR_CONCURRENCY = 16;
const IDLE_MS = 5_000;

const env = regionEnv();
const kubeconfigDir = env.KUBECONFIG_DIR ?? join(REPO_ROOT, '.local/cells');
const cellNames = benchCellNames(env.BERTH_CELLS, KWOK_CELLS);
const alreadyRunning = runningCells(cellNames);
const id = uniqueId(6);
const prefix = `/bench-${id}`;
const region = `bench-${id}`;
const owner = `bench-${id}`;
const floorOwner = `floor-${id}`;
const keys = new BerthKeys(prefix);
const etcdEndpoints = (env.ETCD_ENDPOINTS ?? '').split(',');
const etcd = createEtcdClient({ endpoints: etcdEndpoints });
const now = new Date().toISOString();
const watch = new DeploymentWatch();
let clients: CellClient[] = [];
let scheduler: ChildProcess | undefined;
let port = 0;

// ---------------------------------------------------------------- measuring

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** CPU seconds (user + system) a process has used, from /proc (clock ticks of 1/100 s). */
function cpuSeconds(pid: number | undefined): number {
  if (!pid) return Number.NaN;
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime (fields 14 and 15)
}

/** Samples of a Prometheus text page whose line starts with `name` (a name, or a name and `{`). */
async function scrape(url: string, name: string): Promise<string[]> {
  const text = await (await fetch(url)).text();
  return text.split('\n').filter((l) => l.startsWith(name));
}
const sampleValue = (line: string) => Number(line.split(' ').pop());
const sum = (lines: string[]) => lines.reduce((n, l) => n + sampleValue(l), 0);
const schedulerMetric = async (name: string) => sum(await scrape(`http://127.0.0.1:${port}/metrics`, name));

/**
 * The region etcd's write counters. etcd counts a transaction in etcd_mvcc_txn_total only when it
 * has more than one operation (a fenced write: its compares and puts), and every put, in a
 * transaction or not, in etcd_mvcc_put_total; the benchmark's own writes are single puts.
 */
async function etcdCounters(): Promise<{ txns: number; puts: number }> {
  const url = `${etcdEndpoints[0]}/metrics`;
  const txn = await scrape(url, 'etcd_mvcc_txn_total ');
  return {
    txns: sum(txn.length > 0 ? txn : await scrape(url, 'etcd_debugging_mvcc_txn_total ')),
    puts: sum(await scrape(url, 'etcd_mvcc_put_total ')),
  };
}

type Snapshot = { at: number; cpu: number; etcd: { txns: number; puts: number }; storeTxns: number | undefined };

/** A counter of the scheduler's own etcd transactions, if it exports one (name and value). */
async function schedulerStoreCounter(): Promise<{ name: string; value: number } | undefined> {
  const lines = await scrape(`http://127.0.0.1:${port}/metrics`, 'berth_');
  const match = lines.filter((l) => /^berth_\w*(store|etcd)\w*_(commits|txns|transactions)_total[{ ]/.test(l));
  const name = match[0]?.split(/[{ ]/)[0];
  return name ? { name, value: sum(match.filter((l) => l.startsWith(name))) } : undefined;
}

async function snapshot(): Promise<Snapshot> {
  return {
    at: Date.now(),
    cpu: cpuSeconds(scheduler?.pid),
    etcd: await etcdCounters(),
    storeTxns: (await schedulerStoreCounter())?.value,
  };
}

/** Every put under the benchmark's prefix so far (a key's version counts its puts), by kind of key. */
async function putsByKind(): Promise<Record<'placement' | 'status' | 'other', number>> {
  const kvs = (await etcd.getAll().prefix(`${prefix}/`).exec()).kvs;
  const out = { placement: 0, status: 0, other: 0 };
  for (const kv of kvs) {
    const key = kv.key.toString();
    const kind = key.startsWith(keys.placements()) ? 'placement' : key.startsWith(keys.statuses()) ? 'status' : 'other';
    out[kind] += Number(kv.version);
  }
  return out;
}

const CELL_RESOURCES = new Set(['namespaces', 'services', 'deployments']);

/** Requests on Namespaces, Services and Deployments (not their status), writes and reads by verb. */
function objectRequests(delta: Map<string, number>): { writes: number; byVerb: string } {
  let writes = 0;
  const parts: string[] = [];
  for (const [key, n] of [...delta].sort()) {
    const [verb = '', resource = ''] = key.split(' ');
    if (!CELL_RESOURCES.has(resource) || !(WRITE_VERBS.has(verb) || verb === 'GET')) continue;
    if (WRITE_VERBS.has(verb)) writes += n;
    parts.push(`${key} ${n}`);
  }
  return { writes, byVerb: parts.join(', ') || 'none' };
}

const snapshotCells = () => Promise.all(clients.map((c) => apiRequests(c)));

// ---------------------------------------------------------------- cleaning up

let cleaning: Promise<void> | undefined;

/** Removes what the run made: the scheduler, both owners' namespaces (waited for), the keys, the cells it started. */
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    watch.stop();
    if (scheduler && scheduler.exitCode === null) {
      scheduler.kill('SIGTERM');
      await exited(scheduler);
    }
    // Cells this run started are stopped and wiped below: nothing to delete in them. In cells that
    // were running, the run's namespaces are deleted and waited for.
    const kept = clients.filter((c) => alreadyRunning.includes(c.cell));
    const selector = `${LABELS.owner} in (${owner},${floorOwner})`;
    const namespaces = async () =>
      (
        await Promise.all(
          kept.map(async (c) => {
            const list = await c.core.listNamespace({ labelSelector: selector }).catch(() => ({ items: [] }));
            return list.items.map((ns) => ({ c, ns }));
          }),
        )
      ).flat();
    const left = await namespaces();
    await Promise.all(
      left.map(({ c, ns }) => c.core.deleteNamespace({ name: ns.metadata?.name as string }).catch(() => undefined)),
    );
    if (left.length > 0) {
      console.log(`deleting ${left.length} namespaces (their pods go first)…`);
      await waitFor(async () => (await namespaces()).length === 0, {
        timeoutMs: 600_000,
        intervalMs: 1000,
        message: 'the benchmark namespaces deleted',
      }).catch((err) => console.error(String(err)));
    }
    await etcd.delete().prefix(`${prefix}/`);
    etcd.close();
    const started = cellNames.filter((c) => !alreadyRunning.includes(c));
    if (started.length > 0) {
      console.log(`stopping and wiping the cells this run started: ${started.join(' ')}`);
      stopCells(started);
      await wipeCells(started);
    }
  })();
  return cleaning;
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    console.error(`${signal}: cleaning up`);
    void cleanup().finally(() => process.exit(130));
  });
}

// ---------------------------------------------------------------- the run

try {
  const cellsStarted = Date.now();
  console.log(`bringing up ${KWOK_CELLS} KWOK cells × ${NODES} nodes: ${cellNames.join(' ')} (infra/cells.sh up)…`);
  // A cell this run starts starts empty, whatever an earlier run (or a crash) left in it.
  await wipeCells(cellNames.filter((c) => !alreadyRunning.includes(c)));
  upCells(cellNames, NODES);
  console.log(`cells up in ${seconds(Date.now() - cellsStarted)}`);
  clients = cellNames.map((c) => loadCellClient(kubeconfigDir, c));

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

  port = await freePort();
  scheduler = spawn(process.execPath, [join(REPO_ROOT, 'services/scheduler/src/index.ts')], {
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
      // e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof" to see where the scheduler's CPU goes.
      ...(process.env.BENCH_SCHEDULER_NODE_OPTIONS ? { NODE_OPTIONS: process.env.BENCH_SCHEDULER_NODE_OPTIONS } : {}),
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  await waitFor(async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).ok, { timeoutMs: 30_000 });
  await waitFor(async () => (await schedulerMetric('berth_scheduler_leader')) === 1, {
    timeoutMs: 30_000,
    message: 'scheduler leads',
  });
  await watch.start(clients, `${LABELS.managedBy}=${MANAGED_BY},${LABELS.owner}=${owner}`);

  // The scheduler's idle cost (leases, resyncs) and the region etcd's background writes, subtracted below.
  const idleStart = await snapshot();
  await sleep(IDLE_MS);
  const writeStart = await snapshot();
  const idleMs = writeStart.at - idleStart.at;
  const cellsBefore = await snapshotCells();

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
  const apps = new Map<string, { app: App; versions: Map<string, Version> }>();
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
    await etcd.put(keys.app(name)).value(JSON.stringify(app));
    const versions = new Map<string, Version>();
    apps.set(name, { app, versions });
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
        versions.set(version.name, version);
        return etcd.put(keys.version(name, version.name)).value(JSON.stringify(version));
      }),
    );
  }
  const lastWrite = Date.now();

  let lastReport = Date.now();
  await waitFor(
    async () => {
      const n = await etcd.getAll().prefix(keys.placements()).count();
      if (Date.now() - lastReport >= 15_000) {
        lastReport = Date.now();
        console.log(
          `  ${seconds(Date.now() - lastWrite)}: ${n}/${VERSIONS} placements, ${await schedulerMetric('berth_scheduler_cell_writes_total')} cell writes`,
        );
      }
      return n >= VERSIONS;
    },
    { timeoutMs: 600_000, intervalMs: 50, message: 'all placements written' },
  );
  const placed = Date.now();

  // Every Deployment the placements ask for: `cell/namespace/name` → replicas.
  const placements = Object.values(await etcd.getAll().prefix(keys.placements()).json()) as Placement[];
  const expected = new Map<string, number>();
  const wanted: { cell: string; app: string; version: string; replicas: number }[] = [];
  for (const p of placements) {
    for (const [cell, replicas] of Object.entries(p.cells)) {
      if (replicas === 0) continue;
      expected.set(`${cell}/${p.app}/${deploymentName(p.app, p.version)}`, replicas);
      wanted.push({ cell, app: p.app, version: p.version, replicas });
    }
  }
  const done = await waitFor(() => watch.doneAt(expected), {
    timeoutMs: 900_000,
    intervalMs: 50,
    message: 'every Deployment applied with its replicas',
  });
  const applied = done.applied;
  console.log(`  ${seconds(applied - lastWrite)}: ${expected.size} Deployments applied; waiting for availability`);
  const available = await waitFor(() => watch.doneAt(expected)?.available, {
    timeoutMs: 900_000,
    intervalMs: 200,
    message: 'every version available',
  });
  // The scheduler is done when its keys stop changing (status rows follow availability).
  let quietSince = Date.now();
  let lastPuts = -1;
  await waitFor(
    async () => {
      const p = await putsByKind();
      const total = p.placement + p.status + p.other;
      if (total !== lastPuts) [lastPuts, quietSince] = [total, Date.now()];
      return Date.now() - quietSince >= 3000;
    },
    { timeoutMs: 120_000, intervalMs: 250, message: 'the scheduler settles' },
  );
  const end = await snapshot();
  const cellsAfter = await snapshotCells();
  const schedulerCellWrites = await schedulerMetric('berth_scheduler_cell_writes_total');
  const storeCounter = await schedulerStoreCounter();
  const keyPuts = await putsByKind();
  scheduler.kill('SIGTERM');
  await exited(scheduler);

  // The floor: the same objects in the same cells, written by a plain client into namespaces of its own.
  const registry = env.REGISTRY_ADDR ?? '127.0.0.1:5000';
  const byCell = new Map<string, Map<string, { app: App; objects: AppObjects }>>();
  for (const { cell, app: appName, version: versionName, replicas } of wanted) {
    const source = apps.get(appName);
    const version = source?.versions.get(versionName);
    if (!source || !version) throw new RangeError(`no app or version for ${appName}/${versionName}`);
    const cellApps = byCell.get(cell) ?? new Map<string, { app: App; objects: AppObjects }>();
    byCell.set(cell, cellApps);
    let entry = cellApps.get(appName);
    if (!entry) {
      const app = { ...source.app, name: `f${appName.slice(1)}`, owner: floorOwner };
      entry = { app, objects: [namespaceFor(app), serviceFor(app)] };
      cellApps.set(appName, entry);
    }
    entry.objects.push(
      deploymentFor(entry.app, { ...version, app: entry.app.name }, replicas, { registry, preStopDelaySeconds: 0 }),
    );
  }
  const floorBefore = await snapshotCells();
  const floorMs = await applyFloor(
    clients.map((client) => ({
      client,
      apps: [...(byCell.get(client.cell)?.values() ?? [])].map((e) => e.objects),
    })),
    FLOOR_CONCURRENCY,
  );
  const floorAfter = await snapshotCells();

  // ---------------------------------------------------------------- figures
  const windowMs = end.at - writeStart.at;
  const idle = (from: number, to: number) => ((to - from) / idleMs) * windowMs;
  const cpuNet = end.cpu - writeStart.cpu - idle(idleStart.cpu, writeStart.cpu);
  const cpuPerVersionMs = (cpuNet / VERSIONS) * 1000;
  // Gross: everything the scheduler used over the run, its idle work included (an upper bound).
  const cpuGrossPerVersionMs = ((end.cpu - writeStart.cpu) / VERSIONS) * 1000;
  const benchPuts = APPS + VERSIONS;
  const etcdTxns = end.etcd.txns - writeStart.etcd.txns - idle(idleStart.etcd.txns, writeStart.etcd.txns);
  const etcdPuts = end.etcd.puts - writeStart.etcd.puts - idle(idleStart.etcd.puts, writeStart.etcd.puts) - benchPuts;
  const storeTxns =
    storeCounter && writeStart.storeTxns !== undefined && idleStart.storeTxns !== undefined
      ? storeCounter.value - writeStart.storeTxns - idle(idleStart.storeTxns, writeStart.storeTxns)
      : undefined;
  const txnsPerVersion = (storeTxns ?? etcdTxns) / VERSIONS;
  const txnSource = storeCounter
    ? `the scheduler's ${storeCounter.name}`
    : 'region etcd etcd_mvcc_txn_total Δ, net of idle';
  const schedulerKeyPuts = keyPuts.placement + keyPuts.status + keyPuts.other - (APPS + VERSIONS + KWOK_CELLS);
  const berth = objectRequests(requestDelta(cellsBefore, cellsAfter));
  const floor = objectRequests(requestDelta(floorBefore, floorAfter));
  const placeMs = placed - lastWrite;
  const applyMs = applied - lastWrite;
  const ratio = applyMs / floorMs;
  const rate = VERSIONS / (placeMs / 1000);

  console.log(
    `\nScheduler: ${VERSIONS} versions (${APPS} apps × ${PER_APP}, ${REPLICAS} replicas each) over ${KWOK_CELLS} KWOK cells × ${NODES} nodes; ${expected.size} Deployments`,
  );
  console.log('| figure | value |');
  console.log('| --- | --- |');
  console.log(`| API-style writes (apps + versions) | ${seconds(lastWrite - writeStart.at)} |`);
  console.log(`| last write → all placements written | ${seconds(placeMs)}, ${rate.toFixed(0)} placements/s |`);
  console.log(`| last write → every Deployment applied with its replicas (Berth) | ${seconds(applyMs)} |`);
  console.log(
    `| the same applies by a plain client (floor, ${FLOOR_CONCURRENCY} in flight per cell) | ${seconds(floorMs)} |`,
  );
  console.log(`| Berth's apply time / floor | ${ratio.toFixed(2)}× |`);
  console.log(`| last write → all versions available | ${seconds(available - lastWrite)} |`);
  console.log(
    `| scheduler CPU (user+system, net of ${(((writeStart.cpu - idleStart.cpu) / idleMs) * 1e5).toFixed(1)}% idle) | ${cpuNet.toFixed(2)} s, ${cpuPerVersionMs.toFixed(1)} ms per version, ${((cpuNet / (windowMs / 1000)) * 100).toFixed(0)}% of one core over ${seconds(windowMs)} |`,
  );
  console.log(
    `| scheduler CPU, gross (idle work included) | ${(end.cpu - writeStart.cpu).toFixed(2)} s, ${cpuGrossPerVersionMs.toFixed(1)} ms per version |`,
  );
  console.log(
    `| scheduler etcd write transactions per version (${txnSource}) | ${txnsPerVersion.toFixed(2)} (${Math.round(storeTxns ?? etcdTxns)} txns) |`,
  );
  console.log(
    `| scheduler etcd puts per version: region etcd_mvcc_put_total Δ; key versions (placement, status, other) | ${(etcdPuts / VERSIONS).toFixed(2)}; ${(schedulerKeyPuts / VERSIONS).toFixed(2)} (${(keyPuts.placement / VERSIONS).toFixed(2)}, ${(keyPuts.status / VERSIONS).toFixed(2)}, ${((keyPuts.other - APPS - VERSIONS - KWOK_CELLS) / VERSIONS).toFixed(2)}) |`,
  );
  console.log(
    `| cell writes per version, Berth (apiserver_request_total; scheduler's own count) | ${(berth.writes / VERSIONS).toFixed(2)}; ${(schedulerCellWrites / VERSIONS).toFixed(2)} |`,
  );
  console.log(`| cell writes per version, floor | ${(floor.writes / VERSIONS).toFixed(2)} |`);
  console.log(`| Berth's requests on namespaces/services/deployments | ${berth.byVerb} |`);
  console.log(`| floor's requests on namespaces/services/deployments | ${floor.byVerb} |`);
  console.log(
    `| whole machine's load average (1 min) at the end | ${loadavg()[0]?.toFixed(1)} on ${cpus().length} cores |`,
  );

  const full = VERSIONS >= 1000;
  const rows: [string, string, string, string][] = [
    [
      'last write → all placements written',
      seconds(placeMs),
      '< 5 s for 1000 versions',
      full ? yes(placeMs < 5000 * (VERSIONS / 1000)) : 'full run only',
    ],
    ['placements per second', rate.toFixed(0), '≥ 200', yes(rate >= 200)],
    [
      'scheduler CPU per version (net; gross)',
      `${cpuPerVersionMs.toFixed(1)} ms; ${cpuGrossPerVersionMs.toFixed(1)} ms`,
      '< 5 ms',
      // A negative net means the idle sample was busier than the run (the cells were still doing
      // something else): only the gross figure says anything then.
      cpuPerVersionMs > 0 ? yes(cpuPerVersionMs < 5) : `net unusable; gross ${yes(cpuGrossPerVersionMs < 5)}`,
    ],
    [
      'apply time / cells’ write floor',
      `${ratio.toFixed(2)}× (${seconds(applyMs)} / ${seconds(floorMs)})`,
      '≤ 1.25×',
      yes(ratio <= 1.25),
    ],
    ['etcd write transactions per version', txnsPerVersion.toFixed(2), '≤ 1.5', yes(txnsPerVersion <= 1.5)],
    [
      'cell writes per version (Berth / floor)',
      `${(berth.writes / VERSIONS).toFixed(2)} / ${(floor.writes / VERSIONS).toFixed(2)}`,
      '—',
      '—',
    ],
  ];
  console.log('\n| figure | measured | goal | met? |');
  console.log('| --- | --- | --- | --- |');
  for (const row of rows) console.log(`| ${row.join(' | ')} |`);
} finally {
  await cleanup();
}

function yes(met: boolean): string {
  return met ? 'yes' : 'no';
}
