/**
 * Schedulers against the real cells of the local region (cell-a and cell-b, a kubelet each),
 * isolated by a unique etcd prefix and region name; apps are written to etcd the way the
 * API writes them, with names unique to the test.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { parseEnv } from '@berth/shared/config';
import { UnavailableError } from '@berth/shared/errors';
import { createEtcdClient, type Etcd3 } from '@berth/shared/etcd';
import { BerthKeys } from '@berth/shared/keys';
import { type CellClient, kubeErrorStatus, loadCellClient } from '@berth/shared/kube';
import { CuttableProxy, kubeconfigDirWith } from '@berth/shared/kube/testing';
import { createLogger } from '@berth/shared/logging';
import {
  type App,
  type Cell,
  deploymentName,
  LABELS,
  MANAGED_BY,
  type Placement,
  placementSchema,
  type Version,
} from '@berth/shared/model';
import { REPO_ROOT, regionAuthEnv, regionCredentials, regionEnv, uniqueId, waitFor } from '@berth/shared/testing';
import { schedulerEnv } from '../src/env.ts';
import { SchedulerService } from '../src/service.ts';

export const env = regionEnv();
export const KUBECONFIG_DIR = env.KUBECONFIG_DIR ?? join(REPO_ROOT, '.local/cells');
export const CELLS = ['cell-a', 'cell-b'] as const;
export const cells: Record<string, CellClient> = Object.fromEntries(
  CELLS.map((c) => [c, loadCellClient(KUBECONFIG_DIR, c)]),
);

/**
 * cell-b behind a proxy the test can cut: the listening proxy, and a kubeconfig directory in which
 * cell-b goes through it (the other cells as they are).
 */
export async function cellBBehindProxy(): Promise<{ proxy: CuttableProxy; kubeconfigDir: string }> {
  const cellB = cells['cell-b'];
  if (!cellB) throw new Error('no cell-b');
  const proxy = CuttableProxy.forKubeConfig(cellB.kubeConfig);
  await proxy.listen();
  return { proxy, kubeconfigDir: kubeconfigDirWith(KUBECONFIG_DIR, [...CELLS], { 'cell-b': proxy }) };
}

export type World = {
  prefix: string;
  region: string;
  keys: BerthKeys;
  etcd: Etcd3;
  subjectRoot: string;
  close(): Promise<void>;
};

export async function world(): Promise<World> {
  const id = uniqueId();
  const prefix = `/t-${id}`;
  const region = `r-${id}`;
  const keys = new BerthKeys(prefix);
  const etcd = createEtcdClient({ endpoints: (env.ETCD_ENDPOINTS ?? '').split(','), ...regionCredentials(env).etcd });
  const now = new Date().toISOString();
  for (const name of CELLS) {
    const cell: Cell = {
      name,
      region,
      apiServer: cells[name]?.kubeConfig.getCurrentCluster()?.server ?? '',
      state: 'active',
      labels: {},
      createdAt: now,
      updatedAt: now,
    };
    await etcd.put(keys.cell(region, name)).value(JSON.stringify(cell));
  }
  return { prefix, region, keys, etcd, subjectRoot: `t${id}`, close: async () => etcd.close() };
}

/** A scheduler's environment on the world's prefix, region and event subjects. */
function schedulerEnvOf(w: World): Record<string, string | undefined> {
  return {
    HTTP_ADDR: '127.0.0.1:0',
    ETCD_ENDPOINTS: env.ETCD_ENDPOINTS,
    NATS_URL: env.NATS_URL,
    ...regionAuthEnv(env),
    ETCD_PREFIX: w.prefix,
    BERTH_REGION: w.region,
    KUBECONFIG_DIR,
    EVENT_SUBJECT_ROOT: w.subjectRoot,
    PRESTOP_DELAY_SECONDS: '0',
    LEADER_TTL_SECONDS: '3',
  };
}

export async function startScheduler(
  w: World,
  extra: Record<string, string> = {},
): Promise<{ service: SchedulerService; logs: () => string }> {
  let logs = '';
  const logger = createLogger({
    service: 'scheduler',
    level: 'info',
    destination: new Writable({
      write(chunk, _e, done) {
        logs = (logs + chunk).slice(-50_000);
        done();
      },
    }),
  });
  const config = parseEnv(schedulerEnv, { ...schedulerEnvOf(w), ...extra });
  const service = SchedulerService.create(config, logger);
  await service.start();
  return { service, logs: () => logs };
}

