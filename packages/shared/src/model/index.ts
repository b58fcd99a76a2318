/**
 * The desired and observed state that crosses service boundaries, as stored in etcd: what the API
 * writes and the scheduler, discovery and lb-agent read, and what the scheduler writes back.
 * One zod schema per stored value; a reader validates what it reads (and skips a value that does
 * not parse, with a warning) instead of trusting it.
 *
 * Request bodies of the public API are the API's own (services/api); they map onto these.
 */
import { z } from 'zod';

// ---- Names and quantities ---------------------------------------------------------------------

/** A DNS-1123 label: region, cell, app, node and LB group names. */
export const dnsLabelSchema = z
  .string()
  .min(1)
  .max(63)
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'expected a DNS-1123 label: lowercase letters, digits and "-"');

/** A user name: what members, owners and actors are called. */
export const userNameSchema = z
  .string()
  .min(1)
  // User names become Kubernetes label values (at most 63 characters).
  .max(63)
  .regex(/^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$/, 'expected lowercase letters, digits, ".", "_" and "-"');

/** `v1`, `v2`, … in order of creation. */
export const versionNameSchema = z.string().regex(/^v[1-9][0-9]*$/, 'expected v1, v2, …');

/** A CPU quantity in Kubernetes form: `500m`, `1`, `1.5`. */
export const cpuQuantitySchema = z
  .string()
  .regex(/^([0-9]+m|[0-9]+(\.[0-9]{1,3})?)$/, 'expected a CPU quantity like 250m, 1 or 1.5')
  .refine((q) => parseCpuMillis(q) > 0, 'must be more than 0');

/** A memory quantity in Kubernetes form: `512Mi`, `1Gi`, `1000000`. */
export const memoryQuantitySchema = z
  .string()
  .regex(/^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$/, 'expected a memory quantity like 512Mi or 1Gi')
  .refine((q) => parseMemoryBytes(q) > 0, 'must be more than 0');

export { formatCpu, formatMemory } from './quantity.ts';

/** CPU quantity → millicores. */
export function parseCpuMillis(quantity: string): number {
  if (quantity.endsWith('m')) return Number(quantity.slice(0, -1));
  return Math.round(Number(quantity) * 1000);
}

const MEMORY_UNITS: Record<string, number> = {
  '': 1,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
};

/** Memory quantity → bytes. */
export function parseMemoryBytes(quantity: string): number {
  const m = /^([0-9]+)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(quantity);
  if (!m?.[1]) return Number.NaN;
  return Number(m[1]) * (MEMORY_UNITS[m[2] ?? ''] ?? Number.NaN);
}

/**
 * Parses any Kubernetes quantity as Nodes report them (`3800m`, `8`, `16302488Ki`, `1e3`), into
 * millicores for CPU or bytes for memory. Returns NaN when it does not parse.
 */
