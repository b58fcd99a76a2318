/**
 * cell-b, the second real cell on this host, runs its pods on berth-ipam with a pool of its own
 * (198.19.32.0/21, infra/ipam.sh): its pods' addresses come from that pool and are recorded under
 * cell-b and its node, apart from cell-a's.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { loadCellClient } from '@berth/shared/kube';
import { REPO_ROOT, regionEnv, uniqueId, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { contains, ipToInt, parseCidr } from '../src/ipam/cidr.ts';

const env = regionEnv();
const cellB = loadCellClient(env.KUBECONFIG_DIR ?? join(REPO_ROOT, '.local/cells'), 'cell-b');
const ns = `ipam-b-${uniqueId(6)}`;
const cnictlBin = join(REPO_ROOT, '.local/bin/cnictl');

function cnictl(cell: string, ...args: string[]): { code: number; out: string; err: string } {
  const res = spawnSync(cnictlBin, ['--cell', cell, ...args], {
    encoding: 'utf8',
    env: { ...process.env, ETCD_ENDPOINTS: env.ETCD_ENDPOINTS },
  });
  return { code: res.status ?? -1, out: res.stdout, err: res.stderr };
}

beforeAll(async () => {
  await cellB.core.createNamespace({ body: { metadata: { name: ns } } });
});

afterAll(async () => {
  await cellB.core.deleteNamespace({ name: ns }).catch(() => undefined);
});

describe('cell-b on berth-ipam', () => {
  it("gives its pods addresses from cell-b's own pool, recorded under cell-b and its node", async () => {
    await cellB.core.createNamespacedPod({
      namespace: ns,
      body: {
        metadata: { name: 'first' },
        spec: {
          terminationGracePeriodSeconds: 0,
          containers: [{ name: 'app', image: env.BERTH_SAMPLE_IMAGE ?? '127.0.0.1:5000/berth/sample-app:v1' }],
        },
      },
    });
    const ip = await waitFor(
      async () => {
        const pod = await cellB.core.readNamespacedPod({ name: 'first', namespace: ns });
        return pod.status?.phase === 'Running' && pod.status.podIP ? pod.status.podIP : undefined;
      },
      { timeoutMs: 60_000, message: 'pod first running in cell-b' },
    );
    expect(contains(parseCidr('198.19.32.0/21'), ipToInt(ip))).toBe(true);

    const pools = cnictl('cell-b', '--json', 'pool', 'list');
    expect(pools.code, pools.err).toBe(0);
    expect((JSON.parse(pools.out) as { cidr: string }[]).map((p) => p.cidr)).toEqual(['198.19.32.0/21']);
    const list = cnictl('cell-b', '--json', 'ip', 'list', '--node', 'cell-b-node0');
    expect(list.code, list.err).toBe(0);
    const allocations = JSON.parse(list.out) as { ip: string; namespace?: string; pod?: string }[];
    expect(allocations.find((a) => a.ip === ip)).toMatchObject({ namespace: ns, pod: 'first' });
    // cell-a's records know nothing of it.
    const inA = JSON.parse(cnictl('cell-a', '--json', 'ip', 'list').out) as { ip: string }[];
    expect(inA.map((a) => a.ip)).not.toContain(ip);

    const res = await fetch(`http://${ip}:8080/healthz`, { signal: AbortSignal.timeout(3000) });
    expect(res.status).toBe(200);
  });
});
