/** Platform administration: regions and their cells, users, quotas. */
import { ConflictError, NotFoundError, PreconditionFailedError } from '@berth/shared/errors';
import { type Cell, cellSchema, type Region, regionSchema } from '@berth/shared/model';
import { publicUser } from '../auth/records.ts';
import { etag, ifMatchRevision } from '../http/conditional.ts';
import { page } from '../http/paging.ts';
import { defineRoute } from '../http/routes.ts';
import { type ApiContext, now } from './context.ts';
import { formatCpu, formatMemory, Quotas } from './quotas.ts';
import {
  cellParams,
  cellResponse,
  createCellBody,
  createRegionBody,
  createUserBody,
  listOf,
  listQuery,
  patchCellBody,
  patchUserBody,
  quotaBody,
  quotaRecordSchema,
  quotaResponse,
  regionParams,
  regionResponse,
  userParams,
  userResponse,
  userTokenParams,
  userTokenResponse,
} from './schemas.ts';

export function adminRoutes(ctx: ApiContext) {
  const { store, keys, auth, mutations } = ctx;
  const quotas = new Quotas(ctx);

  async function requireRegion(name: string) {
    const region = await store.get(keys.region(name), regionSchema);
    if (!region) throw new NotFoundError(`no region "${name}"`);
    return region;
  }

  async function requireCell(region: string, cell: string) {
    const stored = await store.get(keys.cell(region, cell), cellSchema);
    if (!stored) throw new NotFoundError(`region "${region}" has no cell "${cell}"`);
    return stored;
  }

  return [
    // ---- Users ----
    defineRoute({
      method: 'post',
      path: '/users',
      operationId: 'createUser',
      summary: 'Create a local user (admin)',
      tags: ['users'],
      access: { kind: 'admin' },
      body: createUserBody,
      responses: { 201: userResponse },
      errors: [409],
      etag: true,
      handler: async ({ body, principal: p, idempotency }) => {
        const user = await auth.newUser(body);
        return mutations.answer(
          p,
          async () => ({
            ops: [{ op: 'create', key: keys.user(user.name), value: user }],
            events: [{ kind: 'user', resourceId: user.name, action: 'created', after: publicUser(user) }],
            onFailed: () => new ConflictError(`user "${body.username}" already exists`),
            result: (revision) => ({ status: 201, body: publicUser(user), headers: { ETag: etag(revision) } }),
          }),
          { idempotency },
        );
      },
    }),

    defineRoute({
      method: 'patch',
      path: '/admin/users/:user',
      operationId: 'updateUser',
      summary:
        'Disable or enable a user (admin): disabled, they cannot sign in, their tokens stop working at once and their sessions end',
      tags: ['users'],
      access: { kind: 'admin' },
      params: userParams,
      body: patchUserBody,
      responses: { 200: userResponse },
      errors: [409, 412],
      etag: true,
      handler: async ({ req, params, body, principal: p }) => {
        const done = await auth.setDisabled(p, params.user, body.disabled, req);
        return { status: 200, body: publicUser(done.user), headers: { ETag: etag(done.modRevision) } };
      },
    }),
    defineRoute({
      method: 'get',
      path: '/admin/users/:user/tokens',
      operationId: 'listUserTokens',
      summary: "A user's live sessions and personal access tokens, never their secrets (admin)",
      tags: ['users'],
      access: { kind: 'admin' },
      params: userParams,
      responses: { 200: listOf(userTokenResponse) },
      handler: async ({ params }) => {
        if (!(await auth.getUser(params.user))) throw new NotFoundError(`no user "${params.user}"`);
        const items = (await auth.listTokens(params.user))
          .sort((a, b) => a.createdAt.localeCompare(b.createdAt))
          .map(({ id, kind, name, scopes, createdAt, expiresAt }) => ({
            id,
            kind,
            name,
            scopes,
            createdAt,
            expiresAt,
          }));
        return { status: 200, body: { items, next: null } };
      },
    }),
    defineRoute({
      method: 'delete',
      path: '/admin/users/:user/tokens/:id',
      operationId: 'deleteUserToken',
      summary: "Revoke one of a user's sessions or personal access tokens (admin)",
      tags: ['users'],
      access: { kind: 'admin' },
      params: userTokenParams,
      responses: { 204: undefined },
      handler: async ({ params, principal: p }) => {
        await auth.deleteToken(
          p,
          params.id,
          (removed) => [{ kind: 'token', resourceId: removed.user, resourceName: removed.id, action: 'revoked' }],
          { user: params.user },
        );
        return { status: 204 };
      },
    }),

    // ---- Regions ----
    defineRoute({
      method: 'get',
      path: '/regions',
      operationId: 'listRegions',
      summary: 'Regions (admin)',
      tags: ['regions'],
      access: { kind: 'admin' },
      query: listQuery,
      responses: { 200: listOf(regionResponse) },
      handler: async ({ query }) => {
        const all = (await store.list(keys.regions(), regionSchema, { directChildrenOnly: true })).map((r) => r.value);
        return { status: 200, body: page(all, (r) => r.name, query.limit, query.cursor) };
      },
    }),
    defineRoute({
      method: 'post',
      path: '/regions',
      operationId: 'createRegion',
      summary: 'Add a region (admin)',
      tags: ['regions'],
      access: { kind: 'admin' },
      body: createRegionBody,
      responses: { 201: regionResponse },
      errors: [409],
      etag: true,
      handler: async ({ body, principal: p, idempotency }) => {
        const region: Region = { name: body.name, description: body.description ?? '', createdAt: now() };
        return mutations.answer(
          p,
          async () => ({
            ops: [{ op: 'create', key: keys.region(region.name), value: region }],
            events: [{ kind: 'region', resourceId: region.name, action: 'created', after: region }],
            onFailed: () => new ConflictError(`region "${region.name}" already exists`),
            result: (revision) => ({
              status: 201,
              body: region,
              headers: { ETag: etag(revision), Location: `/api/v1/regions/${region.name}` },
            }),
          }),
          { idempotency },
        );
      },
    }),
    defineRoute({
      method: 'get',
      path: '/regions/:region',
      operationId: 'getRegion',
      summary: 'One region (admin)',
      tags: ['regions'],
      access: { kind: 'admin' },
      params: regionParams,
      responses: { 200: regionResponse },
      etag: true,
      handler: async ({ params }) => {
        const region = await requireRegion(params.region);
        return { status: 200, body: region.value, headers: { ETag: etag(region.modRevision) } };
      },
    }),
    defineRoute({
      method: 'delete',
      path: '/regions/:region',
      operationId: 'deleteRegion',
      summary: 'Remove a region that has no cells (admin)',
      tags: ['regions'],
      access: { kind: 'admin' },
      params: regionParams,
      responses: { 204: undefined },
      errors: [409, 412],
      etag: true,
      handler: async ({ req, params, principal: p }) =>
        mutations.commit(
          p,
          async () => {
            const region = await requireRegion(params.region);
            const cells = await store.childNames(keys.cells(params.region));
            if (cells.length > 0) {
              throw new ConflictError(`region "${params.region}" still has cells: ${cells.join(', ')}`);
            }
            return {
              ops: [{ op: 'delete', key: region.key, modRevision: region.modRevision }],
              pinned: region,
              events: [{ kind: 'region', resourceId: params.region, action: 'deleted', before: region.value }],
              result: () => ({ status: 204 }),
            };
          },
          { req },
        ),
    }),

    // ---- Cells ----
    defineRoute({
      method: 'get',
      path: '/regions/:region/cells',
      operationId: 'listCells',
      summary: "A region's cells (admin)",
      tags: ['regions'],
      access: { kind: 'admin' },
      params: regionParams,
      query: listQuery,
      responses: { 200: listOf(cellResponse) },
      handler: async ({ params, query }) => {
        await requireRegion(params.region);
        const all = (await store.list(keys.cells(params.region), cellSchema)).map((c) => c.value);
        return { status: 200, body: page(all, (c) => c.name, query.limit, query.cursor) };
      },
    }),
    defineRoute({
      method: 'post',
      path: '/regions/:region/cells',
      operationId: 'createCell',
      summary:
        'Add a cell (a Kubernetes cluster) to a region (admin). Its kubeconfig goes to the services that talk to cells, never here.',
      tags: ['regions'],
      access: { kind: 'admin' },
      params: regionParams,
      body: createCellBody,
      responses: { 201: cellResponse },
      errors: [409],
      etag: true,
      handler: async ({ params, body, principal: p, idempotency }) => {
        const region = await requireRegion(params.region);
        const at = now();
        const cell: Cell = {
          name: body.name,
          region: params.region,
          apiServer: body.apiServer,
          state: body.state ?? 'active',
          labels: body.labels ?? {},
          createdAt: at,
          updatedAt: at,
        };
        return mutations.answer(
          p,
          async () => ({
            ops: [
              { op: 'expect', key: region.key, modRevision: region.modRevision },
              { op: 'create', key: keys.cell(params.region, cell.name), value: cell },
            ],
            events: [{ kind: 'cell', resourceId: cell.name, action: 'created', after: cell }],
            onFailed: (failed) =>
              failed.includes(region.key)
                ? new NotFoundError(`no region "${params.region}"`)
                : new ConflictError(`region "${params.region}" already has a cell "${cell.name}"`),
            result: (revision) => ({
              status: 201,
              body: cell,
              headers: { ETag: etag(revision), Location: `/api/v1/regions/${params.region}/cells/${cell.name}` },
            }),
          }),
          { idempotency },
        );
      },
    }),
    defineRoute({
      method: 'get',
      path: '/regions/:region/cells/:cell',
      operationId: 'getCell',
      summary: 'One cell (admin)',
      tags: ['regions'],
      access: { kind: 'admin' },
      params: cellParams,
      responses: { 200: cellResponse },
      etag: true,
      handler: async ({ params }) => {
        const cell = await requireCell(params.region, params.cell);
        return { status: 200, body: cell.value, headers: { ETag: etag(cell.modRevision) } };
      },
    }),
    defineRoute({
      method: 'patch',
      path: '/regions/:region/cells/:cell',
      operationId: 'updateCell',
      summary: 'Cordon or uncordon a cell (state), change its labels or API server URL (admin)',
      tags: ['regions'],
      access: { kind: 'admin' },
      params: cellParams,
      body: patchCellBody,
      responses: { 200: cellResponse },
      errors: [412],
      etag: true,
      handler: async ({ req, params, body, principal: p }) =>
        mutations.commit(
          p,
          async () => {
            const cell = await requireCell(params.region, params.cell);
            const next: Cell = {
              ...cell.value,
              ...(body.apiServer ? { apiServer: body.apiServer } : {}),
              ...(body.state ? { state: body.state } : {}),
              ...(body.labels ? { labels: body.labels } : {}),
              updatedAt: now(),
            };
            const action =
              body.state && body.state !== cell.value.state
                ? body.state === 'cordoned'
                  ? 'cordoned'
                  : 'uncordoned'
                : 'updated';
            return {
              ops: [{ op: 'update', key: cell.key, value: next, modRevision: cell.modRevision }],
              pinned: cell,
              events: [{ kind: 'cell', resourceId: params.cell, action, before: cell.value, after: next }],
              result: (revision) => ({ status: 200, body: next, headers: { ETag: etag(revision) } }),
            };
          },
          { req },
        ),
    }),
    defineRoute({
      method: 'delete',
      path: '/regions/:region/cells/:cell',
      operationId: 'deleteCell',
      summary: 'Remove a cell from a region (admin); the scheduler moves its replicas to the other cells',
      tags: ['regions'],
      access: { kind: 'admin' },
      params: cellParams,
      responses: { 204: undefined },
      errors: [412],
      etag: true,
      handler: async ({ req, params, principal: p }) =>
        mutations.commit(
          p,
          async () => {
            const cell = await requireCell(params.region, params.cell);
            return {
              ops: [{ op: 'delete', key: cell.key, modRevision: cell.modRevision }],
              pinned: cell,
              events: [{ kind: 'cell', resourceId: params.cell, action: 'deleted', before: cell.value }],
              result: () => ({ status: 204 }),
            };
          },
          { req },
        ),
    }),

    // ---- Quotas ----
    defineRoute({
      method: 'put',
      path: '/admin/quotas/:user',
      operationId: 'putQuota',
      summary: "Set a user's quota: apps owned, and total cpu and memory of all replicas of their apps (admin)",
      tags: ['admin'],
      access: { kind: 'admin' },
      params: userParams,
      body: quotaBody,
      responses: { 200: quotaResponse },
      errors: [412],
      etag: true,
      handler: async ({ req, params, body, principal: p }) => {
        if (!(await auth.getUser(params.user))) throw new NotFoundError(`no user "${params.user}"`);
        const done = await mutations.commit(
          p,
          async () => {
            const current = await store.get(keys.quota(params.user), quotaRecordSchema);
            // A user without a quota reads as ETag "0" (GET): If-Match "0" then means "still none".
            const wanted = ifMatchRevision(req);
            if (!current && wanted !== undefined && wanted !== 0) {
              throw new PreconditionFailedError(`"${params.user}" has no quota yet`, {
                extensions: { currentETag: etag(0) },
              });
            }
            const record = { user: params.user, ...body, updatedAt: now() };
            return {
              ops: [
                current
                  ? { op: 'update', key: current.key, value: record, modRevision: current.modRevision }
                  : { op: 'create', key: keys.quota(params.user), value: record },
              ],
              pinned: { key: keys.quota(params.user), modRevision: current?.modRevision ?? 0 },
              events: [
                {
                  kind: 'quota',
                  resourceId: params.user,
                  action: 'updated',
                  ...(current ? { before: current.value } : {}),
                  after: record,
                },
              ],
              result: (revision) => ({ record, revision }),
            };
          },
          { req },
        );
        const usage = await quotas.usage(params.user);
        return {
          status: 200,
          body: {
            ...done.record,
            usage: { apps: usage.apps, cpu: formatCpu(usage.cpuMillis), memory: formatMemory(usage.memoryBytes) },
          },
          headers: { ETag: etag(done.revision) },
        };
      },
    }),
    defineRoute({
      method: 'get',
      path: '/admin/quotas/:user',
      operationId: 'getQuota',
      summary: "A user's quota and what they use now (admin)",
      tags: ['admin'],
      access: { kind: 'admin' },
      params: userParams,
      responses: { 200: quotaResponse },
      etag: true,
      handler: async ({ params }) => {
        if (!(await auth.getUser(params.user))) throw new NotFoundError(`no user "${params.user}"`);
        const current = await store.get(keys.quota(params.user), quotaRecordSchema);
        const usage = await quotas.usage(params.user);
        const record = current?.value ?? { user: params.user, updatedAt: new Date(0).toISOString() };
        return {
          status: 200,
          body: {
            ...record,
            usage: { apps: usage.apps, cpu: formatCpu(usage.cpuMillis), memory: formatMemory(usage.memoryBytes) },
          },
          headers: { ETag: etag(current?.modRevision ?? 0) },
        };
      },
    }),
  ];
}