/**
 * A scheduler as a real process (for tests that kill it with SIGKILL: it cannot resign, its lease
 * must expire), on the world's prefix and region; `output()` is the tail of what it printed.
 */
export function spawnScheduler(
  w: World,
  instanceId: string,
  extra: Record<string, string> = {},
): { process: ChildProcess; output: () => string } {
  const child = spawn(process.execPath, [join(REPO_ROOT, 'services/scheduler/src/index.ts')], {
    env: { PATH: process.env.PATH, ...schedulerEnvOf(w), ...extra, BERTH_INSTANCE_ID: instanceId, LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (d) => (output = (output + d).slice(-20_000)));
  child.stderr?.on('data', (d) => (output = (output + d).slice(-20_000)));
  return { process: child, output: () => output };
}

export function appRecord(name: string, extra: Partial<App> = {}): App {
  const now = new Date().toISOString();
  return {
    name,
    region: 'set-by-putApp',
    image: 'berth/sample-app',
    description: '',
    // Ready at the first probe, and not unready for a moment of machine load: with 1 s timeouts
    // and 3 failures, a kubelet starved during the full suite took a pod out of service and the
    // tests that watch the ready count saw the app itself dip, not the scheduler's moves.
    healthCheck: {
      path: '/healthz',
      port: 8080,
      initialDelaySeconds: 0,
      periodSeconds: 1,
      timeoutSeconds: 5,
      failureThreshold: 10,
    },
    ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    minCells: 2,
    owner: 'alice',
    lastVersion: 1,
    createdAt: now,
    updatedAt: now,
    ...extra,
  };
}

export function versionRecord(app: string, number: number, extra: Partial<Version> = {}): Version {
  const now = new Date().toISOString();
  return {
    app,
    name: `v${number}`,
    number,
    imageTag: 'v1',
    replicas: 4,
    cpu: '20m',
    memory: '16Mi',
    env: {},
    ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    // Ready at the first probe, and not unready for a moment of machine load: with 1 s timeouts
    // and 3 failures, a kubelet starved during the full suite took a pod out of service and the
    // tests that watch the ready count saw the app itself dip, not the scheduler's moves.
    healthCheck: {
      path: '/healthz',
      port: 8080,
      initialDelaySeconds: 0,
      periodSeconds: 1,
      timeoutSeconds: 5,
      failureThreshold: 10,
    },
    command: [],
    createdAt: now,
    createdBy: 'alice',
    updatedAt: now,
    ...extra,
  };
}

/** Writes an app (in the world's region) and its versions, as the API does. */
export async function putApp(w: World, app: App, versions: Version[]): Promise<void> {
  await w.etcd.put(w.keys.app(app.name)).value(JSON.stringify({ ...app, region: w.region }));
  for (const v of versions) await w.etcd.put(w.keys.version(app.name, v.name)).value(JSON.stringify(v));
}

export async function scale(w: World, app: string, version: string, replicas: number): Promise<void> {
  const raw = await w.etcd.get(w.keys.version(app, version)).string();
  const v = JSON.parse(raw as string) as Version;
  await w.etcd.put(w.keys.version(app, version)).value(JSON.stringify({ ...v, replicas }));
}

export async function placement(w: World, app: string, version: string): Promise<Placement | undefined> {
  const raw = await w.etcd.get(w.keys.placement(app, version)).string();
  return raw ? placementSchema.parse(JSON.parse(raw)) : undefined;
}

/** Available replicas of a version per cell, from the cells themselves. */
export async function availableIn(app: string, version: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  // Only "no such Deployment" is zero. A read that failed (a slow API server under load) says
  // nothing about what runs: it throws, and a caller skips the sample.
  for (const name of CELLS) out[name] = await availableOne(name, app, version);
  return out;
}

/**
 * Available replicas of an app's versions summed over every cell, for tests that assert the app
 * never drops below its ready count while replicas move. The reads are not one snapshot: reading
 * cell-a (still coming up) before cell-b (already drained after cell-a came up) would add an old
 * low value to a new low value and report a dip that never happened. So every Deployment is read
 * twice, forward then in reverse, and each counts with its higher value: for any two Deployments,
 * one's first read precedes the other's last, so a move that brings one up before it takes the
 * other down is seen whole. A real dip lasts as long as a pod takes to start, and shows in both.
 * Undefined when a read failed (no sample).
 */
export async function sampleAvailable(
  app: string,
  versions: string[],
): Promise<{ total: number; seen: Record<string, number> } | undefined> {
  const order = versions.flatMap((v) => CELLS.map((c) => [v, c] as const));
  const seen: Record<string, number> = {};
  try {
    for (const [version, cell] of [...order, ...[...order].reverse()]) {
      const n = await availableOne(cell, app, version);
      const key = `${version}@${cell}`;
      seen[key] = Math.max(seen[key] ?? 0, n);
    }
  } catch {
    return undefined;
  }
  return { total: Object.values(seen).reduce((a, b) => a + b, 0), seen };
}

async function availableOne(cell: string, app: string, version: string): Promise<number> {
  try {
    const d = await cells[cell]?.apps.readNamespacedDeployment({ name: deploymentName(app, version), namespace: app });
    return d?.status?.availableReplicas ?? 0;
  } catch (err) {
    if (kubeErrorStatus(err) !== 404) throw new UnavailableError(`reading ${cell}: ${(err as Error).message}`);
    return 0;
  }
}

/** Waits until the version runs `want` available replicas per cell (cells not named: none). */
export async function waitAvailable(
  app: string,
  version: string,
  want: Record<string, number>,
  timeoutMs = 90_000,
): Promise<void> {
  await waitFor(
    async () => {
      const got = await availableIn(app, version);
      return CELLS.every((c) => (got[c] ?? 0) === (want[c] ?? 0)) ? true : undefined;
    },
    { timeoutMs, intervalMs: 250, message: `${app}/${version} available as ${JSON.stringify(want)}` },
  );
}

/** Berth's Deployments of an app in a cell. */
export async function deploymentsIn(cell: string, app: string): Promise<string[]> {
  const list = await cells[cell]?.apps.listNamespacedDeployment({
    namespace: app,
    labelSelector: `${LABELS.managedBy}=${MANAGED_BY}`,
  });
  return (list?.items ?? []).map((d) => d.metadata?.name as string).sort();
}

export async function cordon(w: World, cell: string, state: 'active' | 'cordoned'): Promise<void> {
  const raw = await w.etcd.get(w.keys.cell(w.region, cell)).string();
  const c = JSON.parse(raw as string) as Cell;
  await w.etcd.put(w.keys.cell(w.region, cell)).value(JSON.stringify({ ...c, state }));
}

export function cellWrites(service: SchedulerService): Promise<number> {
  return service.runtime.metrics
    .getSingleMetric('berth_scheduler_cell_writes_total')
    ?.get()
    .then((m) => m.values.reduce((n, v) => n + v.value, 0)) as Promise<number>;
}

export async function deleteNamespaces(app: string): Promise<void> {
  for (const cell of Object.values(cells)) await cell.core.deleteNamespace({ name: app }).catch(() => undefined);
}

/** The credential in an app's pull Secret in a cell, as a kubelet would read it; undefined when there is none. */
export async function pullSecretIn(
  cell: string,
  app: string,
): Promise<{ type?: string; registry: string; username: string; password: string; auth: string } | undefined> {
  try {
    const secret = await cells[cell]?.core.readNamespacedSecret({ name: 'berth-registry', namespace: app });
    const json = Buffer.from(secret?.data?.['.dockerconfigjson'] ?? '', 'base64').toString('utf8');
    const auths = (JSON.parse(json) as { auths: Record<string, { username: string; password: string; auth: string }> })
      .auths;
    const [registry, entry] = Object.entries(auths)[0] ?? [];
    if (!registry || !entry || Object.keys(auths).length !== 1) throw new Error(`unexpected auths in ${cell}/${app}`);
    return { type: secret?.type, registry, ...entry };
  } catch (err) {
    if (kubeErrorStatus(err) === 404) return undefined;
    throw err;
  }
}

/** Writes of one kind to the cells since the scheduler started. */
export function cellWritesOf(service: SchedulerService, kind: string): Promise<number> {
  return service.runtime.metrics
    .getSingleMetric('berth_scheduler_cell_writes_total')
    ?.get()
    .then((m) => m.values.filter((v) => v.labels.kind === kind).reduce((n, v) => n + v.value, 0)) as Promise<number>;
}
