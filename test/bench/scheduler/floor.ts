/**
 * The cells' own write floor: the objects Berth applied, sent again by a plain client (no
 * scheduler, no etcd, no informers) as server-side applies into separate namespaces, with a fixed
 * number of requests in flight per cell. Berth's apply time is compared with this.
 */
import type { CellClient } from '@berth/shared/kube';
import { type KubernetesObject, PatchStrategy } from '@kubernetes/client-node';

export const FLOOR_FIELD_MANAGER = 'berth-bench-floor';

/** One app's objects in one cell, in the order they must be written (its Namespace first). */
export type AppObjects = KubernetesObject[];

/**
 * Applies every cell's apps with `concurrency` requests in flight per cell (each in-flight slot
 * writes one app's objects in order); resolves with the wall time in ms.
 */
export async function applyFloor(
  work: { client: CellClient; apps: AppObjects[] }[],
  concurrency: number,
): Promise<number> {
  const started = performance.now();
  await Promise.all(
    work.map(async ({ client, apps }) => {
      let next = 0;
      const slot = async () => {
        for (let i = next++; i < apps.length; i = next++) {
          for (const obj of apps[i] ?? []) {
            await client.objects.patch(
              obj,
              undefined,
              undefined,
              FLOOR_FIELD_MANAGER,
              true,
              PatchStrategy.ServerSideApply,
            );
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(concurrency, apps.length) }, slot));
    }),
  );
  return performance.now() - started;
}
