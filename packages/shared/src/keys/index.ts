/**
 * The etcd key layout: the one place that spells a key. Services never concatenate key strings
 * themselves, so a layout change is a change here and in docs/architecture.md.
 *
 * Berth's own state lives under a configurable prefix (default `/berth`); load-balancer state
 * under `/slb`, the layout LeEngine's Nginx hosts used, so an lb-agent needs only its group's
 * subtree.
 *
 * Names in keys are DNS-1123 labels (region, cell, app, node, group) or Berth's own ids; CIDRs
 * are written with `-` for `/` (`198.18.0.0-16`), because `/` separates levels.
 */

export const DEFAULT_PREFIX = '/berth';
export const DEFAULT_SLB_PREFIX = '/slb';

/** `198.18.0.0/16` → `198.18.0.0-16` for use inside a key. */
export function cidrToKey(cidr: string): string {
  return cidr.replace('/', '-');
}

/** `198.18.0.0-16` → `198.18.0.0/16`. */
export function cidrFromKey(segment: string): string {
  const i = segment.lastIndexOf('-');
  return i < 0 ? segment : `${segment.slice(0, i)}/${segment.slice(i + 1)}`;
}

/** The last segment of a key. */
export function lastSegment(key: string): string {
  return key.slice(key.lastIndexOf('/') + 1);
}

/** Keys of one Berth installation. Directory helpers end with `/` so prefix scans do not overmatch. */
export class BerthKeys {
  readonly prefix: string;

  constructor(prefix: string = DEFAULT_PREFIX) {
    if (!/^(\/[A-Za-z0-9_.-]+)+$/.test(prefix)) throw new Error(`bad etcd key prefix "${prefix}"`);
    this.prefix = prefix;
  }

  // Users, access tokens, quotas (API-owned; here so the whole layout is in one place)
  users(): string {
    return `${this.prefix}/users/`;
  }
  user(user: string): string {
    return `${this.prefix}/users/${user}`;
  }
  tokens(): string {
    return `${this.prefix}/tokens/`;
  }
  token(tokenId: string): string {
    return `${this.prefix}/tokens/${tokenId}`;
  }
  quotas(): string {
    return `${this.prefix}/quotas/`;
  }
  quota(user: string): string {
    return `${this.prefix}/quotas/${user}`;
  }
  /**
   * Bumped in the same transaction as every write that changes a user's quota usage (apps,
   * replicas): a quota check compares its revision, so two racing writes cannot both pass.
   */
  quotaGuard(user: string): string {
    return `${this.prefix}/quota-guards/${user}`;
  }

  // Regions and cells
  regions(): string {
    return `${this.prefix}/regions/`;
  }
  region(region: string): string {
    return `${this.prefix}/regions/${region}`;
  }
  cells(region: string): string {
    return `${this.prefix}/regions/${region}/cells/`;
  }
  cell(region: string, cell: string): string {
    return `${this.prefix}/regions/${region}/cells/${cell}`;
  }

  // Apps, versions, members
  apps(): string {
    return `${this.prefix}/apps/`;
  }
  app(app: string): string {
    return `${this.prefix}/apps/${app}`;
  }
  versions(app: string): string {
    return `${this.prefix}/apps/${app}/versions/`;
  }
  version(app: string, version: string): string {
    return `${this.prefix}/apps/${app}/versions/${version}`;
  }
  members(app: string): string {
    return `${this.prefix}/apps/${app}/members/`;
  }
  member(app: string, user: string): string {
    return `${this.prefix}/apps/${app}/members/${user}`;
  }

  // Scheduler output
  placements(): string {
    return `${this.prefix}/placements/`;
  }
  appPlacements(app: string): string {
    return `${this.prefix}/placements/${app}/`;
  }
  placement(app: string, version: string): string {
    return `${this.prefix}/placements/${app}/${version}`;
  }
  statuses(): string {
    return `${this.prefix}/status/`;
  }
  appStatus(app: string): string {
    return `${this.prefix}/status/${app}/`;
  }
  versionStatus(app: string, version: string): string {
    return `${this.prefix}/status/${app}/${version}/`;
  }
  status(app: string, version: string, cell: string): string {
    return `${this.prefix}/status/${app}/${version}/${cell}`;
  }

  // Build machines (under a lease)
  builders(region: string): string {
    return `${this.prefix}/builders/${region}/`;
  }
  builder(region: string, agentId: string): string {
    return `${this.prefix}/builders/${region}/${agentId}`;
  }

  // IPAM, per cell
  ipam(cell: string): string {
    return `${this.prefix}/ipam/${cell}/`;
  }
  ipamPools(cell: string): string {
    return `${this.prefix}/ipam/${cell}/pools/`;
  }
  ipamPool(cell: string, cidr: string): string {
    return `${this.prefix}/ipam/${cell}/pools/${cidrToKey(cidr)}`;
  }
  ipamBlocks(cell: string): string {
    return `${this.prefix}/ipam/${cell}/blocks/`;
  }
  ipamBlock(cell: string, blockCidr: string): string {
    return `${this.prefix}/ipam/${cell}/blocks/${cidrToKey(blockCidr)}`;
  }
  ipamIps(cell: string): string {
    return `${this.prefix}/ipam/${cell}/ips/`;
  }
  ipamIp(cell: string, ip: string): string {
    return `${this.prefix}/ipam/${cell}/ips/${ip}`;
  }
  /** One allocation's handle (`<network>.<containerId>.<ifName>`) → its address. */
  ipamHandles(cell: string): string {
    return `${this.prefix}/ipam/${cell}/handles/`;
  }
  ipamHandle(cell: string, handle: string): string {
    return `${this.prefix}/ipam/${cell}/handles/${handle}`;
  }
  /** Bumped by every block claim of a node: a claim that did not see the latest one is refused. */
  ipamClaims(cell: string, node: string): string {
    return `${this.prefix}/ipam/${cell}/claims/${node}`;
  }
  /** Which blocks a node holds: one key per block, so a node finds its own blocks in one read. */
  ipamAffinities(cell: string, node: string): string {
    return `${this.prefix}/ipam/${cell}/affinity/${node}/`;
  }
  ipamAffinity(cell: string, node: string, blockCidr: string): string {
    return `${this.prefix}/ipam/${cell}/affinity/${node}/${cidrToKey(blockCidr)}`;
  }

  // Leader elections (scheduler, discovery): one key per election, held under the leader's lease.
  elections(): string {
    return `${this.prefix}/elections/`;
  }
  election(name: string): string {
    return `${this.prefix}/elections/${name}`;
  }
}

/** Keys of the load-balancer tree, LeEngine's layout: `/slb/{group}/…`. */
export class SlbKeys {
  readonly prefix: string;

  constructor(prefix: string = DEFAULT_SLB_PREFIX) {
    if (!/^(\/[A-Za-z0-9_.-]+)+$/.test(prefix)) throw new Error(`bad etcd key prefix "${prefix}"`);
    this.prefix = prefix;
  }

  group(group: string): string {
    return `${this.prefix}/${group}/`;
  }
  domains(group: string): string {
    return `${this.prefix}/${group}/domains/`;
  }
  domain(group: string, domain: string): string {
    return `${this.prefix}/${group}/domains/${domain}`;
  }
  upstreams(group: string): string {
    return `${this.prefix}/${group}/upstreams/`;
  }
  upstream(group: string, domain: string): string {
    return `${this.prefix}/${group}/upstreams/${domain}`;
  }
  agents(group: string): string {
    return `${this.prefix}/${group}/agents/`;
  }
  agent(group: string, host: string): string {
    return `${this.prefix}/${group}/agents/${host}`;
  }
}
