/**
 * Request and response bodies of the public API (the contract clients build on). Requests are
 * strict: an unknown field is an error at its JSON path. Stored shapes come from
 * @berth/shared/model; these map onto them.
 */
import {
  appSchema,
  CELL_STATES,
  cellSchema,
  conditionSchema,
  cpuQuantitySchema,
  DEFAULT_TRAFFIC_MODE,
  dnsLabelSchema,
  domainNameSchema,
  domainSchema,
  envVarsSchema,
  headerNameSchema,
  headerValueSchema,
  healthCheckSchema,
  imageRepositorySchema,
  imageTagSchema,
  lbAgentStatusSchema,
  lbGroupSchema,
  locationPathSchema,
  memberSchema,
  memoryQuantitySchema,
  nginxSizeSchema,
  nginxTimeSchema,
  portSchema,
  ROLES,
  regionSchema,
  stickinessSchema,
  trafficWeightsSchema,
  userNameSchema,
  versionNameSchema,
  versionSchema,
  vipSchema,
} from '@berth/shared/model';
import { z } from 'zod';
import { SCOPES } from '../auth/principal.ts';

// ---- Common -----------------------------------------------------------------------------------

export const listQuery = z
  .object({
    limit: z.coerce.number().int().min(1).max(500).default(50),
    cursor: z.string().max(512).optional(),
  })
  .strict();

export function listOf<T extends z.ZodType>(item: T) {
  return z.object({ items: z.array(item), next: z.string().nullable() });
}

export const problemSchema = z
  .object({
    type: z.string(),
    title: z.string(),
    status: z.number().int(),
    detail: z.string().optional(),
    instance: z.string().optional(),
    errors: z.array(z.object({ path: z.string(), message: z.string() })).optional(),
  })
  .catchall(z.unknown());

export const appParams = z.object({ app: dnsLabelSchema }).strict();
export const versionParams = z.object({ app: dnsLabelSchema, version: versionNameSchema }).strict();
export const memberParams = z.object({ app: dnsLabelSchema, user: userNameSchema }).strict();
export const regionParams = z.object({ region: dnsLabelSchema }).strict();
export const cellParams = z.object({ region: dnsLabelSchema, cell: dnsLabelSchema }).strict();
export const userParams = z.object({ user: userNameSchema }).strict();
export const tokenParams = z.object({ id: z.string().regex(/^[0-9a-f]{16}$/, 'expected a token id') }).strict();

// ---- Auth, users, tokens ----------------------------------------------------------------------

export const loginBody = z
  .object({ username: z.string().min(1).max(64), password: z.string().min(1).max(1024) })
  .strict();
export const loginResponse = z.object({ token: z.string(), expiresAt: z.iso.datetime() });

/**
 * zod's address syntax plus the lengths of RFC 5321 (64 characters before the @, 63 in a domain
 * label, 254 in all), which zod leaves out: Schemathesis found a 103-character local part
 * accepted. In the document these are patterns, so a client's validator and ours agree exactly.
 */
const emailSchema = z
  .email()
  .max(254)
  .regex(/^[^@]{1,64}@([^.@]{1,63}\.)*[^.@]{1,63}$/, 'expected at most 64 characters before the @, 63 between dots')
  .describe('An e-mail address');

export const createUserBody = z
  .object({
    username: userNameSchema,
    password: z.string().min(8, 'at least 8 characters').max(1024),
    email: emailSchema.optional(),
    admin: z.boolean().optional(),
  })
  .strict();

export const userResponse = z.object({
  name: userNameSchema,
  /** Immutable; a user deleted and created again under the same name gets another. */
  id: z.string().optional(),
  email: z.string().optional(),
  admin: z.boolean(),
  source: z.enum(['local', 'ldap']),
  /** Disabled by an admin: no login, no token of theirs works. */
  disabled: z.boolean(),
  createdAt: z.iso.datetime(),
  updatedAt: z.iso.datetime(),
});

