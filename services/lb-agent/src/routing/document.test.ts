import type { Traffic, UpstreamEndpoint, Upstreams } from '@berth/shared/model';
import { describe, expect, it } from 'vitest';
import { buildRoutingDocument, compareVersions } from './document.ts';

const ep = (address: string, port = 8080): UpstreamEndpoint => ({
  address,
  ports: { metrics: 9090, http: port },
  ready: true,
  serving: true,
  terminating: false,
  node: null,
  pod: null,
});

const upstreams: Upstreams = {
  app: 'shop',
  cells: {
    'cell-b': { stale: true, syncedAt: null, revision: '9' },
    'cell-a': { stale: false, syncedAt: null, revision: '7' },
  },
  versions: {
    v10: { 'cell-a': [ep('198.18.0.9')] },
    v2: { 'cell-b': [ep('198.19.32.5'), ep('198.19.32.4')], 'cell-a': [ep('198.18.0.3')] },
    v3: {},
  },
};

const traffic: Traffic = {
  app: 'shop',
  weights: { v10: 1, v2: 9 },
  stickiness: { cookie: 'berth_route' },
  updatedAt: '2026-01-01T00:00:00.000Z',
  updatedBy: 'alice',
};

describe('buildRoutingDocument', () => {
  it('flattens peers across cells, marks stale cells, and orders everything canonically', () => {
    const doc = buildRoutingDocument('shop', upstreams, traffic, 42);
    expect(Object.keys(doc.versions)).toEqual(['v2', 'v10']); // v3 has no peer
    expect(doc.versions.v2).toEqual([
      { address: '198.18.0.3', ports: { http: 8080, metrics: 9090 }, cell: 'cell-a', stale: false },
      { address: '198.19.32.4', ports: { http: 8080, metrics: 9090 }, cell: 'cell-b', stale: true },
      { address: '198.19.32.5', ports: { http: 8080, metrics: 9090 }, cell: 'cell-b', stale: true },
    ]);
    expect(Object.keys(doc.weights ?? {})).toEqual(['v2', 'v10']);
    expect(doc).toMatchObject({ app: 'shop', revision: 42, stickiness: { cookie: 'berth_route' } });
    // Equal content, equal bytes: the digest Lua reports compares.
    const shuffled: Upstreams = {
      ...upstreams,
      versions: { v2: upstreams.versions.v2 ?? {}, v10: upstreams.versions.v10 ?? {} },
    };
    expect(JSON.stringify(buildRoutingDocument('shop', shuffled, traffic, 42))).toBe(JSON.stringify(doc));
  });

  it('routes by ready replicas without traffic, and nowhere without upstreams', () => {
    expect(buildRoutingDocument('shop', upstreams, undefined, 1)).toMatchObject({ weights: null, stickiness: null });
    expect(buildRoutingDocument('shop', undefined, traffic, 1).versions).toEqual({});
  });

  it('orders versions by number', () => {
    expect(['v10', 'v2', 'v1'].sort(compareVersions)).toEqual(['v1', 'v2', 'v10']);
  });
});
