/**
 * Every write the scheduler makes to a cell goes through here: server-side apply with Berth's
 * field manager, deletes that refuse objects Berth did not create, and a counter per cell, kind
 * and verb (`berth_scheduler_cell_writes_total`), so "a restarted scheduler writes nothing" can be
 * measured.
 */
import { BerthError } from '@berth/shared/errors';
import { kubeErrorStatus } from '@berth/shared/kube';
import { FIELD_MANAGER, LABELS, MANAGED_BY } from '@berth/shared/model';
import { type KubernetesObject, PatchStrategy } from '@kubernetes/client-node';
import type { Counter } from 'prom-client';
import type { CellRuntime } from '../cells/cell-runtime.ts';
import { hashOf } from './manifests.ts';

export class CellWriter {
  readonly #writes: Counter<'cell' | 'kind' | 'verb'>;

  constructor(writes: Counter<'cell' | 'kind' | 'verb'>) {
    this.#writes = writes;
  }

  /**
   * Applies `desired` unless the cell already has it: the informer's copy (`current`) carries the
   * same spec hash (and, for a Deployment, the same replicas), or this writer applied exactly it
   * and the informer has not caught up yet. Returns true when it wrote.
   */
  async ensure(cell: CellRuntime, desired: KubernetesObject, current: KubernetesObject | undefined): Promise<boolean> {
    const signature = `${hashOf(desired)}`;
    if (cell.lastWritten(desired) === signature) return false;
    // Informers see only Berth's objects: one they do not have may still exist, made by someone
    // else. Berth never takes over an object it did not create.
    const existing = current ?? (await this.#read(cell, desired));
    if (existing && existing.metadata?.labels?.[LABELS.managedBy] !== MANAGED_BY) {
      throw new ForeignObjectError(desired, 'write');
    }
    if (existing && hashOf(existing) === signature && replicasOf(existing) === replicasOf(desired)) return false;
    await this.apply(cell, desired);
    cell.noteWritten(desired, signature);
    return true;
  }

  async #read(cell: CellRuntime, obj: KubernetesObject): Promise<KubernetesObject | undefined> {
    try {
      return await cell.client.objects.read({
        apiVersion: obj.apiVersion as string,
        kind: obj.kind as string,
        metadata: {
          name: obj.metadata?.name as string,
          ...(obj.metadata?.namespace ? { namespace: obj.metadata.namespace } : {}),
        },
      });
    } catch (err) {
      if (kubeErrorStatus(err) === 404) return undefined;
      throw err;
    }
  }

  async apply(cell: CellRuntime, obj: KubernetesObject): Promise<void> {
    this.#writes.inc({ cell: cell.name, kind: obj.kind ?? '?', verb: 'apply' });
    await cell.client.objects.patch(obj, undefined, undefined, FIELD_MANAGER, true, PatchStrategy.ServerSideApply);
  }

  /** Deletes an object Berth created; one without Berth's label is left alone. Gone already is fine. */
  async delete(cell: CellRuntime, obj: KubernetesObject): Promise<void> {
    if (obj.metadata?.labels?.[LABELS.managedBy] !== MANAGED_BY) {
      throw new ForeignObjectError(obj, 'delete');
    }
    if (cell.lastWritten(obj) === 'deleted') return; // asked already; the informer has not caught up
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
    cell.noteWritten(obj, 'deleted');
  }
}

/** An object Berth would write or delete was not made by Berth: it is left alone. */
export class ForeignObjectError extends BerthError {
  static readonly CODE = 'foreign-object';

  constructor(obj: KubernetesObject, verb: 'write' | 'delete') {
    const name = `${obj.kind} ${obj.metadata?.namespace ? `${obj.metadata.namespace}/` : ''}${obj.metadata?.name}`;
    super(
      verb === 'write'
        ? `${name} exists and was not created by Berth; leaving it alone`
        : `refusing to delete ${name}: Berth did not create it`,
    );
  }
}

function replicasOf(obj: KubernetesObject): number | undefined {
  return (obj as { spec?: { replicas?: number } }).spec?.replicas;
}