export const createTokenBody = z
  .object({
    name: z.string().min(1).max(100),
    scopes: z.array(z.enum(SCOPES)).min(1).max(3),
    /** Default: 90 days from now. At most one year. */
    expiresAt: z.iso.datetime({ offset: true }).optional(),
    /** Your password again: needed when a session makes a token that outlives it. */
    password: z.string().min(1).max(1024).optional(),
  })
  .strict();

export const tokenResponse = z.object({
  id: z.string(),
  name: z.string(),
  scopes: z.array(z.enum(SCOPES)),
  createdAt: z.iso.datetime(),
  expiresAt: z.iso.datetime(),
});
export const tokenCreatedResponse = tokenResponse.extend({
  /** Shown once: Berth keeps only a hash. */
  token: z.string(),
});

/** A user's token as an admin sees it: sessions and personal access tokens, never a secret. */
export const userTokenResponse = tokenResponse.extend({ kind: z.enum(['session', 'personal']) });

export const sessionResponse = z.object({
  id: z.string(),
  createdAt: z.iso.datetime(),
  expiresAt: z.iso.datetime(),
  /** The client address and User-Agent of the login, when known. */
  address: z.string().optional(),
  userAgent: z.string().optional(),
  /** The session this request came with. */
  current: z.boolean(),
});

export const endSessionsQuery = z
  .object({ all: z.enum(['true', 'false']).optional().describe('true: the current session ends too') })
  .strict();
export const endSessionsResponse = z.object({ ended: z.number().int() });

export const changePasswordBody = z
  .object({
    currentPassword: z.string().min(1).max(1024),
    newPassword: z.string().min(8, 'at least 8 characters').max(1024),
  })
  .strict();

export const patchUserBody = z.object({ disabled: z.boolean() }).strict();
export const userTokenParams = z.object({ user: userNameSchema, id: z.string().regex(/^[0-9a-f]{16}$/) }).strict();

// ---- Regions and cells ------------------------------------------------------------------------

export const createRegionBody = z
  .object({ name: dnsLabelSchema, description: z.string().max(500).optional() })
  .strict();
export const regionResponse = regionSchema;

export const createCellBody = z
  .object({
    name: dnsLabelSchema,
    apiServer: z.url(),
    state: z.enum(CELL_STATES).optional(),
    labels: z.record(z.string().max(63), z.string().max(63)).optional(),
  })
  .strict();
export const patchCellBody = z
  .object({
    apiServer: z.url().optional(),
    state: z.enum(CELL_STATES).optional(),
    labels: z.record(z.string().max(63), z.string().max(63)).optional(),
  })
  .strict();
export const cellResponse = cellSchema;

// ---- Apps -------------------------------------------------------------------------------------

const healthCheckInput = healthCheckSchema.strict();
const portInput = portSchema.strict();

/** What an app listens on when its creator says nothing: one HTTP port, 8080. */
const DEFAULT_PORT = { name: 'http', port: 8080 };
export const DEFAULT_PORTS = [DEFAULT_PORT];

/**
 * Only `name`, `region` and `image` are required: an app that serves HTTP on 8080 needs nothing
 * else. The defaults are prefaults (parsed like a sent value) so the OpenAPI document shows them
 * as clients would send them.
 */
export const createAppBody = z
  .object({
    name: dnsLabelSchema,
    region: dnsLabelSchema,
    image: imageRepositorySchema,
    description: z.string().max(1000).optional(),
    healthCheck: healthCheckInput
      .extend({
        path: healthCheckInput.shape.path.describe('HTTP path probed; without one, the check is a TCP connect'),
        port: healthCheckInput.shape.port.optional().describe('Default: the first of `ports`'),
      })
      .prefault({})
      .describe('Default: a TCP connect check on the first of `ports`'),
    ports: z.array(portInput).min(1).max(16).prefault(DEFAULT_PORTS),
    minCells: z.number().int().min(1).max(16).optional(),
  })
  .strict()
  .transform(({ healthCheck, ...body }) => ({
    ...body,
    healthCheck: { ...healthCheck, port: healthCheck.port ?? body.ports[0]?.port ?? DEFAULT_PORT.port },
  }));

