/**
 * Every write the scheduler makes to a cell goes through here: server-side apply with Berth's
 * field manager, deletes that refuse objects Berth did not create, and a counter per cell, kind
 * and verb (`berth_scheduler_cell_writes_total`), so "a restarted scheduler writes nothing" can be
 * measured. Writes to a cell pass its CellWriteLimiter (as many at once as the API server's
 * answers allow, one at a time per object) over the cell's keep-alive client.
 */
import { BerthError } from '@berth/shared/errors';
import { kubeErrorStatus } from '@berth/shared/kube';
import { FIELD_MANAGER, LABELS, MANAGED_BY } from '@berth/shared/model';
import type { KubernetesObject } from '@kubernetes/client-node';
import type { Counter, Registry } from 'prom-client';
import type { CellRuntime } from '../cells/cell-runtime.ts';
import { CellWriteLimiter, type CellWriteLimiterOptions } from './limiter.ts';
import { hashOf } from './manifests.ts';

export type CellWriterOptions = {
  /** Where the per-cell limit and in-flight gauges go (the scheduler's `runtime.metrics`). */
  metrics?: Registry;
  /** Limiter settings shared by every cell (initial, max, slowFactor...). */
  limits?: Omit<CellWriteLimiterOptions, 'cell' | 'metrics'>;
};

/** One object to keep in a cell: what Berth wants, and the informer's copy if it has one. */
export type EnsureItem = { desired: KubernetesObject; current: KubernetesObject | undefined };

export class CellWriter {
  readonly #writes: Counter<'cell' | 'kind' | 'verb'>;
  readonly #options: CellWriterOptions;
  readonly #limiters = new Map<string, CellWriteLimiter>();

  constructor(writes: Counter<'cell' | 'kind' | 'verb'>, options: CellWriterOptions = {}) {
    this.#writes = writes;
    this.#options = options;
  }

