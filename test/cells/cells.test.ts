/**
 * The local region's Kubernetes cells (infra/cells.sh, docs/cells.md), through
 * @kubernetes/client-node as Berth's services use them: cell-a runs real containers on a kubelet
 * with containerd, and so does cell-b, with a kubelet, a containerd, a bridge and an IP pool of its
 * own beside cell-a's on the same host (KWOK cells, from cell-c on, are for benchmarks). Each run
 * works in a namespace of its own in each cell and deletes it afterwards.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { REPO_ROOT, regionEnv, uniqueId, waitFor } from '@berth/shared/testing';
import * as k8s from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const region = regionEnv();
const setting = (name: string): string | undefined => process.env[name] ?? region[name];
const CELLS_DIR = setting('KUBECONFIG_DIR') ?? join(REPO_ROOT, '.local/cells');
const SAMPLE_IMAGE = setting('BERTH_SAMPLE_IMAGE') ?? '127.0.0.1:5000/berth/sample-app:v1';
const NAMESPACE = `cells-test-${uniqueId()}`;
const APP = 'sample';

type Cell = {
  name: string;
  kc: k8s.KubeConfig;
  core: k8s.CoreV1Api;
  apps: k8s.AppsV1Api;
  discovery: k8s.DiscoveryV1Api;
  coordination: k8s.CoordinationV1Api;
};

function openCell(name: string): Cell {
  const kc = new k8s.KubeConfig();
  kc.loadFromFile(join(CELLS_DIR, `${name}.kubeconfig`));
  return {
    name,
    kc,
    core: kc.makeApiClient(k8s.CoreV1Api),
    apps: kc.makeApiClient(k8s.AppsV1Api),
    discovery: kc.makeApiClient(k8s.DiscoveryV1Api),
    coordination: kc.makeApiClient(k8s.CoordinationV1Api),
  };
}

const cellA = openCell('cell-a');
const cellB = openCell('cell-b');

function sampleDeployment(replicas: number): k8s.V1Deployment {
  return {
    metadata: { name: APP, labels: { app: APP } },
    spec: {
      replicas,
      selector: { matchLabels: { app: APP } },
      template: {
        metadata: { labels: { app: APP } },
        spec: {
          // Graceful stops are not what these tests are about.
          terminationGracePeriodSeconds: 1,
          containers: [
            {
              name: 'app',
              image: SAMPLE_IMAGE,
              ports: [{ containerPort: 8080 }],
              readinessProbe: { httpGet: { path: '/healthz', port: 8080 }, periodSeconds: 1 },
              resources: { requests: { cpu: '10m', memory: '16Mi' } },
            },
          ],
        },
      },
    },
  };
}

function sampleService(): k8s.V1Service {
  return {
    metadata: { name: APP },
    spec: { selector: { app: APP }, ports: [{ port: 80, targetPort: 8080 }] },
  };
}

async function deploymentAvailable(cell: Cell, replicas: number): Promise<boolean> {
  const d = await cell.apps.readNamespacedDeployment({ name: APP, namespace: NAMESPACE });
  const available = d.status?.conditions?.find((c) => c.type === 'Available')?.status === 'True';
  return available && d.status?.availableReplicas === replicas && d.status?.updatedReplicas === replicas;
}

async function readyPods(cell: Cell): Promise<k8s.V1Pod[]> {
  const pods = await cell.core.listNamespacedPod({ namespace: NAMESPACE, labelSelector: `app=${APP}` });
  return pods.items.filter(
    (p) =>
      !p.metadata?.deletionTimestamp &&
      p.status?.phase === 'Running' &&
      p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True'),
  );
}

/** The addresses of the ready endpoints of the sample Service's EndpointSlices. */
async function readyEndpoints(cell: Cell): Promise<string[]> {
  const slices = await cell.discovery.listNamespacedEndpointSlice({
    namespace: NAMESPACE,
    labelSelector: `kubernetes.io/service-name=${APP}`,
  });
  return slices.items
    .flatMap((s) => s.endpoints ?? [])
    .filter((e) => e.conditions?.ready === true)
    .flatMap((e) => e.addresses)
    .sort();
}

async function getText(url: string): Promise<{ status: number; body: string }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(3000) });
  return { status: res.status, body: await res.text() };
}

/** Runs a command in a pod through the API server's exec (websocket), as `kubectl exec` does. */
async function execInPod(cell: Cell, pod: string, command: string[]): Promise<{ stdout: string; status: string }> {
  let stdout = '';
  let stderr = '';
  const sink = (append: (s: string) => void) =>
    new Writable({
      write(chunk, _encoding, done) {
        append(chunk.toString());
        done();
      },
    });
  const status = await new Promise<k8s.V1Status>((resolve, reject) => {
    new k8s.Exec(cell.kc)
      .exec(
        NAMESPACE,
        pod,
        'app',
        command,
        sink((s) => {
          stdout += s;
        }),
        sink((s) => {
          stderr += s;
        }),
        null,
        false,
        (s) => resolve(s),
      )
      .catch(reject);
  });
  if (status.status !== 'Success') throw new Error(`exec ${command.join(' ')}: ${status.message ?? ''} ${stderr}`);
  return { stdout, status: status.status };
}