export const patchAppBody = z
  .object({
    image: imageRepositorySchema.optional(),
    description: z.string().max(1000).optional(),
    healthCheck: healthCheckInput.optional(),
    ports: z.array(portInput).min(1).max(16).optional(),
    minCells: z.number().int().min(1).max(16).optional(),
  })
  .strict();

export const appResponse = appSchema.extend({
  /** The caller's role on the app (admins see Owner). */
  role: z.enum(ROLES).optional(),
});

// ---- Versions ---------------------------------------------------------------------------------

/** Every field optional: what is left out is copied from the newest version. */
export const createVersionBody = z
  .object({
    imageTag: imageTagSchema.optional(),
    replicas: z.number().int().min(0).max(1000).optional(),
    cpu: cpuQuantitySchema.optional(),
    memory: memoryQuantitySchema.optional(),
    env: envVarsSchema.optional(),
    ports: z.array(portInput).min(1).max(16).optional(),
    healthCheck: healthCheckInput.optional(),
    command: z.array(z.string().max(4096)).max(64).optional(),
  })
  .strict();

export const versionResponse = versionSchema;

export const scaleBody = z.object({ replicas: z.number().int().min(0).max(1000) }).strict();
export const rollbackBody = z.object({ version: versionNameSchema }).strict();
export const rollbackResponse = z.object({ target: versionSchema, previous: versionSchema });

// ---- Status -----------------------------------------------------------------------------------

export const cellStatusResponse = z.object({
  cell: z.string(),
  desired: z.number().int(),
  ready: z.number().int(),
  available: z.number().int(),
  updated: z.number().int(),
  restarts: z.number().int(),
  conditions: z.array(conditionSchema),
  observedAt: z.iso.datetime(),
});

export const appStatusResponse = z.object({
  app: z.string(),
  versions: z.array(
    z.object({
      name: z.string(),
      replicas: z.number().int(),
      placement: z
        .object({
          cells: z.record(z.string(), z.number().int()),
          generation: z.number().int(),
          conditions: z.array(conditionSchema),
        })
        .nullable(),
      cells: z.array(cellStatusResponse),
      ready: z.number().int(),
      available: z.number().int(),
    }),
  ),
});

// ---- Members ----------------------------------------------------------------------------------

export const putMemberBody = z.object({ role: z.enum(ROLES) }).strict();
export const memberResponse = memberSchema;
export const transferBody = z.object({ owner: userNameSchema }).strict();

// ---- Quotas -----------------------------------------------------------------------------------

export const quotaBody = z
  .object({
    maxApps: z.number().int().min(0).max(100_000).optional(),
    cpu: cpuQuantitySchema.optional(),
    memory: memoryQuantitySchema.optional(),
  })
  .strict();

export const quotaRecordSchema = z.object({
  user: userNameSchema,
  maxApps: z.number().int().min(0).optional(),
  cpu: z.string().optional(),
  memory: z.string().optional(),
  updatedAt: z.iso.datetime(),
});
export type QuotaRecord = z.infer<typeof quotaRecordSchema>;

export const usageSchema = z.object({ apps: z.number().int(), cpu: z.string(), memory: z.string() });
export const quotaResponse = quotaRecordSchema.extend({ usage: usageSchema });

// ---- LB groups, domains, traffic --------------------------------------------------------------

export const lbGroupParams = z.object({ group: dnsLabelSchema }).strict();
export const domainParams = z.object({ app: dnsLabelSchema, domain: domainNameSchema }).strict();

export const createLbGroupBody = z
  .object({
    name: dnsLabelSchema,
    description: z.string().max(500).optional(),
    vips: z.array(vipSchema).max(64).optional().describe('Addresses users point DNS at'),
    cname: domainNameSchema.nullable().optional().describe('A name users point DNS at with a CNAME'),
  })
  .strict();
export const patchLbGroupBody = createLbGroupBody.omit({ name: true });
export const lbGroupResponse = lbGroupSchema;
/** An agent's status as users see it: where its counters are served stays inside the region. */
export const lbAgentResponse = lbAgentStatusSchema.omit({ statsUrl: true });