export function parseKubeQuantity(quantity: string, as: 'cpu' | 'memory'): number {
  const m = /^([0-9.]+(?:e[0-9]+)?)(m|Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$/.exec(quantity.trim());
  if (!m?.[1]) return Number.NaN;
  const n = Number(m[1]);
  const unit = m[2] ?? '';
  if (unit === 'm') return as === 'cpu' ? n : n / 1000;
  const factor = unit === 'Pi' ? 2 ** 50 : unit === 'P' ? 1e15 : (MEMORY_UNITS[unit] ?? Number.NaN);
  return as === 'cpu' ? n * factor * 1000 : n * factor;
}

// ---- Regions and cells ------------------------------------------------------------------------

export const regionSchema = z.object({
  name: dnsLabelSchema,
  description: z.string().max(500).default(''),
  createdAt: z.iso.datetime(),
});
export type Region = z.infer<typeof regionSchema>;

export const CELL_STATES = ['active', 'cordoned'] as const;
export type CellState = (typeof CELL_STATES)[number];

/**
 * A cell: one Kubernetes cluster of a region. Its credentials are never here: each service that
 * talks to cells reads a kubeconfig file per cell from its own config.
 */
export const cellSchema = z.object({
  name: dnsLabelSchema,
  region: dnsLabelSchema,
  /** The cell's API server URL (informational; the kubeconfig is what services connect with). */
  apiServer: z.url(),
  state: z.enum(CELL_STATES).default('active'),
  labels: z.record(z.string(), z.string()).default({}),
  createdAt: z.iso.datetime(),
  updatedAt: z.iso.datetime(),
});
export type Cell = z.infer<typeof cellSchema>;

// ---- Apps, versions, members ------------------------------------------------------------------

export const healthCheckSchema = z.object({
  /**
   * HTTP path probed for readiness and liveness (a 2xx or 3xx passes). Without one the check is a
   * TCP connect to `port`: all an app that serves no health endpoint can offer.
   */
  path: z.string().startsWith('/').max(1024).optional(),
  port: z.number().int().min(1).max(65535),
  initialDelaySeconds: z.number().int().min(0).max(3600).default(5),
  periodSeconds: z.number().int().min(1).max(3600).default(10),
  timeoutSeconds: z.number().int().min(1).max(600).default(2),
  failureThreshold: z.number().int().min(1).max(100).default(3),
});
export type HealthCheck = z.infer<typeof healthCheckSchema>;

export const portSchema = z.object({
  name: dnsLabelSchema.max(15),
  port: z.number().int().min(1).max(65535),
  protocol: z.enum(['TCP', 'UDP']).default('TCP'),
});
export type Port = z.infer<typeof portSchema>;

/** `team/shop`: an image repository in the region's registry. */
export const imageRepositorySchema = z
  .string()
  .max(255)
  .regex(/^[a-z0-9]+([._-][a-z0-9]+)*(\/[a-z0-9]+([._-][a-z0-9]+)*)+$/, 'expected an image repository like team/shop');

/** An image tag: `main-1a2b3c4`. */
export const imageTagSchema = z.string().regex(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/, 'expected an image tag');

export const envVarsSchema = z.record(
  z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'expected an environment variable name'),
  z.string().max(32_768),
);

export const appSchema = z.object({
  name: dnsLabelSchema,
  region: dnsLabelSchema,
  image: imageRepositorySchema,
  description: z.string().max(1000).default(''),
  healthCheck: healthCheckSchema,
  ports: z.array(portSchema).min(1).max(16),
  minCells: z.number().int().min(1).max(16).default(2),
  owner: userNameSchema,
  /** The number of the newest version ever created: the next one is `v{lastVersion + 1}`. */
  lastVersion: z.number().int().min(0).default(0),
  /**
   * This app's life, from create to delete: a new app of the same name is another incarnation,
   * and its events feed shows only its own events, never the deleted one's history.
   */
  incarnation: z.uuid().optional(),
  createdAt: z.iso.datetime(),
  updatedAt: z.iso.datetime(),
});
export type App = z.infer<typeof appSchema>;

export const versionSchema = z.object({
  app: dnsLabelSchema,
  name: versionNameSchema,
  /** The number in the name: v3 → 3. */
  number: z.number().int().min(1),
  imageTag: imageTagSchema,
  /** Desired replicas: the only field of a version that changes after creation. */
  replicas: z.number().int().min(0).max(1000),
  cpu: cpuQuantitySchema,
  memory: memoryQuantitySchema,
  env: envVarsSchema.default({}),
  ports: z.array(portSchema).min(1).max(16),
  healthCheck: healthCheckSchema,
  command: z.array(z.string()).max(64).default([]),
  createdAt: z.iso.datetime(),
  createdBy: userNameSchema,
  updatedAt: z.iso.datetime(),
});
export type Version = z.infer<typeof versionSchema>;

/** Member roles, strongest first (GitLab's). */
export const ROLES = ['Owner', 'Master', 'Developer', 'Reporter', 'Guest'] as const;
export type Role = (typeof ROLES)[number];

