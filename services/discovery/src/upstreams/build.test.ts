import type { UpstreamEndpoint } from '@berth/shared/model';
import type { V1EndpointSlice } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { buildUpstreams, type CellPart, endpointsByApp, partsOf } from './build.ts';

function ep(address: string, extra: Partial<UpstreamEndpoint> = {}): UpstreamEndpoint {
  return {
    address,
    ports: { http: 8080 },
    ready: true,
    serving: true,
    terminating: false,
    node: 'n0',
    pod: `p-${address}`,
    ...extra,
  };
}

function part(cell: string, byVersion: Record<string, UpstreamEndpoint[]>, stale = false): CellPart {
  return { cell, stale, syncedAt: null, revision: '1', endpoints: new Map(Object.entries(byVersion)) };
}

describe('buildUpstreams', () => {
  it('routes each version to its ready endpoints in every cell', () => {
    const up = buildUpstreams('shop', [
      part('cell-b', { v1: [ep('10.0.1.2'), ep('10.0.1.1')] }),
      part('cell-a', { v1: [ep('10.0.0.1'), ep('10.0.0.2', { ready: false, serving: false })], v2: [ep('10.0.0.3')] }),
    ]);
    expect(Object.keys(up.versions)).toEqual(['v1', 'v2']);
    expect(up.versions.v1?.['cell-a']?.map((e) => e.address)).toEqual(['10.0.0.1']);
    expect(up.versions.v1?.['cell-b']?.map((e) => e.address)).toEqual(['10.0.1.1', '10.0.1.2']);
    expect(Object.keys(up.cells)).toEqual(['cell-a', 'cell-b']);
  });

  it('uses serving terminating endpoints only when the version has no ready one in any cell', () => {
    const draining = ep('10.0.0.9', { ready: false, serving: true, terminating: true });
    const some = buildUpstreams('shop', [part('cell-a', { v1: [draining] }), part('cell-b', { v1: [ep('10.0.1.1')] })]);
    expect(some.versions.v1?.['cell-a']).toBeUndefined();
    const none = buildUpstreams('shop', [part('cell-a', { v1: [draining] })]);
    expect(none.versions.v1?.['cell-a']).toEqual([draining]);
  });

  it('leaves out a version with nothing to route to', () => {
    const up = buildUpstreams('shop', [part('cell-a', { v1: [ep('10.0.0.1', { ready: false, serving: false })] })]);
    expect(up).toEqual({ app: 'shop', cells: {}, versions: {} });
  });

  it('keeps a stale cell with its endpoints, marked, and carries it back from the stored value', () => {
    const up = buildUpstreams('shop', [part('cell-a', { v1: [ep('10.0.0.1')] }, true)]);
    expect(up.cells['cell-a']?.stale).toBe(true);
    const parts = partsOf(up);
    expect(parts).toHaveLength(1);
    expect(buildUpstreams('shop', parts)).toEqual(up);
  });
});

describe('endpointsByApp', () => {
  it('groups endpoints by the app label and the pod version, once per pod', () => {
    const slice = (name: string, rv: string, eps: [string, string][]): V1EndpointSlice => ({
      addressType: 'IPv4',
      metadata: { name, namespace: 'shop', resourceVersion: rv, labels: { 'berth.dev/app': 'shop' } },
      ports: [{ name: 'http', port: 8080 }],
      endpoints: eps.map(([address, pod]) => ({
        addresses: [address],
        conditions: { ready: true },
        targetRef: { kind: 'Pod', name: pod, namespace: 'shop' },
      })),
    });
    const versions: Record<string, string> = { a: 'v1', b: 'v2' };
    const out = endpointsByApp(
      [
        slice('s1', '10', [
          ['10.0.0.1', 'a'],
          ['10.0.0.2', 'b'],
          ['10.0.0.3', 'unknown'],
        ]),
        slice('s2', '12', [['10.0.0.1', 'a']]),
      ],
      (_ns, pod) => versions[pod],
    );
    const shop = out.get('shop');
    expect(shop?.revision).toBe('12');
    expect(shop?.byVersion.get('v1')?.map((e) => e.address)).toEqual(['10.0.0.1']);
    expect(shop?.byVersion.get('v2')?.[0]).toMatchObject({ address: '10.0.0.2', ports: { http: 8080 }, serving: true });
  });
});
