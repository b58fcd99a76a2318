/**
 * cell-a runs its pods on berth-ipam: new pods get addresses from Berth's pool, and a pod removed
 * while its kubelet is stopped leaves an allocation that `cnictl check` reports and
 * `cnictl release --leaked` frees.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadCellClient } from '@berth/shared/kube';
import { REPO_ROOT, regionEnv, uniqueId, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { contains, ipToInt, parseCidr } from '../src/ipam/cidr.ts';

const env = regionEnv();
const cellA = loadCellClient(env.KUBECONFIG_DIR ?? join(REPO_ROOT, '.local/cells'), 'cell-a');
const ns = `ipam-${uniqueId(6)}`;
const cnictlBin = join(REPO_ROOT, '.local/bin/cnictl');

function cnictl(...args: string[]): { code: number; out: string; err: string } {
  const res = spawnSync(cnictlBin, ['--cell', 'cell-a', ...args], {
    encoding: 'utf8',
    env: { ...process.env, ETCD_ENDPOINTS: env.ETCD_ENDPOINTS },
  });
  return { code: res.status ?? -1, out: res.stdout, err: res.stderr };
}

async function runPod(name: string): Promise<string> {
  await cellA.core.createNamespacedPod({
    namespace: ns,
    body: {
      metadata: { name },
      spec: {
        terminationGracePeriodSeconds: 0,
        dnsPolicy: 'Default',
        containers: [{ name: 'app', image: env.BERTH_SAMPLE_IMAGE ?? '127.0.0.1:5000/berth/sample-app:v1' }],
      },
    },
  });
  return waitFor(
    async () => {
      const pod = await cellA.core.readNamespacedPod({ name, namespace: ns });
      return pod.status?.phase === 'Running' && pod.status.podIP ? pod.status.podIP : undefined;
    },
    { timeoutMs: 60_000, message: `pod ${name} running` },
  );
}

beforeAll(async () => {
  await cellA.core.createNamespace({ body: { metadata: { name: ns } } });
});

afterAll(async () => {
  await cellA.core.deleteNamespace({ name: ns }).catch(() => undefined);
});

describe('cell-a on berth-ipam', () => {
  it('gives new pods addresses from the pool, recorded with their pod, through the resident allocator', async () => {
    const socket = env.IPAM_SOCKET ?? join(REPO_ROOT, '.local/run/ipam/ipam.sock');
    const adds = () => {
      const stats = cnictl('--json', 'stats', '--socket', socket);
      expect(stats.code, stats.err).toBe(0);
      return (JSON.parse(stats.out) as { daemon: { commands: { ADD?: { requests: number } } } | null }).daemon?.commands
        .ADD?.requests;
    };
    const before = adds() ?? 0;
    const ip = await runPod('first');
    // The region's cni-ipam service answered the pod's ADD (the thin plugin did not fall back).
    expect(adds()).toBeGreaterThan(before);
    expect(contains(parseCidr('198.18.0.0/16'), ipToInt(ip))).toBe(true);
    const list = cnictl('--json', 'ip', 'list', '--node', 'cell-a-node0');
    expect(list.code, list.err).toBe(0);
    const allocations = JSON.parse(list.out) as { ip: string; namespace?: string; pod?: string }[];
    expect(allocations.find((a) => a.ip === ip)).toMatchObject({ namespace: ns, pod: 'first' });
    const res = await fetch(`http://${ip}:8080/healthz`);
    expect(res.status).toBe(200);
  });

  it('a pod removed while the kubelet is stopped leaves a leak that check reports and release --leaked frees', {
    timeout: 180_000,
  }, async () => {
    const ip = await runPod('doomed');
    const pid = Number(readFileSync(join(REPO_ROOT, '.local/run/cell-a-kubelet.pid'), 'utf8'));
    try {
      process.kill(pid, 'SIGKILL');
      // The API forgets the pod; nobody runs CNI DEL for it.
      await cellA.core.deleteNamespacedPod({ name: 'doomed', namespace: ns, gracePeriodSeconds: 0 });
      await waitFor(
        async () => !(await cellA.core.readNamespacedPod({ name: 'doomed', namespace: ns }).catch(() => undefined)),
        {
          message: 'pod gone from the API',
        },
      );
      const check = cnictl('--json', 'check');
      expect(check.code).toBe(1); // something is wrong
      const report = JSON.parse(check.out) as { leaked: { ip: string; reason: string }[] };
      expect(report.leaked.find((l) => l.ip === ip)?.reason).toBe(`pod ${ns}/doomed does not exist`);

      const dry = cnictl('release', '--leaked', '--dry-run');
      expect(dry.out).toContain(`would release ${ip}`);
      expect(JSON.parse(cnictl('--json', 'check').out).leaked.map((l: { ip: string }) => l.ip)).toContain(ip);
      const release = cnictl('release', '--leaked');
      expect(release.code, release.err).toBe(0);
      expect(release.out).toContain(`released ${ip}`);
      const after = JSON.parse(cnictl('--json', 'check').out) as { leaked: { ip: string }[] };
      expect(after.leaked.map((l) => l.ip)).not.toContain(ip);
    } finally {
      execFileSync('bash', [join(REPO_ROOT, 'infra/cells.sh'), 'up', 'cell-a'], { stdio: 'ignore', timeout: 120_000 });
    }
    // The kubelet tears the orphan sandbox down; its CNI DEL finds nothing left to free.
    await waitFor(
      async () => {
        const node = (await cellA.core.listNode()).items[0];
        return node?.status?.conditions?.find((c) => c.type === 'Ready')?.status === 'True';
      },
      { timeoutMs: 90_000, message: 'cell-a node Ready again' },
    );
  });

  it('cnictl errors are one line and a non-zero exit', () => {
    const bad = cnictl('pool', 'add', '10.0.0.1/8');
    expect(bad.code).toBe(1);
    expect(bad.err.trim().split('\n')).toHaveLength(1);
    expect(bad.err).toMatch(/^cnictl: 10\.0\.0\.1\/8 is not a network address/);
    const missing = cnictl('release');
    expect(missing.code).toBe(2);
    expect(missing.err.trim()).toBe('cnictl: name the addresses to release, or use --leaked');
  });
});
