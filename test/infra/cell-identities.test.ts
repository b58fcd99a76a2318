/**
 * Each Berth service signs in to a cell as a narrow identity of its own (infra/cells.sh,
 * infra/k8s/berth-rbac.yaml, docs/cells.md "Identities"), not as the cell's admin: discovery and
 * the IPAM checker only read, the scheduler manages the apps' objects and nothing else.
 */
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { type CellClient, kubeconfigPath, kubeErrorStatus, loadCellClient } from '@berth/shared/kube';
import { REPO_ROOT, regionEnv, uniqueId } from '@berth/shared/testing';
import { RbacAuthorizationV1Api } from '@kubernetes/client-node';
import { afterAll, describe, expect, it } from 'vitest';

const region = regionEnv();
const setting = (name: string): string | undefined => process.env[name] ?? region[name];
const DIR = setting('KUBECONFIG_DIR') ?? join(REPO_ROOT, '.local/cells');
const CELLS = (setting('BERTH_CELLS') ?? 'cell-a').split(',').filter(Boolean);
const NS = `identities-${uniqueId()}`;

/** The status a call fails with (0 when it succeeds). */
async function status(call: () => Promise<unknown>): Promise<number> {
  try {
    await call();
    return 0;
  } catch (err) {
    return kubeErrorStatus(err) ?? -1;
  }
}

function as(cell: string, identity: string): CellClient {
  const path = kubeconfigPath(DIR, cell, identity);
  // The identity's own file, not the admin's it would fall back to.
  expect(basename(path)).toBe(`${cell}.${identity}.kubeconfig`);
  return loadCellClient(DIR, cell, identity);
}

const deployment = (namespace: string) => ({
  metadata: { name: 'probe', namespace },
  spec: {
    replicas: 0,
    selector: { matchLabels: { app: 'probe' } },
    template: { metadata: { labels: { app: 'probe' } }, spec: { containers: [{ name: 'c', image: 'probe' }] } },
  },
});

afterAll(async () => {
  for (const cell of CELLS) {
    if (!existsSync(join(DIR, `${cell}.kubeconfig`))) continue;
    await loadCellClient(DIR, cell)
      .core.deleteNamespace({ name: NS })
      .catch(() => undefined);
  }
});

describe.each(CELLS)('service identities in %s', (cell) => {
  it('discovery reads EndpointSlices and pods, and cannot create a Deployment or read a Secret', async () => {
    const discovery = as(cell, 'discovery');
    expect(await status(() => discovery.discovery.listEndpointSliceForAllNamespaces({ limit: 1 }))).toBe(0);
    expect(await status(() => discovery.core.listPodForAllNamespaces({ limit: 1 }))).toBe(0);
    expect(
      await status(() =>
        discovery.apps.createNamespacedDeployment({ namespace: 'default', body: deployment('default') }),
      ),
    ).toBe(403);
    expect(await status(() => discovery.core.listNamespacedSecret({ namespace: 'kube-system' }))).toBe(403);
  });

  it('the IPAM checker reads pods and nothing else', async () => {
    const ipam = as(cell, 'ipam');
    expect(await status(() => ipam.core.listPodForAllNamespaces({ limit: 1 }))).toBe(0);
    expect(await status(() => ipam.discovery.listEndpointSliceForAllNamespaces({ limit: 1 }))).toBe(403);
    expect(await status(() => ipam.core.createNamespace({ body: { metadata: { name: NS } } }))).toBe(403);
  });

  it('the scheduler manages a namespace and its Deployment, and cannot grant itself more', async () => {
    const scheduler = as(cell, 'scheduler');
    expect(await status(() => scheduler.core.createNamespace({ body: { metadata: { name: NS } } }))).toBe(0);
    expect(await status(() => scheduler.apps.createNamespacedDeployment({ namespace: NS, body: deployment(NS) }))).toBe(
      0,
    );
    expect(await status(() => scheduler.core.listNode({ limit: 1 }))).toBe(0);
    // Not its kinds: config maps, pods of its own, RBAC, node changes.
    expect(await status(() => scheduler.core.listNamespacedConfigMap({ namespace: 'kube-system' }))).toBe(403);
    expect(
      await status(() =>
        scheduler.core.createNamespacedPod({
          namespace: NS,
          body: { metadata: { name: 'p' }, spec: { containers: [{ name: 'c', image: 'probe' }] } },
        }),
      ),
    ).toBe(403);
    const rbac = scheduler.kubeConfig.makeApiClient(RbacAuthorizationV1Api);
    expect(
      await status(() =>
        rbac.createClusterRoleBinding({
          body: {
            metadata: { name: `${NS}-escalate` },
            roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'cluster-admin' },
            subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: 'berth-scheduler' }],
          },
        }),
      ),
    ).toBe(403);
    expect(await status(() => scheduler.core.deleteNode({ name: `${cell}-node0` }))).toBe(403);
  });
});
