/**
 * Every write the scheduler makes to a cell goes through here: server-side apply with Berth's
 * field manager, deletes that refuse objects Berth did not create, and a counter per cell, kind
 * and verb (`berth_scheduler_cell_writes_total`), so "a restarted scheduler writes nothing" can be
 * measured.
 */
import { kubeErrorStatus } from '@berth/shared/kube';
import { FIELD_MANAGER, LABELS, MANAGED_BY } from '@berth/shared/model';
import { type KubernetesObject, PatchStrategy } from '@kubernetes/client-node';
import type { Counter } from 'prom-client';
import type { CellRuntime } from '../cells/cell-runtime.ts';

export class CellWriter {
  readonly #writes: Counter<'cell' | 'kind' | 'verb'>;

  constructor(writes: Counter<'cell' | 'kind' | 'verb'>) {
    this.#writes = writes;
  }

  async apply(cell: CellRuntime, obj: KubernetesObject): Promise<void> {
    this.#writes.inc({ cell: cell.name, kind: obj.kind ?? '?', verb: 'apply' });
    await cell.client.objects.patch(obj, undefined, undefined, FIELD_MANAGER, true, PatchStrategy.ServerSideApply);
  }

  /** Deletes an object Berth created; one without Berth's label is left alone. Gone already is fine. */
  async delete(cell: CellRuntime, obj: KubernetesObject): Promise<void> {
    if (obj.metadata?.labels?.[LABELS.managedBy] !== MANAGED_BY) {
      throw new Error(
        `refusing to delete ${obj.kind} ${obj.metadata?.namespace ?? ''}/${obj.metadata?.name}: Berth did not create it`,
      );
    }
    this.#writes.inc({ cell: cell.name, kind: obj.kind ?? '?', verb: 'delete' });
    try {
      await cell.client.objects.delete(
        {
          apiVersion: obj.apiVersion,
          kind: obj.kind,
          metadata: { name: obj.metadata?.name, namespace: obj.metadata?.namespace },
        },
        undefined,
        undefined,
        undefined,
        undefined,
        'Background',
      );
    } catch (err) {
      if (kubeErrorStatus(err) !== 404) throw err;
    }
  }
}
