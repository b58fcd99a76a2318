import { LABELS, MANAGED_BY } from '@berth/shared/model';
import type { KubernetesObject, V1Namespace } from '@kubernetes/client-node';
import { Counter, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import type { CellRuntime } from '../cells/cell-runtime.ts';
import { CellWriter, ForeignObjectError } from './cell-writer.ts';
import { SPEC_HASH } from './manifests.ts';

/** A cell whose API calls are recorded and answered by the test. */
function fakeCell(options: { namespaces?: V1Namespace[] | 'unknown'; objects?: KubernetesObject[] } = {}) {
  const calls: string[] = [];
  const gates: (() => void)[] = [];
  let hold = false;
  const written = new Map<string, string>();
  const created = new Set<string>();
  const stored = options.objects ?? [];
  const key = (o: KubernetesObject) => `${o.kind}/${o.metadata?.namespace ?? ''}/${o.metadata?.name}`;
  const answer = () => (hold ? new Promise<void>((r) => gates.push(r)) : Promise.resolve());
  const cell = {
    name: 'c1',
    lastWritten: (o: KubernetesObject) => written.get(key(o)),
    noteWritten: (o: KubernetesObject, what: string) => written.set(key(o), what),
    noteNamespaceCreated: (name: string) => created.add(name),
    createdRecently: (name: string) => created.has(name),
    namespaceKnown: (name: string) =>
      options.namespaces === 'unknown'
        ? undefined
        : { exists: (options.namespaces ?? []).find((n) => n.metadata?.name === name) },
    writes: {
      apply: async (o: KubernetesObject) => {
        calls.push(`apply ${key(o)}`);
        await answer();
        calls.push(`applied ${key(o)}`);
      },
      objects: {
        read: async (o: KubernetesObject) => {
          calls.push(`read ${key(o)}`);
          const found = stored.find((s) => key(s) === key(o));
          if (!found) throw Object.assign(new Error('not found'), { code: 404 });
          return found;
        },
        delete: async (o: KubernetesObject) => {
          calls.push(`delete ${key(o)}`);
          await answer();
        },
      },
    },
  };
  return {
    cell: cell as unknown as CellRuntime,
    calls,
    holdAnswers: () => {
      hold = true;
    },
    releaseAll: () => {
      for (const open of gates.splice(0)) open();
    },
  };
}

function writer(): CellWriter {
  const metrics = new Registry();
  return new CellWriter(
    new Counter({ name: 'w', help: 'w', labelNames: ['cell', 'kind', 'verb'], registers: [metrics] }),
    { metrics },
  );
}

const ours = { [LABELS.managedBy]: MANAGED_BY };
const ns = (hash = 'h1'): KubernetesObject => ({
  apiVersion: 'v1',
  kind: 'Namespace',
  metadata: { name: 'shop', labels: ours, annotations: { [SPEC_HASH]: hash } },
});
const deployment = (name: string, hash = 'h1', labels: Record<string, string> = ours): KubernetesObject => ({
  apiVersion: 'apps/v1',
  kind: 'Deployment',
  metadata: { name, namespace: 'shop', labels, annotations: { [SPEC_HASH]: hash } },
});

const settle = async () => {
  for (let i = 0; i < 20; i++) await Promise.resolve();
};

describe('CellWriter', () => {
  it('applies the Namespace before the objects in it, and reads nothing for a new app', async () => {
    const f = fakeCell();
    f.holdAnswers();
    const done = writer().ensureAll(f.cell, [
      { desired: deployment('shop-v1'), current: undefined },
      { desired: ns(), current: undefined },
      { desired: deployment('shop-v2'), current: undefined },
    ]);
    await settle();
    expect(f.calls).toEqual(['apply Namespace//shop']);
    f.releaseAll();
    await settle();
    f.releaseAll();
    expect(await done).toBe(3);
    expect(f.calls.filter((c) => c.startsWith('read'))).toEqual([]);
    expect(f.calls.slice(1, 4)).toEqual([
      'applied Namespace//shop',
      'apply Deployment/shop/shop-v1',
      'apply Deployment/shop/shop-v2',
    ]);
  });

  it('refuses a Namespace of the same name that Berth did not create, without writing', async () => {
    const f = fakeCell({ namespaces: [{ metadata: { name: 'shop' } }] });
    await expect(writer().ensure(f.cell, ns(), undefined)).rejects.toBeInstanceOf(ForeignObjectError);
    expect(f.calls).toEqual([]);
  });

  it('reads an object the informers do not show when its Namespace was not just created, and leaves a foreign one alone', async () => {
    const foreign = deployment('shop-v1', 'other', {});
    const f = fakeCell({ namespaces: [{ metadata: { name: 'shop', labels: ours } }], objects: [foreign] });
    await expect(writer().ensure(f.cell, deployment('shop-v1'), undefined)).rejects.toBeInstanceOf(ForeignObjectError);
    expect(f.calls).toEqual(['read Deployment/shop/shop-v1']);
  });

  it('reads the Namespace when the informer of every Namespace cannot tell', async () => {
    const f = fakeCell({ namespaces: 'unknown' });
    expect(await writer().ensure(f.cell, ns(), undefined)).toBe(true);
    expect(f.calls).toEqual(['read Namespace//shop', 'apply Namespace//shop', 'applied Namespace//shop']);
  });

  it('writes an object once at a time, and the latest desired wins over a stale informer copy', async () => {
    const f = fakeCell();
    const w = writer();
    f.holdAnswers();
    const current = deployment('shop-v1', 'h1');
    const toH2 = w.ensure(f.cell, deployment('shop-v1', 'h2'), current);
    const backToH1 = w.ensure(f.cell, deployment('shop-v1', 'h1'), current);
    await settle();
    expect(f.calls).toEqual(['apply Deployment/shop/shop-v1']);
    f.releaseAll();
    await settle();
    f.releaseAll();
    expect(await Promise.all([toH2, backToH1])).toEqual([true, true]);
    expect(f.calls.filter((c) => c.startsWith('apply '))).toHaveLength(2);
    // The same desired again, informer still behind: nothing to write.
    expect(await w.ensure(f.cell, deployment('shop-v1', 'h1'), current)).toBe(false);
  });

  it('deletes through the limiter, once until the informer catches up', async () => {
    const f = fakeCell();
    const w = writer();
    await w.delete(f.cell, deployment('shop-v1'));
    await w.delete(f.cell, deployment('shop-v1'));
    expect(f.calls).toEqual(['delete Deployment/shop/shop-v1']);
    expect(w.limiter('c1').inflight).toBe(0);
  });

  it('leaves an unchanged pull Secret alone and puts back one whose data was edited in the cell', async () => {
    const secret = (data: string): KubernetesObject & { data: Record<string, string> } => ({
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: 'berth-registry', namespace: 'shop', labels: ours, annotations: { [SPEC_HASH]: 'h1' } },
      data: { '.dockerconfigjson': data },
    });
    const f = fakeCell();
    const w = writer();
    expect(await w.ensure(f.cell, secret('ours'), secret('ours'))).toBe(false);
    expect(f.calls).toEqual([]);
    expect(await w.ensure(f.cell, secret('ours'), secret('edited'))).toBe(true);
    expect(f.calls).toEqual(['apply Secret/shop/berth-registry', 'applied Secret/shop/berth-registry']);
  });
});
