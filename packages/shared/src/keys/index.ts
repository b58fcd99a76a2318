/**
 * The etcd key layout: the one place that spells a key. Services never concatenate key strings
 * themselves, so a layout change is a change here and in docs/architecture.md.
 *
 * Berth's own state lives under a configurable prefix (default `/berth`). Every leaf key has a
 * KeyTemplate that prints it and parses it back: `keys.parse('version', key)`.
 *
 * Names in keys are DNS-1123 labels (region, cell, app, node, group), domain names, host names or
 * Berth's own ids; CIDRs are written with `-` for `/` (`198.18.0.0-16`), because `/` separates
 * levels.
 *
 * The load-balancer tree that lb-agents watch (LeEngine's `/slb/{group}/…`) lives under the same
 * prefix as everything else, at `{prefix}/slb/{group}/…` (`/berth/slb/public/domains/shop.example.test`
 * by default): one installation is one prefix, for tests, etcd roles and backups alike.
 */
import { InputError } from '../errors/index.ts';

export const DEFAULT_PREFIX = '/berth';

/** `198.18.0.0/16` → `198.18.0.0-16` for use inside a key. */
export function cidrToKey(cidr: string): string {
  return cidr.replace('/', '-');
}

/** `198.18.0.0-16` → `198.18.0.0/16`. */
export function cidrFromKey(segment: string): string {
  const i = segment.lastIndexOf('-');
  return i < 0 ? segment : `${segment.slice(0, i)}/${segment.slice(i + 1)}`;
}

/**
 * One leaf key's shape, e.g. `apps/{app}/versions/{version}` under the installation's prefix: it
 * prints a key from its parts and parses a key back into them (or nothing for a foreign key), so
 * no caller splits a key by hand (Calico's `model/block.go`, `defaultPath` / `KeyFromDefaultPath`).
 * A part named `cidr` is written with `-` for `/`.
 */
export class KeyTemplate<P extends string> {
  readonly #prefix: string;
  readonly #segments: readonly string[];

  constructor(prefix: string, shape: string) {
    this.#prefix = prefix;
    this.#segments = shape.split('/');
  }

  format(parts: Record<P, string>): string {
    let out = this.#prefix;
    for (const seg of this.#segments) {
      if (seg.startsWith('{')) {
        const name = seg.slice(1, -1) as P;
        const value = parts[name];
        out += `/${name === 'cidr' ? cidrToKey(value) : value}`;
      } else {
        out += `/${seg}`;
      }
    }
    return out;
  }

