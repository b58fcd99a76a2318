/**
 * Image groups: the namespaces of the region's registry (`team` in `team/shop`), public (anyone
 * may pull) or private (members only: others get 404), with members in the shared roles
 * (../rbac): Owner, Master and Developer push; Reporter and Guest pull. The creator is the
 * group's Owner; platform admins see and manage every group. The registry token server
 * (./registry-token.ts) reads the same records.
 */
import { ConflictError, InputError, NotFoundError } from '@berth/shared/errors';
import {
  dnsLabelSchema,
  type ImageGroup,
  type ImageGroupMember,
  imageGroupMemberSchema,
  imageGroupSchema,
  ROLES,
  type Role,
  userNameSchema,
} from '@berth/shared/model';
import type { Op, Stored } from '@berth/shared/store';
import { z } from 'zod';
import type { Principal } from '../auth/principal.ts';
import { etag, ifMatchRevision } from '../http/conditional.ts';
import { page } from '../http/paging.ts';
import { defineRoute } from '../http/routes.ts';
import { type Action, authorize, checkMemberChange } from '../rbac/index.ts';
import type { RegistryClient } from '../registry/registry-client.ts';
import { type ApiContext, now } from './context.ts';
import { matchMember, memberRecord, ownerCount, ownerGuards, requireUser, staleMembership } from './membership.ts';
import { listOf, listQuery, memberResponse, putMemberBody } from './schemas.ts';

// ---- Request and response bodies --------------------------------------------------------------

export const imageGroupParams = z.object({ group: dnsLabelSchema }).strict();
export const imageGroupMemberParams = z.object({ group: dnsLabelSchema, user: userNameSchema }).strict();

export const createImageGroupBody = z
  .object({
    name: dnsLabelSchema.describe('The first path segment of its repositories: `team` in `team/shop`'),
    public: z.boolean().optional().describe('Anyone may pull (default false: members only)'),
    description: z.string().max(1000).optional(),
  })
  .strict();
export const patchImageGroupBody = createImageGroupBody.omit({ name: true });

export const imageGroupResponse = imageGroupSchema.extend({
  /** The caller's role in the group (admins see Owner; absent for a non-member of a public group). */
  role: z.enum(ROLES).optional(),
});

// ---- Access -----------------------------------------------------------------------------------

export type ImageGroupAccess = {
  group: Stored<ImageGroup>;
  /** The caller's effective role (admins act as Owner; a non-member reading a public group, Guest). */
  role: Role;
  membership: Stored<ImageGroupMember> | undefined;
};

/** The group and the caller's role, or 404 (no group, or a private one the caller is not in) / 403. */
export async function loadImageGroup(
  ctx: ApiContext,
  principal: Principal,
  name: string,
  action: Action,
): Promise<ImageGroupAccess> {
  const [group, membership] = await Promise.all([
    ctx.store.get(ctx.keys.imageGroup(name), imageGroupSchema),
    ctx.store.get(ctx.keys.imageGroupMember(name, principal.user), imageGroupMemberSchema),
  ]);
  if (!group) throw new NotFoundError(`no image group "${name}"`);
  const role = authorize(
    principal,
    { kind: 'image group', name, private: !group.value.public },
    membership?.value.role,
    action,
  );
  return { group, role, membership };
}

/**
 * An app's image must be one its owner can pull: a repository of a public image group, or of a
 * private one the owner is a member of (admins pull everything). A group that does not exist yet
 * is accepted: nobody can push there until it is created, and its creator becomes its Owner.
 */
export async function assertOwnerCanPull(
  ctx: ApiContext,
  owner: { user: string; admin: boolean },
  image: string,
): Promise<void> {
  if (owner.admin) return;
  const name = image.split('/')[0] as string;
  const [group, membership] = await Promise.all([
    ctx.store.get(ctx.keys.imageGroup(name), imageGroupSchema),
    ctx.store.get(ctx.keys.imageGroupMember(name, owner.user), imageGroupMemberSchema),
  ]);
  if (!group || group.value.public || membership) return;
  throw new InputError(`the app's owner "${owner.user}" cannot pull ${image}`, [
    { path: '$.image', message: `"${name}" is a private image group "${owner.user}" is not a member of` },
  ]);
}

// ---- Routes -----------------------------------------------------------------------------------

/**
 * `registry`, when the API reaches the registry: a group whose repositories still hold tags
 * cannot be deleted, or a new group of its name would inherit the old group's images.
 */