beforeAll(async () => {
  for (const cell of [cellA, cellB]) {
    if (!existsSync(join(CELLS_DIR, `${cell.name}.kubeconfig`))) {
      throw new Error(`no kubeconfig for ${cell.name} in ${CELLS_DIR}: run \`make up\` (infra/cells.sh up)`);
    }
    await cell.core.createNamespace({ body: { metadata: { name: NAMESPACE, labels: { 'berth.dev/test': 'cells' } } } });
  }
});

afterAll(async () => {
  for (const cell of [cellA, cellB]) {
    await cell.core.deleteNamespace({ name: NAMESPACE }).catch(() => undefined);
  }
});

describe('cell-a, a real cell', () => {
  it('has a Ready node whose container runtime is containerd', async () => {
    const nodes = await cellA.core.listNode();
    const node = nodes.items.find((n) => n.metadata?.labels?.['berth.dev/cell'] === 'cell-a');
    expect(node, 'the kubelet registered no node labelled berth.dev/cell=cell-a').toBeDefined();
    expect(node?.status?.conditions?.find((c) => c.type === 'Ready')?.status).toBe('True');
    expect(node?.status?.nodeInfo?.containerRuntimeVersion).toMatch(/^containerd:\/\//);
    expect(node?.status?.nodeInfo?.kubeletVersion).toMatch(/^v1\.34\./);
  });

  it('runs a Deployment of the sample image until it is Available, and its pods answer HTTP on their pod IPs from the host', async () => {
    await cellA.apps.createNamespacedDeployment({ namespace: NAMESPACE, body: sampleDeployment(2) });
    await waitFor(() => deploymentAvailable(cellA, 2), {
      timeoutMs: 90_000,
      intervalMs: 500,
      message: 'the sample Deployment in cell-a to be Available',
    });
    const pods = await readyPods(cellA);
    expect(pods).toHaveLength(2);
    for (const pod of pods) {
      const ip = pod.status?.podIP ?? '';
      expect(ip).toMatch(/^198\.18\./);
      const hello = await getText(`http://${ip}:8080/`);
      expect(hello.status).toBe(200);
      expect(JSON.parse(hello.body)).toMatchObject({ app: 'sample-app', hostname: pod.metadata?.name });
      expect((await getText(`http://${ip}:8080/healthz`)).body.trim()).toBe('ok');
    }
  });

  it('serves logs and exec of its pods through the API server, and pods reach each other', async () => {
    const [first, second] = await readyPods(cellA);
    const name = first?.metadata?.name ?? '';
    await fetch(`http://${first?.status?.podIP}:8080/`, { signal: AbortSignal.timeout(3000) });
    const logs = await waitFor(
      async () => {
        const text = await cellA.core.readNamespacedPodLog({ name, namespace: NAMESPACE, container: 'app' });
        return text.includes('GET /') ? text : false;
      },
      { timeoutMs: 10_000, intervalMs: 250, message: 'the request to show in the pod log' },
    );
    expect(logs).toContain('listening on :8080');

    const version = await execInPod(cellA, name, ['/sample-app', 'version']);
    expect(version.stdout.trim()).toMatch(/^v\d+$/);
    const neighbour = await execInPod(cellA, name, ['/sample-app', 'get', `http://${second?.status?.podIP}:8080/`]);
    expect(JSON.parse(neighbour.stdout)).toMatchObject({ hostname: second?.metadata?.name });
  });

  it('brings its node back Ready, with the pods still running, after the kubelet is killed and started again', async () => {
    const pidFile = join(REPO_ROOT, '.local/run/cell-a-kubelet.pid');
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    const podsBefore = (await readyPods(cellA)).map((p) => p.metadata?.uid).sort();
    expect(podsBefore).toHaveLength(2);
    const nodeName = (await cellA.core.listNode()).items.find(
      (n) => n.metadata?.labels?.['berth.dev/cell'] === 'cell-a',
    )?.metadata?.name;
    const killedAt = Date.now();

    process.kill(pid, 'SIGKILL');
    await waitFor(
      () => {
        try {
          process.kill(pid, 0);
          return false;
        } catch {
          return true;
        }
      },
      { timeoutMs: 10_000, message: 'the kubelet to exit' },
    );
    // `cells.sh up cell-a` starts what is not running in cell-a (the kubelet) and waits until its
    // node is Ready; other cells, say a benchmark's, are left alone.
    await promisify(execFile)('bash', [join(REPO_ROOT, 'infra/cells.sh'), 'up', 'cell-a'], {
      cwd: REPO_ROOT,
      timeout: 120_000,
    });

    // Ready on a heartbeat of the new kubelet, not the status the killed one left behind.
    await waitFor(
      async () => {
        const lease = await cellA.coordination.readNamespacedLease({
          name: nodeName ?? '',
          namespace: 'kube-node-lease',
        });
        const renewed = lease.spec?.renewTime ? new Date(lease.spec.renewTime).getTime() : 0;
        const node = await cellA.core.readNode({ name: nodeName ?? '' });
        return renewed > killedAt && node.status?.conditions?.find((c) => c.type === 'Ready')?.status === 'True';
      },
      { timeoutMs: 60_000, intervalMs: 500, message: 'the restarted kubelet to renew its lease with the node Ready' },
    );
    const podsAfter = await waitFor(
      async () => {
        const pods = await readyPods(cellA);
        return pods.length === 2 ? pods : false;
      },
      { timeoutMs: 60_000, intervalMs: 500, message: 'both pods to be Running and Ready again' },
    );
    // The kubelet's restart leaves running containers alone: the same pods, still answering.
    expect(podsAfter.map((p) => p.metadata?.uid).sort()).toEqual(podsBefore);
    for (const pod of podsAfter) {
      expect((await getText(`http://${pod.status?.podIP}:8080/healthz`)).status).toBe(200);
    }
  });
});

describe('cell-b, a second real cell on the same host', () => {
  it('has a Ready node of its own on containerd, and no simulated nodes', async () => {
    const nodes = (await cellB.core.listNode()).items;
    expect(nodes.map((n) => n.metadata?.name)).toEqual(['cell-b-node0']);
    const node = nodes[0];
    expect(node?.metadata?.labels?.['berth.dev/cell']).toBe('cell-b');
    expect(node?.status?.conditions?.find((c) => c.type === 'Ready')?.status).toBe('True');
    expect(node?.status?.nodeInfo?.containerRuntimeVersion).toMatch(/^containerd:\/\//);
    expect(node?.status?.addresses?.find((a) => a.type === 'InternalIP')?.address).toBe('198.19.32.1');
  });

  it("runs a Deployment until it is Available, its pods answer HTTP on cell-b's addresses, and cell-a's pods are untouched", async () => {
    const podsOfA = async () =>
      (await readyPods(cellA))
        .map((p) => `${p.metadata?.uid}:${p.status?.containerStatuses?.[0]?.restartCount}`)
        .sort();
    const aBefore = await podsOfA();
    const started = Date.now();
    await cellB.apps.createNamespacedDeployment({ namespace: NAMESPACE, body: sampleDeployment(3) });
    await waitFor(() => deploymentAvailable(cellB, 3), {
      timeoutMs: 90_000,
      intervalMs: 250,
      message: 'the sample Deployment in cell-b to be Available',
    });
    console.log(`[cell-b] 3 real pods Available in ${Date.now() - started} ms`);
    const pods = await readyPods(cellB);
    expect(pods).toHaveLength(3);
    for (const pod of pods) {
      expect(pod.spec?.nodeName).toBe('cell-b-node0');
      expect(pod.status?.podIP).toMatch(/^198\.19\.(3[2-9])\./); // inside cell-b's pool 198.19.32.0/21
      const hello = await getText(`http://${pod.status?.podIP}:8080/`);
      expect(JSON.parse(hello.body)).toMatchObject({ app: 'sample-app', hostname: pod.metadata?.name });
    }
    const logs = await cellB.core.readNamespacedPodLog({ name: pods[0]?.metadata?.name ?? '', namespace: NAMESPACE });
    expect(logs).toContain('listening on :8080');
    // Two kubelets on one host, each under its own cgroup root: cell-b's kubelet neither kills
    // nor restarts cell-a's containers.
    expect(await podsOfA()).toEqual(aBefore);
  });
});

describe('EndpointSlices', () => {
  it.each([
    ['cell-a', cellA, 2],
    ['cell-b', cellB, 3],
  ] as const)('of a Service in %s list the ready pods as ready endpoints', async (_name, cell, replicas) => {
    await cell.core.createNamespacedService({ namespace: NAMESPACE, body: sampleService() });
    const podIPs = async () => (await readyPods(cell)).map((p) => p.status?.podIP ?? '').sort();
    const endpoints = await waitFor(
      async () => {
        const [eps, ips] = await Promise.all([readyEndpoints(cell), podIPs()]);
        return eps.length === replicas && JSON.stringify(eps) === JSON.stringify(ips) ? eps : false;
      },
      { timeoutMs: 30_000, intervalMs: 250, message: `${replicas} ready endpoints in ${cell.name}` },
    );
    expect(endpoints).toHaveLength(replicas);
  });
});