  /** The parts of `key`, or undefined when `key` does not have this shape. */
  parse(key: string): Record<P, string> | undefined {
    if (!key.startsWith(`${this.#prefix}/`)) return undefined;
    const segs = key.slice(this.#prefix.length + 1).split('/');
    if (segs.length !== this.#segments.length) return undefined;
    const out = {} as Record<P, string>;
    for (let i = 0; i < segs.length; i++) {
      const want = this.#segments[i] as string;
      const got = segs[i] as string;
      if (!got) return undefined;
      if (want.startsWith('{')) {
        const name = want.slice(1, -1) as P;
        out[name] = name === 'cidr' ? cidrFromKey(got) : got;
      } else if (want !== got) {
        return undefined;
      }
    }
    return out;
  }
}

/** Keys of one Berth installation. Directory helpers end with `/` so prefix scans do not overmatch. */
export class BerthKeys {
  readonly prefix: string;

  /** Every leaf key's template, by name: `keys.templates.version.parse(key)`. */
  readonly templates;

  constructor(prefix: string = DEFAULT_PREFIX) {
    if (!/^(\/[A-Za-z0-9_.-]+)+$/.test(prefix)) throw new InputError(`bad etcd key prefix "${prefix}"`);
    this.prefix = prefix;
    const t = <P extends string>(shape: string) => new KeyTemplate<P>(prefix, shape);
    this.templates = {
      user: t<'user'>('users/{user}'),
      token: t<'token'>('tokens/{token}'),
      quota: t<'user'>('quotas/{user}'),
      region: t<'region'>('regions/{region}'),
      cell: t<'region' | 'cell'>('regions/{region}/cells/{cell}'),
      app: t<'app'>('apps/{app}'),
      version: t<'app' | 'version'>('apps/{app}/versions/{version}'),
      member: t<'app' | 'user'>('apps/{app}/members/{user}'),
      placement: t<'app' | 'version'>('placements/{app}/{version}'),
      status: t<'app' | 'version' | 'cell'>('status/{app}/{version}/{cell}'),
      availability: t<'app' | 'version'>('availability/{app}/{version}'),
      builder: t<'region' | 'agent'>('builders/{region}/{agent}'),
      buildConfig: t<'app' | 'config'>('apps/{app}/build-configs/{config}'),
      buildConfigId: t<'id'>('build-configs/{id}'),
      buildRun: t<'run'>('builds/{run}'),
      buildDelivery: t<'config' | 'delivery'>('build-deliveries/{config}/{delivery}'),
      ipamPool: t<'cell' | 'cidr'>('ipam/{cell}/pools/{cidr}'),
      ipamBlock: t<'cell' | 'cidr'>('ipam/{cell}/blocks/{cidr}'),
      ipamIp: t<'cell' | 'ip'>('ipam/{cell}/ips/{ip}'),
      ipamHandle: t<'cell' | 'handle'>('ipam/{cell}/handles/{handle}'),
      ipamAffinity: t<'cell' | 'node' | 'cidr'>('ipam/{cell}/affinity/{node}/{cidr}'),
      outbox: t<'id'>('outbox/{id}'),
      idempotency: t<'user' | 'hash'>('idempotency/{user}/{hash}'),
      lbGroup: t<'group'>('lb-groups/{group}'),
      domainClaim: t<'domain'>('domains/{domain}'),
      traffic: t<'app'>('apps/{app}/traffic'),
      appSecret: t<'app' | 'name'>('apps/{app}/secrets/{name}'),
      lbGuard: t<'app'>('apps/{app}/lb-guard'),
      slbDomain: t<'group' | 'domain'>('slb/{group}/domains/{domain}'),
      slbTraffic: t<'group' | 'app'>('slb/{group}/traffic/{app}'),
      slbUpstream: t<'group' | 'app'>('slb/{group}/upstreams/{app}'),
      lbAgent: t<'group' | 'host'>('slb/{group}/agents/{host}'),
      imageGroup: t<'group'>('image-groups/{group}'),
      imageGroupMember: t<'group' | 'user'>('image-groups/{group}/members/{user}'),
      imageTag: t<'group' | 'repo' | 'tag'>('image-groups/{group}/repos/{repo}/tags/{tag}'),
    } as const;
  }

  /** The parts of a leaf key of the named kind, or undefined for any other key. */
  parse<K extends keyof BerthKeys['templates']>(kind: K, key: string): ReturnType<BerthKeys['templates'][K]['parse']> {
    return this.templates[kind].parse(key) as ReturnType<BerthKeys['templates'][K]['parse']>;
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

  /** Whether each version runs what it asks for, over all cells (scheduler). */
  availabilities(): string {
    return `${this.prefix}/availability/`;
  }
  appAvailability(app: string): string {
    return `${this.prefix}/availability/${app}/`;
  }
  availability(app: string, version: string): string {
    return `${this.prefix}/availability/${app}/${version}`;
  }

  // Build machines (under a lease)
  builders(region: string): string {
    return `${this.prefix}/builders/${region}/`;
  }
  builder(region: string, agentId: string): string {
    return `${this.prefix}/builders/${region}/${agentId}`;
  }

  // Builds (issue 12; @berth/shared/builds)
  buildConfigs(app: string): string {
    return `${this.prefix}/apps/${app}/build-configs/`;
  }
  buildConfig(app: string, config: string): string {
    return this.templates.buildConfig.format({ app, config });
  }
  /** `{app, config}` of a config id: webhook URLs name configs by id. */
  buildConfigId(id: string): string {
    return this.templates.buildConfigId.format({ id });
  }
  buildRuns(): string {
    return `${this.prefix}/builds/`;
  }
  buildRun(runId: string): string {
    return this.templates.buildRun.format({ run: runId });
  }
  /** A webhook delivery already handled (under a lease of a day): a redelivery starts nothing. */
  buildDelivery(configId: string, delivery: string): string {
    return this.templates.buildDelivery.format({ config: configId, delivery });
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
  /** How often a node's thin plugin found no resident allocator and allocated directly (cnictl stats). */
  ipamFallbacks(cell: string, node: string): string {
    return `${this.prefix}/ipam/${cell}/fallbacks/${node}`;
  }
  ipamFallbacksAll(cell: string): string {
    return `${this.prefix}/ipam/${cell}/fallbacks/`;
  }

  // Events waiting for the relay: written in the same transaction as the change they record.
  outboxes(): string {
    return `${this.prefix}/outbox/`;
  }
  outbox(id: string): string {
    return `${this.prefix}/outbox/${id}`;
  }

  // Idempotency records of POST requests (API), under a lease of a day.
  idempotencies(user: string): string {
    return `${this.prefix}/idempotency/${user}/`;
  }
  idempotency(user: string, hash: string): string {
    return `${this.prefix}/idempotency/${user}/${hash}`;
  }

  // Load balancing: LB groups, domain claims, an app's traffic (API-owned), and the tree lb-agents
  // watch, one directory per group (docs/traffic.md).
  lbGroups(): string {
    return `${this.prefix}/lb-groups/`;
  }
  lbGroup(group: string): string {
    return this.templates.lbGroup.format({ group });
  }
  /** Which app holds a domain, installation-wide: a bind creates it, so a second app gets a conflict. */
  domainClaims(): string {
    return `${this.prefix}/domains/`;
  }
  domainClaim(domain: string): string {
    return this.templates.domainClaim.format({ domain });
  }
  /** An app's traffic split as the API keeps it; copied to each group the app has a domain in. */
  traffic(app: string): string {
    return this.templates.traffic.format({ app });
  }
  /** One write-only secret of an app (`AppSecretRecord`, sealed; @berth/shared/secrets). */
  appSecret(app: string, name: string): string {
    return this.templates.appSecret.format({ app, name });
  }
  appSecrets(app: string): string {
    return `${this.prefix}/apps/${app}/secrets/`;
  }
  /** Bumped by every domain or traffic write of an app, so two of them never interleave. */
  lbGuard(app: string): string {
    return this.templates.lbGuard.format({ app });
  }
  /** The load-balancer tree of every group (discovery lists the upstream keys it wrote). */
  slbRoot(): string {
    return `${this.prefix}/slb/`;
  }
  /** Everything one group's lb-agents watch. */
  slbGroup(group: string): string {
    return `${this.prefix}/slb/${group}/`;
  }
  slbDomains(group: string): string {
    return `${this.prefix}/slb/${group}/domains/`;
  }
  slbDomain(group: string, domain: string): string {
    return this.templates.slbDomain.format({ group, domain });
  }
  slbTraffics(group: string): string {
    return `${this.prefix}/slb/${group}/traffic/`;
  }
  slbTraffic(group: string, app: string): string {
    return this.templates.slbTraffic.format({ group, app });
  }
  slbUpstreams(group: string): string {
    return `${this.prefix}/slb/${group}/upstreams/`;
  }
  slbUpstream(group: string, app: string): string {
    return this.templates.slbUpstream.format({ group, app });
  }
  lbAgents(group: string): string {
    return `${this.prefix}/slb/${group}/agents/`;
  }
  lbAgent(group: string, host: string): string {
    return this.templates.lbAgent.format({ group, host });
  }

  // Image groups (registry namespaces) and their members (API-owned; the token server reads them).
  imageGroups(): string {
    return `${this.prefix}/image-groups/`;
  }
  imageGroup(group: string): string {
    return this.templates.imageGroup.format({ group });
  }
  imageGroupMembers(group: string): string {
    return `${this.prefix}/image-groups/${group}/members/`;
  }
  imageGroupMember(group: string, user: string): string {
    return this.templates.imageGroupMember.format({ group, user });
  }
  /** Who pushed each tag of a repository and when, from the registry's notifications. */
  imageTags(group: string, repo: string): string {
    return `${this.prefix}/image-groups/${group}/repos/${repo}/tags/`;
  }
  imageTag(group: string, repo: string, tag: string): string {
    return this.templates.imageTag.format({ group, repo, tag });
  }

  // Leader elections (scheduler, discovery): one key per election, held under the leader's lease.
  elections(): string {
    return `${this.prefix}/elections/`;
  }
  election(name: string): string {
    return `${this.prefix}/elections/${name}`;
  }
}