const MAX_HEADERS = 32;
const headersInput = z
  .record(headerNameSchema, headerValueSchema)
  .refine((h) => Object.keys(h).length <= MAX_HEADERS, `at most ${MAX_HEADERS} headers`);
const pathsInput = z
  .array(locationPathSchema)
  .min(1)
  .max(32)
  .superRefine((paths, ctx) => {
    paths.forEach((p, i) => {
      if (paths.indexOf(p) !== i) ctx.addIssue({ code: 'custom', path: [i], message: 'duplicate path' });
    });
  });

export const domainOptionsInput = z
  .object({
    clientMaxBodySize: nginxSizeSchema.optional().describe('nginx client_max_body_size, e.g. 10m'),
    readTimeout: nginxTimeSchema.optional().describe('nginx proxy_read_timeout, e.g. 60s'),
    headers: headersInput.optional().describe('Response headers added to every answer'),
    raw: z.string().max(16_384).optional().describe('Raw nginx directives in the server block (admins only)'),
  })
  .strict();

export const createDomainBody = z
  .object({
    domain: domainNameSchema,
    group: dnsLabelSchema.describe('The LB group (Nginx cluster) that serves the domain'),
    port: dnsLabelSchema.max(15).optional().describe("The name of the app's port; default its first"),
    paths: pathsInput.optional().describe('Location prefixes routed to the app; default ["/"]'),
    options: domainOptionsInput.optional(),
  })
  .strict();

/** Every field optional; in `options`, a field sent replaces the stored one and null removes it. */
export const patchDomainBody = z
  .object({
    group: dnsLabelSchema.optional(),
    port: dnsLabelSchema.max(15).optional(),
    paths: pathsInput.optional(),
    options: z
      .object({
        clientMaxBodySize: nginxSizeSchema.nullable().optional(),
        readTimeout: nginxTimeSchema.nullable().optional(),
        headers: headersInput.optional(),
        raw: z.string().max(16_384).nullable().optional(),
      })
      .strict()
      .optional(),
  })
  .strict();

export const domainResponse = domainSchema.extend({
  /** Where users point DNS: the LB group's addresses and CNAME. */
  lb: z.object({ vips: z.array(z.string()), cname: z.string().nullable() }),
});

export const putTrafficBody = z
  .object({
    weights: trafficWeightsSchema
      .nullable()
      .describe('Share of requests per version, e.g. {"v1":90,"v2":10}; null: by ready replicas'),
    stickiness: stickinessSchema
      .nullable()
      .optional()
      .describe('Keep a user on one version by a cookie or a header; null or absent: none'),
  })
  .strict();

export const trafficResponse = z.object({
  app: z.string(),
  weights: trafficWeightsSchema.nullable(),
  stickiness: stickinessSchema.nullable(),
  /** `weights`: the shares above; `by-ready-replicas`: no weights set, each version by its ready replicas. */
  mode: z.enum(['weights', DEFAULT_TRAFFIC_MODE]),
  updatedAt: z.iso.datetime().nullable(),
  updatedBy: z.string().nullable(),
});

// ---- Events and stats -------------------------------------------------------------------------

export const eventsQuery = z
  .object({
    limit: z.coerce.number().int().min(1).max(200).default(50),
    cursor: z
      .string()
      .regex(/^[1-9][0-9]*$/, 'expected a cursor from a previous page')
      .optional(),
  })
  .strict();

export const eventResponse = z.object({
  seq: z.number().int(),
  id: z.string(),
  time: z.string(),
  actor: z.object({ type: z.string(), name: z.string() }),
  kind: z.string(),
  resourceId: z.string(),
  resourceName: z.string().optional(),
  incarnation: z.string().optional(),
  action: z.string(),
  before: z.unknown().optional(),
  after: z.unknown().optional(),
  data: z.record(z.string(), z.unknown()).optional(),
});

export const statsQuery = z.object({ days: z.coerce.number().int().min(1).max(90).default(7) }).strict();
export const statsResponse = z.object({
  days: z.array(
    z.object({
      date: z.string(),
      deploys: z.number().int(),
      scales: z.number().int(),
      rollbacks: z.number().int(),
      logins: z.number().int(),
    }),
  ),
});