/** True when `role` is at least as strong as `required`. */
export function roleAtLeast(role: Role, required: Role): boolean {
  return ROLES.indexOf(role) <= ROLES.indexOf(required);
}

export const memberSchema = z.object({
  user: userNameSchema,
  role: z.enum(ROLES),
  addedAt: z.iso.datetime(),
  addedBy: userNameSchema,
});
export type Member = z.infer<typeof memberSchema>;

// ---- Image groups (registry namespaces) -------------------------------------------------------

/**
 * An image group: the first path segment of a repository in the region's registry (`team` in
 * `team/shop`), public (anyone may pull) or private (members only), with members in the roles of
 * an app. Repositories inside it are created by the first push of a member who may push.
 */
export const imageGroupSchema = z.object({
  name: dnsLabelSchema,
  /** Anyone, signed in or not, may pull from a public group; only members push. */
  public: z.boolean().default(false),
  description: z.string().max(1000).default(''),
  createdBy: userNameSchema,
  createdAt: z.iso.datetime(),
  updatedAt: z.iso.datetime(),
});
export type ImageGroup = z.infer<typeof imageGroupSchema>;

/** A member of an image group: the same shape and roles as an app's. */
export const imageGroupMemberSchema = memberSchema;
export type ImageGroupMember = Member;

/**
 * Who pushed a tag and when, from the registry's notifications, at
 * `/berth/image-groups/{group}/repos/{repo}/tags/{tag}`: the latest push by the registry's clock.
 */
export const imageTagPushSchema = z.object({
  /** The registry's timestamp of the push (its event's), as UTC ISO 8601. */
  pushedAt: z.iso.datetime(),
  /** The token's subject: a user, a build robot (`build@{run}.{attempt}`), or '' for anonymous. */
  pushedBy: z.string().max(256),
  /** The manifest the tag named then: a tag pushed again names another. */
  digest: z.string().regex(/^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/, 'expected a digest'),
});
export type ImageTagPush = z.infer<typeof imageTagPushSchema>;

// ---- Scheduler output -------------------------------------------------------------------------

export const conditionSchema = z.object({
  /** e.g. Available, Progressing, Unschedulable, MinCellsShortfall. */
  type: z.string().min(1),
  status: z.enum(['True', 'False', 'Unknown']),
  reason: z.string().default(''),
  message: z.string().default(''),
  lastTransitionTime: z.iso.datetime(),
});
export type Condition = z.infer<typeof conditionSchema>;

/** Where a version's replicas go: written by the scheduler at `/berth/placements/{app}/{version}`. */
export const placementSchema = z.object({
  app: dnsLabelSchema,
  version: versionNameSchema,
  /** Replicas per cell. A cell missing here runs none of this version. */
  cells: z.record(dnsLabelSchema, z.number().int().min(0)),
  /** Bumped on every change of `cells`. */
  generation: z.number().int().min(1),
  /** Replicas asked for; `sum(cells)` is less when capacity is short. */
  desired: z.number().int().min(0),
  conditions: z.array(conditionSchema).default([]),
  updatedAt: z.iso.datetime(),
});
export type Placement = z.infer<typeof placementSchema>;

/**
 * Whether a version runs every replica it asks for, over all cells: written by the scheduler at
 * `/berth/availability/{app}/{version}`, apart from the placement, so a rollout's progress never
 * rewrites (and races) the placement. The API shows it among the placement's conditions.
 */
export const availabilitySchema = z.object({
  app: dnsLabelSchema,
  version: versionNameSchema,
  /** The `Available` condition: True when `available >= desired > 0`. */
  condition: conditionSchema,
  available: z.number().int().min(0),
  desired: z.number().int().min(0),
});
export type Availability = z.infer<typeof availabilitySchema>;