  /** The write limiter of a cell (one per cell name, kept across runtimes: it describes the server). */
  limiter(cell: string): CellWriteLimiter {
    let limiter = this.#limiters.get(cell);
    if (!limiter) {
      limiter = new CellWriteLimiter({ ...this.#options.limits, cell, metrics: this.#options.metrics });
      this.#limiters.set(cell, limiter);
    }
    return limiter;
  }

  /**
   * Applies `desired` unless the cell already has it: the informer's copy (`current`) carries the
   * same spec hash (and, for a Deployment, the same replicas), or this writer applied exactly it
   * and the informer has not caught up yet. Returns true when it wrote.
   */
  async ensure(cell: CellRuntime, desired: KubernetesObject, current: KubernetesObject | undefined): Promise<boolean> {
    const signature = `${hashOf(desired)}`;
    const pending = cell.lastWritten(desired);
    if (pending === signature) return false;
    // The common case, settled: the informer has what Berth wants, and no write of ours is newer
    // or on its way.
    const limiter = this.limiter(cell.name);
    const key = objectKey(desired);
    if (pending === undefined && current && !limiter.busy(key) && sameObject(current, desired, signature)) {
      return false;
    }
    return limiter.run(key, async () => {
      // Checked again: the write of this object this one waited for may have written it.
      const last = cell.lastWritten(desired);
      if (last === signature) return false;
      const existing = current ?? (await this.#existing(cell, desired));
      // Informers see only Berth's objects: one they do not have may still exist, made by someone
      // else. Berth never takes over an object it did not create.
      if (existing && existing.metadata?.labels?.[LABELS.managedBy] !== MANAGED_BY) {
        throw new ForeignObjectError(desired, 'write');
      }
      // The informer's copy is the truth only when no write of ours is newer than it.
      const same = existing && sameObject(existing, desired, signature);
      if (last === undefined && same) return false;
      await this.#send(cell, desired);
      if (desired.kind === 'Namespace' && !existing) cell.noteNamespaceCreated(desired.metadata?.name as string);
      cell.noteWritten(desired, signature);
      return true;
    });
  }

  /**
   * Ensures several objects of one cell, Namespaces first (an object sent before its Namespace
   * exists fails with 404), then the rest at once (the limiter decides how many go together).
   * Returns how many were written; the first failure is thrown after every write has finished.
   */
  async ensureAll(cell: CellRuntime, items: EnsureItem[]): Promise<number> {
    const namespaces = items.filter((i) => i.desired.kind === 'Namespace');
    const rest = items.filter((i) => i.desired.kind !== 'Namespace');
    let written = 0;
    for (const batch of [namespaces, rest]) {
      const results = await Promise.allSettled(batch.map((i) => this.ensure(cell, i.desired, i.current)));
      written += results.filter((r) => r.status === 'fulfilled' && r.value).length;
      const failed = results.find((r) => r.status === 'rejected');
      if (failed) throw (failed as PromiseRejectedResult).reason;
    }
    return written;
  }

  /**
   * What the cell has of an object the informers do not show, read only when it cannot be known
   * otherwise: a Namespace is looked up in the informer of every Namespace, and nothing can be in
   * a Namespace this scheduler has just created.
   */
  async #existing(cell: CellRuntime, obj: KubernetesObject): Promise<KubernetesObject | undefined> {
    const namespace = obj.metadata?.namespace;
    if (obj.kind === 'Namespace') {
      const known = cell.namespaceKnown(obj.metadata?.name as string);
      if (known) return known.exists;
    } else if (namespace && cell.createdRecently(namespace)) {
      return undefined;
    }
    try {
      return await cell.writes.objects.read({
        apiVersion: obj.apiVersion as string,
        kind: obj.kind as string,
        metadata: { name: obj.metadata?.name as string, ...(namespace ? { namespace } : {}) },
      });
    } catch (err) {
      if (kubeErrorStatus(err) === 404) return undefined;
      throw err;
    }
  }

  /** Server-side applies `obj` as it is (no comparison), through the cell's limiter. */
  async apply(cell: CellRuntime, obj: KubernetesObject): Promise<void> {
    await this.limiter(cell.name).run(objectKey(obj), () => this.#send(cell, obj));
  }

  async #send(cell: CellRuntime, obj: KubernetesObject): Promise<void> {
    this.#writes.inc({ cell: cell.name, kind: obj.kind ?? '?', verb: 'apply' });
    await cell.writes.apply(obj, FIELD_MANAGER);
  }

  /** Deletes an object Berth created; one without Berth's label is left alone. Gone already is fine. */
  async delete(cell: CellRuntime, obj: KubernetesObject): Promise<void> {
    if (obj.metadata?.labels?.[LABELS.managedBy] !== MANAGED_BY) {
      throw new ForeignObjectError(obj, 'delete');
    }
    if (cell.lastWritten(obj) === 'deleted') return; // asked already; the informer has not caught up
    await this.limiter(cell.name).run(objectKey(obj), async () => {
      if (cell.lastWritten(obj) === 'deleted') return;
      this.#writes.inc({ cell: cell.name, kind: obj.kind ?? '?', verb: 'delete' });
      try {
        await cell.writes.objects.delete(
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
    });
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

function dataOf(obj: KubernetesObject): string | undefined {
  const data = (obj as { data?: Record<string, string> }).data;
  return data === undefined ? undefined : JSON.stringify(Object.entries(data).sort(([a], [b]) => (a < b ? -1 : 1)));
}

/**
 * The cell's object carries the spec hash Berth wants (and, for a Deployment, its replicas; for a
 * Secret, its data: one edited in the cell under Berth's hash is put back).
 */
function sameObject(existing: KubernetesObject, desired: KubernetesObject, signature: string): boolean {
  return (
    hashOf(existing) === signature &&
    replicasOf(existing) === replicasOf(desired) &&
    (desired.kind !== 'Secret' || dataOf(existing) === dataOf(desired))
  );
}

/** The limiter's per-object key: namespace/kind/name. */
function objectKey(obj: KubernetesObject): string {
  return `${obj.metadata?.namespace ?? ''}/${obj.kind ?? '?'}/${obj.metadata?.name ?? ''}`;
}
