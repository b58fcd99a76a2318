/**
 * Watches the benchmark's Deployments in every cell and remembers when each one first reached its
 * current replicas and when it became available, so "every Deployment applied" is timed to the
 * watch event, not to a polling interval.
 */
import type { CellClient } from '@berth/shared/kube';
import { type V1Deployment, Watch } from '@kubernetes/client-node';

type Seen = { replicas: number; replicasAt: number; available: boolean; availableAt: number };

export class DeploymentWatch {
  readonly #seen = new Map<string, Seen>();
  readonly #aborts: AbortController[] = [];
  #stopped = false;

  /** Starts one watch per cell on the Deployments matching `labelSelector`. */
  async start(clients: CellClient[], labelSelector: string): Promise<void> {
    await Promise.all(clients.map((c) => this.#watch(c, labelSelector)));
  }

  async #watch(client: CellClient, labelSelector: string): Promise<void> {
    const abort = await new Watch(client.kubeConfig).watch(
      '/apis/apps/v1/deployments',
      { labelSelector },
      (phase: string, d: V1Deployment) => this.#note(client.cell, phase, d),
      () => {
        // The server ends watches now and then: watch again (its initial list re-sends every object,
        // which changes no recorded time since the state is the same).
        if (!this.#stopped) void this.#watch(client, labelSelector).catch(() => undefined);
      },
    );
    this.#aborts.push(abort);
  }

  #note(cell: string, phase: string, d: V1Deployment): void {
    const key = `${cell}/${d.metadata?.namespace}/${d.metadata?.name}`;
    if (phase === 'DELETED') {
      this.#seen.delete(key);
      return;
    }
    const now = Date.now();
    const replicas = d.spec?.replicas ?? 1;
    const available = (d.status?.availableReplicas ?? 0) >= replicas;
    const seen = this.#seen.get(key);
    this.#seen.set(key, {
      replicas,
      replicasAt: seen?.replicas === replicas ? seen.replicasAt : now,
      available,
      availableAt: seen?.available === available ? seen.availableAt : now,
    });
  }

  /**
   * When every expected Deployment (`cell/namespace/name` → replicas) had its replicas (`applied`)
   * and was available, or undefined while one is missing.
   */
  doneAt(expected: Map<string, number>): { applied: number; available: number | undefined } | undefined {
    let applied = 0;
    let available: number | undefined = 0;
    for (const [key, replicas] of expected) {
      const seen = this.#seen.get(key);
      if (seen?.replicas !== replicas) return undefined;
      applied = Math.max(applied, seen.replicasAt);
      available = seen.available && available !== undefined ? Math.max(available, seen.availableAt) : undefined;
    }
    return { applied, available };
  }

  stop(): void {
    this.#stopped = true;
    for (const a of this.#aborts) a.abort();
  }
}