/** A version's state in one cell: written by the scheduler at `/berth/status/{app}/{version}/{cell}`. */
export const versionCellStatusSchema = z.object({
  app: dnsLabelSchema,
  version: versionNameSchema,
  cell: dnsLabelSchema,
  desired: z.number().int().min(0),
  ready: z.number().int().min(0),
  available: z.number().int().min(0),
  updated: z.number().int().min(0),
  restarts: z.number().int().min(0),
  conditions: z.array(conditionSchema).default([]),
  observedAt: z.iso.datetime(),
});
export type VersionCellStatus = z.infer<typeof versionCellStatusSchema>;

// ---- Load balancing ---------------------------------------------------------------------------
//
// LB groups (Nginx clusters), the domains bound to apps, the traffic split of an app over its
// versions, and what each lb-agent reports. The API writes groups, domains and traffic; discovery
// writes upstreams; each lb-agent writes its own status. Where each lives: docs/architecture.md
// (key table) and docs/traffic.md. Every string here that reaches an nginx config is constrained
// so that it can only be one token or one quoted string there (../nginx renders them and refuses
// anything else again); the one exception is a domain's `options.raw`, which only admins write.

/**
 * A domain name as users point DNS at it: lowercase labels of letters, digits and `-` (neither
 * first nor last), at least two labels, 253 characters in all, and a last label that starts with
 * a letter (so an IP address is not a domain). No wildcards yet.
 */
export const domainNameSchema = z
  .string()
  .min(4)
  .max(253)
  .regex(
    /^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$/,
    'expected a lowercase DNS name like shop.example.test: labels of letters, digits and "-", at most 63 characters each',
  );

/** An HTTP header (or cookie) name: an RFC 9110 token, at most 64 characters. */
export const headerNameSchema = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/, "expected a header name: letters, digits and !#$%&'*+.^_`|~-");

/**
 * A header value Berth writes into nginx as a quoted string: printable ASCII and spaces only (no
 * control characters, so no line breaks) and no `$` (nginx would expand it as a variable, which
 * could echo a request's secrets back); quotes and backslashes are escaped when rendered.
 */
export const headerValueSchema = z
  .string()
  .max(1024)
  .regex(/^[\x20-\x23\x25-\x7e]*$/, 'expected printable ASCII without "$" or control characters');

/** An nginx size: `10m`, `512k`, `1g`, `0` (no limit). */
export const nginxSizeSchema = z
  .string()
  .max(16)
  .regex(/^[0-9]{1,9}[kKmMgG]?$/, 'expected a size like 512k, 10m or 1g');

/** An nginx time: `60s`, `500ms`, `5m`, `1h`, `30` (seconds). */
export const nginxTimeSchema = z
  .string()
  .max(16)
  .regex(/^[0-9]{1,7}(ms|s|m|h)?$/, 'expected a time like 500ms, 60s, 5m or 1h');

/**
 * A location path: starts with `/`, then URL path characters only (RFC 3986 unreserved, `%`
 * escapes and `/`); nothing nginx would read as syntax.
 */
export const locationPathSchema = z
  .string()
  .min(1)
  .max(1024)
  .regex(/^\/[A-Za-z0-9._~%/-]*$/, 'expected a path like / or /api/: "/" then letters, digits and ._~%/-');

/** An lb-agent's host name, as it names its own status key. */
export const lbHostSchema = z
  .string()
  .min(1)
  .max(253)
  .regex(/^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$/, 'expected a host name');

/** An IP address (v4 or v6) users point DNS at. */
export const vipSchema = z.union([z.ipv4(), z.ipv6()]);

// LB groups

/**
 * An LB group: one Nginx cluster (several hosts running lb-agent), e.g. `public` or `internal`.
 * `vips` and `cname` are what users point DNS at; every domain bound to the group shows them.
 */
export const lbGroupSchema = z.object({
  name: dnsLabelSchema,
  description: z.string().max(500).default(''),
  vips: z.array(vipSchema).max(64).default([]),
  cname: domainNameSchema.nullable().default(null),
  createdAt: z.iso.datetime(),
  updatedAt: z.iso.datetime(),
});
export type LbGroup = z.infer<typeof lbGroupSchema>;

