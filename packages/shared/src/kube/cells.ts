/**
 * Clients of a region's cells. Credentials come from kubeconfig files, never from etcd: one per
 * cell and service identity (`<KUBECONFIG_DIR>/<cell>.<identity>.kubeconfig`, a narrow RBAC
 * user), else the cell's own (`<KUBECONFIG_DIR>/<cell>.kubeconfig`, the admin's).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { AppsV1Api, CoreV1Api, DiscoveryV1Api, KubeConfig, KubernetesObjectApi } from '@kubernetes/client-node';
import { NotFoundError } from '../errors/index.ts';

export type CellClient = {
  cell: string;
  kubeConfig: KubeConfig;
  core: CoreV1Api;
  apps: AppsV1Api;
  discovery: DiscoveryV1Api;
  objects: KubernetesObjectApi;
};

/** The kubeconfig of `identity` in `cell` when there is one, else the cell's own. */
export function kubeconfigPath(dir: string, cell: string, identity?: string): string {
  if (identity) {
    const own = join(dir, `${cell}.${identity}.kubeconfig`);
    if (existsSync(own)) return own;
  }
  return join(dir, `${cell}.kubeconfig`);
}

/** The clients of one cell as `identity` (see kubeconfigPath); NotFoundError when no kubeconfig is there. */
export function loadCellClient(dir: string, cell: string, identity?: string): CellClient {
  const path = kubeconfigPath(dir, cell, identity);
  if (!existsSync(path)) throw new NotFoundError(`no kubeconfig for cell ${cell} at ${path}`);
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromFile(path);
  return {
    cell,
    kubeConfig,
    core: kubeConfig.makeApiClient(CoreV1Api),
    apps: kubeConfig.makeApiClient(AppsV1Api),
    discovery: kubeConfig.makeApiClient(DiscoveryV1Api),
    objects: KubernetesObjectApi.makeApiClient(kubeConfig),
  };
}

/** The HTTP status of an error from client-node, if it has one. */
export function kubeErrorStatus(err: unknown): number | undefined {
  const e = err as { code?: unknown; statusCode?: unknown; response?: { statusCode?: unknown } };
  for (const v of [e?.code, e?.statusCode, e?.response?.statusCode]) {
    if (typeof v === 'number' && v >= 100 && v < 600) return v;
  }
  return undefined;
}