export function imageGroupRoutes(ctx: ApiContext, registry?: RegistryClient) {
  const { store, keys, mutations } = ctx;

  async function members(group: string) {
    return store.list(keys.imageGroupMembers(group), imageGroupMemberSchema);
  }

  return [
    defineRoute({
      method: 'get',
      path: '/image-groups',
      operationId: 'listImageGroups',
      summary: 'Image groups the caller may see: public ones and those they are a member of (admins: all), by name',
      tags: ['images'],
      access: { kind: 'user', scope: 'read' },
      query: listQuery,
      responses: { 200: listOf(imageGroupResponse) },
      handler: async ({ query, principal: p }) => {
        const groups = await store.list(keys.imageGroups(), imageGroupSchema, { directChildrenOnly: true });
        // One keys-only scan finds every membership of the caller.
        const roles = new Map<string, Role>();
        const memberships = await store.list(keys.imageGroups(), imageGroupMemberSchema, {
          keyFilter: (k) => keys.parse('imageGroupMember', k)?.user === p.user,
        });
        for (const m of memberships) {
          const group = keys.parse('imageGroupMember', m.key)?.group;
          if (group) roles.set(group, m.value.role);
        }
        const visible = groups
          .map((g) => g.value)
          .filter((g) => p.admin || g.public || roles.has(g.name))
          .map((g) => {
            const role = p.admin ? 'Owner' : roles.get(g.name);
            return role ? { ...g, role } : g;
          });
        return { status: 200, body: page(visible, (g) => g.name, query.limit, query.cursor) };
      },
    }),

    defineRoute({
      method: 'post',
      path: '/image-groups',
      operationId: 'createImageGroup',
      summary: 'Create an image group; the caller becomes its Owner',
      tags: ['images'],
      access: { kind: 'user', scope: 'write' },
      body: createImageGroupBody,
      responses: { 201: imageGroupResponse },
      errors: [409],
      etag: true,
      handler: async ({ body, principal: p, idempotency }) =>
        mutations.answer(
          p,
          async () => {
            const at = now();
            const group: ImageGroup = {
              name: body.name,
              public: body.public ?? false,
              description: body.description ?? '',
              createdBy: p.user,
              createdAt: at,
              updatedAt: at,
            };
            const owner: ImageGroupMember = { user: p.user, role: 'Owner', addedAt: at, addedBy: p.user };
            return {
              ops: [
                { op: 'create', key: keys.imageGroup(group.name), value: group },
                { op: 'put', key: keys.imageGroupMember(group.name, p.user), value: owner },
              ],
              events: [{ kind: 'image-group', resourceId: group.name, action: 'created', after: group }],
              onFailed: (failed) =>
                failed.includes(keys.imageGroup(group.name))
                  ? new ConflictError(`image group "${group.name}" already exists`)
                  : undefined,
              result: (revision) => ({
                status: 201,
                body: { ...group, role: 'Owner' },
                headers: { ETag: etag(revision), Location: `/api/v1/image-groups/${group.name}` },
              }),
            };
          },
          { serializeOn: `image-group:${body.name}`, idempotency },
        ),
    }),

    defineRoute({
      method: 'get',
      path: '/image-groups/:group',
      operationId: 'getImageGroup',
      summary: 'One image group',
      tags: ['images'],
      access: { kind: 'user', scope: 'read' },
      params: imageGroupParams,
      responses: { 200: imageGroupResponse },
      etag: true,
      handler: async ({ params, principal: p }) => {
        const { group, role, membership } = await loadImageGroup(ctx, p, params.group, 'read');
        const body = membership || p.admin ? { ...group.value, role } : group.value;
        return { status: 200, body, headers: { ETag: etag(group.modRevision) } };
      },
    }),

    defineRoute({
      method: 'patch',
      path: '/image-groups/:group',
      operationId: 'updateImageGroup',
      summary: "Change an image group's description or visibility (Owner, Master)",
      tags: ['images'],
      access: { kind: 'user', scope: 'write' },
      params: imageGroupParams,
      body: patchImageGroupBody,
      responses: { 200: imageGroupResponse },
      errors: [403, 412],
      etag: true,
      handler: async ({ req, params, body, principal: p }) =>
        mutations.commit(
          p,
          async () => {
            const { group, role } = await loadImageGroup(ctx, p, params.group, 'deploy');
            const next: ImageGroup = {
              ...group.value,
              ...(body.public !== undefined ? { public: body.public } : {}),
              ...(body.description !== undefined ? { description: body.description } : {}),
              updatedAt: now(),
            };
            return {
              ops: [{ op: 'update', key: group.key, value: next, modRevision: group.modRevision }],
              pinned: group,
              events: [
                { kind: 'image-group', resourceId: params.group, action: 'updated', before: group.value, after: next },
              ],
              result: (revision) => ({ status: 200, body: { ...next, role }, headers: { ETag: etag(revision) } }),
            };
          },
          { req, serializeOn: `image-group:${params.group}` },
        ),
    }),

    defineRoute({
      method: 'delete',
      path: '/image-groups/:group',
      operationId: 'deleteImageGroup',
      summary: 'Delete an image group and its members (Owner); refused while its repositories hold tags',
      tags: ['images'],
      access: { kind: 'user', scope: 'write' },
      params: imageGroupParams,
      responses: { 204: undefined },
      errors: [403, 409, 412],
      etag: true,
      handler: async ({ req, params, principal: p }) =>
        mutations.commit(
          p,
          async () => {
            const { group } = await loadImageGroup(ctx, p, params.group, 'delete');
            if (registry) {
              const tagged: string[] = [];
              for (const repo of await registry.repositories(`${params.group}/`)) {
                if ((await registry.tags(repo).catch(() => [])).length > 0) tagged.push(repo);
              }
              if (tagged.length > 0) {
                throw new ConflictError(
                  `image group "${params.group}" still has images in ${tagged.slice(0, 10).join(', ')}${tagged.length > 10 ? ', …' : ''}: delete their tags first`,
                  { extensions: { repositories: tagged } },
                );
              }
            }
            return {
              ops: [
                { op: 'delete', key: group.key, modRevision: group.modRevision },
                { op: 'delete-prefix', prefix: `${keys.imageGroup(params.group)}/` },
              ],
              pinned: group,
              events: [{ kind: 'image-group', resourceId: params.group, action: 'deleted', before: group.value }],
              result: () => ({ status: 204 }),
            };
          },
          { req, serializeOn: `image-group:${params.group}` },
        ),
    }),

    defineRoute({
      method: 'get',
      path: '/image-groups/:group/members',
      operationId: 'listImageGroupMembers',
      summary: "An image group's members and their roles",
      tags: ['images'],
      access: { kind: 'user', scope: 'read' },
      params: imageGroupParams,
      query: listQuery,
      responses: { 200: listOf(memberResponse) },
      handler: async ({ params, query, principal: p }) => {
        await loadImageGroup(ctx, p, params.group, 'read');
        const all = (await members(params.group)).map((m) => m.value);
        return { status: 200, body: page(all, (m) => m.user, query.limit, query.cursor) };
      },
    }),

    defineRoute({
      method: 'put',
      path: '/image-groups/:group/members/:user',
      operationId: 'putImageGroupMember',
      summary: 'Add a member to an image group or change their role (Owner, Master; only an Owner grants Owner)',
      tags: ['images'],
      access: { kind: 'user', scope: 'write' },
      params: imageGroupMemberParams,
      body: putMemberBody,
      responses: { 200: memberResponse },
      errors: [403, 409, 412],
      etag: true,
      handler: async ({ req, params, body, principal: p }) => {
        const wanted = ifMatchRevision(req);
        return mutations.commit(
          p,
          async () => {
            const { group, role } = await loadImageGroup(ctx, p, params.group, 'manageMembers');
            await requireUser(ctx, params.user, 'path:user');
            const all = await members(params.group);
            const current = all.find((m) => m.value.user === params.user);
            matchMember(req, wanted, params.user, current?.modRevision);
            checkMemberChange(role, current?.value.role, body.role, ownerCount(all));
            const member: ImageGroupMember = memberRecord(current, params.user, body.role, p.user, now());
            const ops: Op[] = [
              current
                ? { op: 'update', key: current.key, value: member, modRevision: current.modRevision }
                : { op: 'create', key: keys.imageGroupMember(params.group, params.user), value: member },
              // The group must still be there, and the owner count must not change under us.
              { op: 'expect', key: group.key, modRevision: group.modRevision },
              ...ownerGuards(all, current),
            ];
            return {
              ops,
              pinned: current,
              events: [
                {
                  kind: 'image-group-member',
                  resourceId: params.group,
                  resourceName: params.user,
                  action: current ? 'updated' : 'added',
                  ...(current ? { before: current.value } : {}),
                  after: member,
                },
              ],
              onFailed: (failed) =>
                wanted !== undefined && failed.includes(keys.imageGroupMember(params.group, params.user))
                  ? staleMembership(params.user)
                  : undefined,
              result: (revision) => ({ status: 200, body: member, headers: { ETag: etag(revision) } }),
            };
          },
          { req, serializeOn: `image-group:${params.group}` },
        );
      },
    }),

    defineRoute({
      method: 'delete',
      path: '/image-groups/:group/members/:user',
      operationId: 'deleteImageGroupMember',
      summary: 'Remove a member from an image group (Owner, Master; the last Owner cannot be removed)',
      tags: ['images'],
      access: { kind: 'user', scope: 'write' },
      params: imageGroupMemberParams,
      responses: { 204: undefined },
      errors: [403, 409, 412],
      etag: true,
      handler: async ({ req, params, principal: p }) =>
        mutations.commit(
          p,
          async () => {
            const { role } = await loadImageGroup(ctx, p, params.group, 'manageMembers');
            const all = await members(params.group);
            const current = all.find((m) => m.value.user === params.user);
            if (!current) throw new NotFoundError(`"${params.user}" is not a member of image group "${params.group}"`);
            checkMemberChange(role, current.value.role, undefined, ownerCount(all));
            return {
              ops: [{ op: 'delete', key: current.key, modRevision: current.modRevision }, ...ownerGuards(all, current)],
              pinned: current,
              events: [
                {
                  kind: 'image-group-member',
                  resourceId: params.group,
                  resourceName: params.user,
                  action: 'removed',
                  before: current.value,
                },
              ],
              result: () => ({ status: 204 }),
            };
          },
          { req, serializeOn: `image-group:${params.group}` },
        ),
    }),
  ];
}