// Domains

export const domainOptionsSchema = z.object({
  /** nginx `client_max_body_size`; nginx's default (1m) when unset. */
  clientMaxBodySize: nginxSizeSchema.optional(),
  /** nginx `proxy_read_timeout`; nginx's default (60s) when unset. */
  readTimeout: nginxTimeSchema.optional(),
  /** Response headers added to every answer of the domain (`add_header … always`). */
  headers: z.record(headerNameSchema, headerValueSchema).default({}),
  /**
   * Raw nginx directives inside the domain's server block, as LeEngine allowed. Only admins
   * write it; a broken one fails `nginx -t` and the agent keeps the last good config.
   */
  raw: z.string().max(16_384).optional(),
});
export type DomainOptions = z.infer<typeof domainOptionsSchema>;

/**
 * A domain bound to an app, at `/slb/{group}/domains/{domain}`: what the group's lb-agents
 * render into one server block. A change needs an nginx reload.
 */
export const domainSchema = z.object({
  domain: domainNameSchema,
  app: dnsLabelSchema,
  group: dnsLabelSchema,
  /** The name of the app's port requests go to (`http`). */
  port: dnsLabelSchema.max(15),
  /** Location prefixes routed to the app; `/` routes everything. */
  paths: z.array(locationPathSchema).min(1).max(32),
  options: domainOptionsSchema,
  createdAt: z.iso.datetime(),
  createdBy: userNameSchema,
  updatedAt: z.iso.datetime(),
});
export type Domain = z.infer<typeof domainSchema>;

/**
 * Which app holds a domain, installation-wide (`/berth/domains/{domain}`): created with the
 * domain in the same transaction, so a second app binding the same name fails the create.
 */
export const domainClaimSchema = z.object({
  domain: domainNameSchema,
  app: dnsLabelSchema,
  group: dnsLabelSchema,
});
export type DomainClaim = z.infer<typeof domainClaimSchema>;

// Traffic

/** How a user keeps landing on the same version: a cookie's or a header's value, hashed. */
export const stickinessSchema = z.union([
  z.object({ cookie: headerNameSchema }).strict(),
  z.object({ header: headerNameSchema }).strict(),
]);
export type Stickiness = z.infer<typeof stickinessSchema>;

/** Share of requests per version: non-negative integers, relative to their sum. */
export const trafficWeightsSchema = z.record(versionNameSchema, z.number().int().min(0).max(1_000_000));
export type TrafficWeights = z.infer<typeof trafficWeightsSchema>;

/**
 * An app's traffic split, region-wide: at `/berth/apps/{app}/traffic` (the API's record) and a
 * copy at `/slb/{group}/traffic/{app}` for every group the app has a domain in (what lb-agents
 * read). `weights: null` means "by ready replicas" (the default). A change needs no reload.
 */
export const trafficSchema = z.object({
  app: dnsLabelSchema,
  weights: trafficWeightsSchema.nullable(),
  stickiness: stickinessSchema.nullable(),
  updatedAt: z.iso.datetime(),
  updatedBy: userNameSchema,
});
export type Traffic = z.infer<typeof trafficSchema>;

/** What routing does when an app has no traffic record, or one with `weights: null`. */
export const DEFAULT_TRAFFIC_MODE = 'by-ready-replicas' as const;

// lb-agent status

export const failedDomainSchema = z.object({
  domain: domainNameSchema,
  /** `nginx -t`'s message for the config with this domain's change. */
  message: z.string().max(4096),
  /** The generation whose change of this domain failed. */
  generation: z.number().int().min(0),
  since: z.iso.datetime(),
});
export type FailedDomain = z.infer<typeof failedDomainSchema>;

