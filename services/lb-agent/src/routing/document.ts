/**
 * The routing document of one app: what the agent pushes to nginx's Lua (docs/traffic.md, "The
 * lb-agent and its nginx"). It merges the app's upstreams (written by discovery) and its traffic
 * split (written by the API) into the one shape the balancer reads: every peer of every version,
 * flattened across cells, each marked stale when its cell is.
 */
import type { Stickiness, Traffic, TrafficWeights, Upstreams } from '@berth/shared/model';

export type RoutingPeer = {
  address: string;
  /** The app's ports by name (`{"http": 8080}`); a domain's `port` names one. */
  ports: Record<string, number>;
  cell: string;
  /** True when discovery cannot reach the peer's cell: its peers are used only when no fresh one is left. */
  stale: boolean;
};

export type RoutingDocument = {
  app: string;
  /** The etcd revision of the agent's view this was built from; Lua refuses an older one. */
  revision: number;
  /** null: by ready replicas (each version weighs its number of peers). */
  weights: TrafficWeights | null;
  stickiness: Stickiness | null;
  versions: Record<string, RoutingPeer[]>;
};

/** Version names in release order: v2 before v10. */
export function compareVersions(a: string, b: string): number {
  return Number(a.slice(1)) - Number(b.slice(1)) || (a < b ? -1 : a > b ? 1 : 0);
}

/**
 * The document for `app` from what the agent's view holds now. Pure and canonical: equal inputs
 * give equal bytes (versions in release order, peers by cell then address), so a digest compares.
 */
export function buildRoutingDocument(
  app: string,
  upstreams: Upstreams | undefined,
  traffic: Traffic | undefined,
  revision: number,
): RoutingDocument {
  const versions: Record<string, RoutingPeer[]> = {};
  for (const version of Object.keys(upstreams?.versions ?? {}).sort(compareVersions)) {
    const byCell = upstreams?.versions[version] ?? {};
    const peers: RoutingPeer[] = [];
    for (const cell of Object.keys(byCell).sort()) {
      const stale = upstreams?.cells[cell]?.stale ?? false;
      for (const e of byCell[cell] ?? []) {
        peers.push({ address: e.address, ports: sortedPorts(e.ports), cell, stale });
      }
    }
    peers.sort((a, b) => (a.cell === b.cell ? (a.address < b.address ? -1 : 1) : a.cell < b.cell ? -1 : 1));
    if (peers.length > 0) versions[version] = peers;
  }
  return {
    app,
    revision,
    weights: traffic?.weights ? sortedWeights(traffic.weights) : null,
    stickiness: traffic?.stickiness ?? null,
    versions,
  };
}

function sortedPorts(ports: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(ports).sort(([a], [b]) => (a < b ? -1 : 1)));
}

function sortedWeights(weights: TrafficWeights): TrafficWeights {
  return Object.fromEntries(Object.entries(weights).sort(([a], [b]) => compareVersions(a, b)));
}
