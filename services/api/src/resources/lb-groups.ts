/**
 * LB groups: Nginx clusters (e.g. `public`, `internal`) that serve domains, with the addresses
 * users point DNS at. Admins create, change and delete them; every signed-in user may read them
 * (to choose one for a domain) and see how each of a group's lb-agents is doing.
 */
import { ConflictError, NotFoundError } from '@berth/shared/errors';
import { type LbGroup, lbAgentStatusSchema, lbGroupSchema } from '@berth/shared/model';
import { etag } from '../http/conditional.ts';
import { page } from '../http/paging.ts';
import { defineRoute } from '../http/routes.ts';
import { type ApiContext, now } from './context.ts';
import {
  createLbGroupBody,
  lbAgentResponse,
  lbGroupParams,
  lbGroupResponse,
  listOf,
  listQuery,
  patchLbGroupBody,
} from './schemas.ts';

export function lbGroupRoutes(ctx: ApiContext) {
  const { store, keys, mutations } = ctx;

  async function requireGroup(name: string) {
    const group = await store.get(keys.lbGroup(name), lbGroupSchema);
    if (!group) throw new NotFoundError(`no LB group "${name}"`);
    return group;
  }

  return [
    defineRoute({
      method: 'get',
      path: '/lb-groups',
      operationId: 'listLbGroups',
      summary: 'LB groups (Nginx clusters), by name',
      tags: ['lb'],
      access: { kind: 'user', scope: 'read' },
      query: listQuery,
      responses: { 200: listOf(lbGroupResponse) },
      handler: async ({ query }) => {
        const all = (await store.list(keys.lbGroups(), lbGroupSchema, { directChildrenOnly: true })).map(
          (g) => g.value,
        );
        return { status: 200, body: page(all, (g) => g.name, query.limit, query.cursor) };
      },
    }),

    defineRoute({
      method: 'post',
      path: '/lb-groups',
      operationId: 'createLbGroup',
      summary: 'Add an LB group (admin)',
      tags: ['lb'],
      access: { kind: 'admin' },
      body: createLbGroupBody,
      responses: { 201: lbGroupResponse },
      errors: [409],
      etag: true,
      handler: async ({ body, principal: p, idempotency }) => {
        const at = now();
        const group: LbGroup = {
          name: body.name,
          description: body.description ?? '',
          vips: body.vips ?? [],
          cname: body.cname ?? null,
          createdAt: at,
          updatedAt: at,
        };
        return mutations.answer(
          p,
          async () => ({
            ops: [{ op: 'create', key: keys.lbGroup(group.name), value: group }],
            events: [{ kind: 'lb-group', resourceId: group.name, action: 'created', after: group }],
            onFailed: () => new ConflictError(`LB group "${group.name}" already exists`),
            result: (revision) => ({
              status: 201,
              body: group,
              headers: { ETag: etag(revision), Location: `/api/v1/lb-groups/${group.name}` },
            }),
          }),
          { idempotency },
        );
      },
    }),

    defineRoute({
      method: 'get',
      path: '/lb-groups/:group',
      operationId: 'getLbGroup',
      summary: 'One LB group',
      tags: ['lb'],
      access: { kind: 'user', scope: 'read' },
      params: lbGroupParams,
      responses: { 200: lbGroupResponse },
      etag: true,
      handler: async ({ params }) => {
        const group = await requireGroup(params.group);
        return { status: 200, body: group.value, headers: { ETag: etag(group.modRevision) } };
      },
    }),

    defineRoute({
      method: 'patch',
      path: '/lb-groups/:group',
      operationId: 'updateLbGroup',
      summary: "Change an LB group's description, addresses or CNAME (admin)",
      tags: ['lb'],
      access: { kind: 'admin' },
      params: lbGroupParams,
      body: patchLbGroupBody,
      responses: { 200: lbGroupResponse },
      errors: [412],
      etag: true,
      handler: async ({ req, params, body, principal: p }) =>
        mutations.commit(
          p,
          async () => {
            const group = await requireGroup(params.group);
            const next: LbGroup = {
              ...group.value,
              ...(body.description !== undefined ? { description: body.description } : {}),
              ...(body.vips !== undefined ? { vips: body.vips } : {}),
              ...(body.cname !== undefined ? { cname: body.cname } : {}),
              updatedAt: now(),
            };
            return {
              ops: [{ op: 'update', key: group.key, value: next, modRevision: group.modRevision }],
              pinned: group,
              events: [
                { kind: 'lb-group', resourceId: params.group, action: 'updated', before: group.value, after: next },
              ],
              result: (revision) => ({ status: 200, body: next, headers: { ETag: etag(revision) } }),
            };
          },
          { req },
        ),
    }),

    defineRoute({
      method: 'delete',
      path: '/lb-groups/:group',
      operationId: 'deleteLbGroup',
      summary: 'Remove an LB group that serves no domain (admin)',
      tags: ['lb'],
      access: { kind: 'admin' },
      params: lbGroupParams,
      responses: { 204: undefined },
      errors: [409, 412],
      etag: true,
      handler: async ({ req, params, principal: p }) =>
        mutations.commit(
          p,
          async () => {
            const group = await requireGroup(params.group);
            // A domain bound meanwhile rewrites the group record (./domains.ts), so this delete's
            // compare fails and it reads the domains again.
            const domains = await store.childNames(keys.slbDomains(params.group));
            if (domains.length > 0) {
              const shown = domains.slice(0, 10).join(', ');
              throw new ConflictError(
                `LB group "${params.group}" still serves ${domains.length} domain(s): ${shown}${domains.length > 10 ? ', …' : ''}`,
              );
            }
            return {
              ops: [{ op: 'delete', key: group.key, modRevision: group.modRevision }],
              pinned: group,
              events: [{ kind: 'lb-group', resourceId: params.group, action: 'deleted', before: group.value }],
              result: () => ({ status: 204 }),
            };
          },
          { req },
        ),
    }),

    defineRoute({
      method: 'get',
      path: '/lb-groups/:group/agents',
      operationId: 'listLbAgents',
      summary:
        "The group's lb-agents: the config generation each has applied, the last good one, domains that failed nginx -t, and when each last reported",
      tags: ['lb'],
      access: { kind: 'user', scope: 'read' },
      params: lbGroupParams,
      query: listQuery,
      responses: { 200: listOf(lbAgentResponse) },
      handler: async ({ params, query }) => {
        await requireGroup(params.group);
        const agents = (
          await store.list(keys.lbAgents(params.group), lbAgentStatusSchema, { directChildrenOnly: true })
        ).map(({ value: { statsUrl: _internal, ...agent } }) => agent);
        return { status: 200, body: page(agents, (a) => a.host, query.limit, query.cursor) };
      },
    }),
  ];
}
