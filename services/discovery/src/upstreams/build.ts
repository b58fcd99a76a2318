/**
 * The pure part of discovery: from what a cell's EndpointSlices and Pods say, an app's endpoints
 * by version; from every cell's part, the upstreams value written for the app. No I/O here, so
 * the routing rules are unit-tested on plain data.
 */
import { LABELS, type UpstreamCell, type UpstreamEndpoint, type Upstreams, upstreamsSchema } from '@berth/shared/model';
import type { V1EndpointSlice } from '@kubernetes/client-node';

/** One cell's part of one app: its endpoints by version, all conditions kept. */
export type CellPart = UpstreamCell & {
  cell: string;
  /** version → endpoints. */
  endpoints: ReadonlyMap<string, readonly UpstreamEndpoint[]>;
};

/** An app's endpoints in one cell, by version, with the newest slice's resourceVersion. */
export type AppEndpoints = { revision: string; byVersion: Map<string, UpstreamEndpoint[]> };

/**
 * Groups a cell's EndpointSlices by app (their `berth.dev/app` label) and version. The version
 * is the pod's: `versionOf(namespace, pod)` reads it from the pod the endpoint's targetRef names
 * (one Service per app selects every version, so the slice itself does not say). An endpoint
 * whose pod is unknown yet is left out; the pod's arrival re-evaluates the app.
 */
export function endpointsByApp(
  slices: readonly V1EndpointSlice[],
  versionOf: (namespace: string, pod: string) => string | undefined,
): Map<string, AppEndpoints> {
  const out = new Map<string, AppEndpoints>();
  const seen = new Set<string>();
  for (const slice of slices) {
    const app = slice.metadata?.labels?.[LABELS.app];
    if (!app) continue;
    let entry = out.get(app);
    if (!entry) {
      entry = { revision: '', byVersion: new Map() };
      out.set(app, entry);
    }
    entry.revision = newerRevision(entry.revision, slice.metadata?.resourceVersion ?? '');
    const ports: Record<string, number> = {};
    for (const p of slice.ports ?? []) if (p.port !== undefined) ports[p.name ?? ''] = p.port;
    for (const ep of slice.endpoints ?? []) {
      const address = ep.addresses?.[0];
      const ref = ep.targetRef;
      if (!address || ref?.kind !== 'Pod' || !ref.name) continue;
      const version = versionOf(ref.namespace ?? slice.metadata?.namespace ?? '', ref.name);
      if (!version) continue;
      // During a slice reshuffle one pod can sit in two slices for a moment.
      const id = `${app}/${address}/${ref.name}`;
      if (seen.has(id)) continue;
      seen.add(id);
      // Kubernetes: an unknown `ready` is read as ready; `serving` as `ready`; `terminating` as false.
      const ready = ep.conditions?.ready ?? true;
      const list = entry.byVersion.get(version) ?? [];
      list.push({
        address,
        ports,
        ready,
        serving: ep.conditions?.serving ?? ready,
        terminating: ep.conditions?.terminating ?? false,
        node: ep.nodeName ?? null,
        pod: ref.name,
      });
      entry.byVersion.set(version, list);
    }
  }
  return out;
}

/** The numerically larger of two resourceVersions (they are opaque, but etcd's are integers). */
function newerRevision(a: string, b: string): string {
  if (!a) return b;
  if (!b) return a;
  const na = Number(a);
  const nb = Number(b);
  if (Number.isFinite(na) && Number.isFinite(nb)) return nb > na ? b : a;
  return b > a ? b : a;
}

/**
 * The upstreams of an app from every cell's part. A version routes to its ready endpoints in all
 * cells; only when it has none anywhere, to its serving and terminating ones (they still answer
 * while draining). A version with neither is left out; a cell is listed when some version routes
 * to it. Endpoints are sorted, so equal content gives equal JSON.
 */
export function buildUpstreams(app: string, parts: readonly CellPart[]): Upstreams {
  const versions = new Set<string>();
  for (const part of parts) for (const v of part.endpoints.keys()) versions.add(v);
  const out: Upstreams = { app, cells: {}, versions: {} };
  for (const version of [...versions].sort(byVersionNumber)) {
    const anyReady = parts.some((p) => p.endpoints.get(version)?.some((e) => e.ready));
    const routable = (e: UpstreamEndpoint) => (anyReady ? e.ready : e.serving && e.terminating);
    const byCell: Record<string, UpstreamEndpoint[]> = {};
    for (const part of [...parts].sort((a, b) => (a.cell < b.cell ? -1 : 1))) {
      const eps = (part.endpoints.get(version) ?? []).filter(routable);
      if (eps.length === 0) continue;
      byCell[part.cell] = [...eps].sort(byAddress);
      out.cells[part.cell] = { stale: part.stale, syncedAt: part.syncedAt, revision: part.revision };
    }
    if (Object.keys(byCell).length > 0) out.versions[version] = byCell;
  }
  return out;
}

/** A stored upstreams value back into per-cell parts: what a new leader carries forward. */
export function partsOf(stored: Upstreams): CellPart[] {
  const parts = new Map<string, CellPart & { endpoints: Map<string, UpstreamEndpoint[]> }>();
  for (const [version, cells] of Object.entries(stored.versions)) {
    for (const [cell, eps] of Object.entries(cells)) {
      const meta = stored.cells[cell] ?? { stale: true, syncedAt: null, revision: '' };
      let part = parts.get(cell);
      if (!part) {
        part = { cell, ...meta, endpoints: new Map() };
        parts.set(cell, part);
      }
      part.endpoints.set(version, [...eps]);
    }
  }
  return [...parts.values()];
}

/** The JSON an upstreams value is stored as, canonical (keys in a fixed order) for comparison. */
export function upstreamsJson(value: Upstreams): string {
  return JSON.stringify(upstreamsSchema.parse(value));
}

/** Total endpoints of an upstreams value. */
export function endpointCount(value: Upstreams): number {
  let n = 0;
  for (const cells of Object.values(value.versions)) for (const eps of Object.values(cells)) n += eps.length;
  return n;
}

function byVersionNumber(a: string, b: string): number {
  return Number(a.slice(1)) - Number(b.slice(1));
}

function byAddress(a: UpstreamEndpoint, b: UpstreamEndpoint): number {
  return a.address < b.address ? -1 : a.address > b.address ? 1 : 0;
}