/**
 * One lb-agent's report, at `/slb/{group}/agents/{host}` under the agent's lease (gone when the
 * agent is). A generation is the etcd revision of the group's `domains/` tree a config was
 * rendered from, so agents of one group compare directly.
 */
export const lbAgentStatusSchema = z.object({
  host: lbHostSchema,
  group: dnsLabelSchema,
  /** The generation nginx serves now (confirmed live after the reload). */
  appliedGeneration: z.number().int().min(0),
  /** The newest generation that passed `nginx -t`. */
  lastGoodGeneration: z.number().int().min(0),
  /** Domains whose newest change failed `nginx -t`: they keep serving their last good config. */
  failedDomains: z.array(failedDomainSchema).default([]),
  /** Anything else that went wrong on the last sync (nginx not running, etcd errors); null when fine. */
  lastError: z.string().max(4096).nullable().default(null),
  /**
   * Where the agent answers `GET ?window=15m&app=…` with requests per app, version and status
   * class within the window (services/lb-agent `/stats/requests`); absent from older agents.
   */
  statsUrl: z
    .url({ protocol: /^https?$/ })
    .max(2048)
    .optional(),
  reportedAt: z.iso.datetime(),
});
export type LbAgentStatus = z.infer<typeof lbAgentStatusSchema>;

// Upstreams (discovery)

/** One pod address an lb-agent may route to, as the cell's EndpointSlices report it. */
export const upstreamEndpointSchema = z.object({
  address: z.union([z.ipv4(), z.ipv6()]),
  /** The app's ports by name (`{"http": 8080}`), as the EndpointSlice lists them. */
  ports: z.record(z.string().max(15), z.number().int().min(1).max(65535)),
  ready: z.boolean(),
  serving: z.boolean(),
  terminating: z.boolean(),
  node: z.string().nullable(),
  pod: z.string().nullable(),
});
export type UpstreamEndpoint = z.infer<typeof upstreamEndpointSchema>;

/** What discovery knows of one cell's part of an app's upstreams. */
export const upstreamCellSchema = z.object({
  /**
   * True while the cell's API server is unreachable (or not listed yet since discovery's leader
   * started): its endpoints are the last known ones, kept, never emptied. lb-agents try them last.
   */
  stale: z.boolean(),
  /** When discovery last (re)listed this cell successfully; null when it never has. */
  syncedAt: z.iso.datetime().nullable(),
  /** The newest resourceVersion among the app's EndpointSlices in the cell (opaque; '' when none). */
  revision: z.string(),
});
export type UpstreamCell = z.infer<typeof upstreamCellSchema>;

/**
 * An app's routable endpoints, at `/slb/{group}/upstreams/{app}` for every group the app has a
 * domain in (written by discovery; a change needs no reload). `versions[v][cell]` holds the ready
 * endpoints of version v in that cell, or, when v has no ready endpoint in any cell, its serving
 * and terminating ones. `cells` says, for every cell listed under a version, whether it is stale.
 */
export const upstreamsSchema = z.object({
  app: dnsLabelSchema,
  cells: z.record(dnsLabelSchema, upstreamCellSchema),
  versions: z.record(versionNameSchema, z.record(dnsLabelSchema, z.array(upstreamEndpointSchema))),
});
export type Upstreams = z.infer<typeof upstreamsSchema>;

// ---- Kubernetes naming ------------------------------------------------------------------------

/** Labels Berth puts on every object it creates in a cell, and selects by. */
export const LABELS = {
  managedBy: 'app.kubernetes.io/managed-by',
  app: 'berth.dev/app',
  version: 'berth.dev/version',
  owner: 'berth.dev/owner',
} as const;

/** The value of `app.kubernetes.io/managed-by` on Berth's objects. */
export const MANAGED_BY = 'berth';

/** The server-side apply field manager Berth uses. */
export const FIELD_MANAGER = 'berth-scheduler';

/** The Deployment of one version in a cell: `{app}-{version}`. */
export function deploymentName(app: string, version: string): string {
  return `${app}-${version}`;
}
