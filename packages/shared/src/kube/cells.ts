/**
 * Clients of a region's cells. Credentials come from one kubeconfig file per cell
 * (`<KUBECONFIG_DIR>/<cell>.kubeconfig`), never from etcd.
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

export function kubeconfigPath(dir: string, cell: string): string {
  return join(dir, `${cell}.kubeconfig`);
}

/** The clients of one cell; NotFoundError when its kubeconfig is missing. */
export function loadCellClient(dir: string, cell: string): CellClient {
  const path = kubeconfigPath(dir, cell);
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
