/** An app's members and roles, and transferring the app to a new owner. */
import { InputError, NotFoundError } from '@berth/shared/errors';
import { type App, type Member, memberSchema } from '@berth/shared/model';
import type { Op } from '@berth/shared/store';
import { etag, ifMatchRevision } from '../http/conditional.ts';
import { page } from '../http/paging.ts';
import { defineRoute } from '../http/routes.ts';
import { checkMemberChange } from '../rbac/index.ts';
import { loadApp } from './app-access.ts';
import { type ApiContext, now } from './context.ts';
import { matchMember, memberRecord, ownerCount, ownerGuards, requireUser, staleMembership } from './membership.ts';
import { Quotas } from './quotas.ts';
import { appParams, listOf, listQuery, memberParams, memberResponse, putMemberBody, transferBody } from './schemas.ts';

export function memberRoutes(ctx: ApiContext) {
  const { store, keys, mutations } = ctx;
  const quotas = new Quotas(ctx);

  async function members(app: string) {
    return store.list(keys.members(app), memberSchema);
  }

  return [
    defineRoute({
      method: 'get',
      path: '/apps/:app/members',
      operationId: 'listMembers',
      summary: "An app's members and their roles",
      tags: ['members'],
      access: { kind: 'user', scope: 'read' },
      params: appParams,
      query: listQuery,
      responses: { 200: listOf(memberResponse) },
      handler: async ({ params, query, principal }) => {
        await loadApp(ctx, principal, params.app, 'read');
        const all = (await members(params.app)).map((m) => m.value);
        return { status: 200, body: page(all, (m) => m.user, query.limit, query.cursor) };
      },
    }),

    defineRoute({
      method: 'put',
      path: '/apps/:app/members/:user',
      operationId: 'putMember',
      summary: 'Add a member or change their role (Owner, Master; only an Owner grants Owner)',
      tags: ['members'],
      access: { kind: 'user', scope: 'write' },
      params: memberParams,
      body: putMemberBody,
      responses: { 200: memberResponse },
      errors: [403, 409, 412],
      etag: true,
      handler: async ({ req, params, body, principal: p }) => {
        const wanted = ifMatchRevision(req);
        return mutations.commit(
          p,
          async () => {
            const { app, role } = await loadApp(ctx, p, params.app, 'manageMembers');
            await requireUser(ctx, params.user, 'path:user');
            const all = await members(params.app);
            const current = all.find((m) => m.value.user === params.user);
            matchMember(req, wanted, params.user, current?.modRevision);
            checkMemberChange(role, current?.value.role, body.role, ownerCount(all));
            const member = memberRecord(current, params.user, body.role, p.user, now());
            const ops: Op[] = [
              current
                ? { op: 'update', key: current.key, value: member, modRevision: current.modRevision }
                : { op: 'create', key: keys.member(params.app, params.user), value: member },
              // The owner count must not change under us when an Owner is demoted.
              ...ownerGuards(all, current),
            ];
            return {
              ops,
              pinned: current,
              events: [
                {
                  kind: 'member',
                  resourceId: params.app,
                  incarnation: app.value.incarnation,
                  resourceName: params.user,
                  action: current ? 'updated' : 'added',
                  ...(current ? { before: current.value } : {}),
                  after: member,
                },
              ],
              onFailed: (failed) =>
                wanted !== undefined && failed.includes(keys.member(params.app, params.user))
                  ? staleMembership(params.user)
                  : undefined,
              result: (revision) => ({ status: 200, body: member, headers: { ETag: etag(revision) } }),
            };
          },
          { req, serializeOn: `app:${params.app}` },
        );
      },
    }),

    defineRoute({
      method: 'delete',
      path: '/apps/:app/members/:user',
      operationId: 'deleteMember',
      summary: 'Remove a member (Owner, Master; the last Owner cannot be removed)',
      tags: ['members'],
      access: { kind: 'user', scope: 'write' },
      params: memberParams,
      responses: { 204: undefined },
      errors: [403, 409, 412],
      etag: true,
      handler: async ({ req, params, principal: p }) =>
        mutations.commit(
          p,
          async () => {
            const { app, role } = await loadApp(ctx, p, params.app, 'manageMembers');
            const all = await members(params.app);
            const current = all.find((m) => m.value.user === params.user);
            if (!current) throw new NotFoundError(`"${params.user}" is not a member of "${params.app}"`);
            checkMemberChange(role, current.value.role, undefined, ownerCount(all));
            const ops: Op[] = [
              { op: 'delete', key: current.key, modRevision: current.modRevision },
              ...ownerGuards(all, current),
            ];
            return {
              ops,
              pinned: current,
              events: [
                {
                  kind: 'member',
                  resourceId: params.app,
                  incarnation: app.value.incarnation,
                  resourceName: params.user,
                  action: 'removed',
                  before: current.value,
                },
              ],
              result: () => ({ status: 204 }),
            };
          },
          { req, serializeOn: `app:${params.app}` },
        ),
    }),

    defineRoute({
      method: 'post',
      path: '/apps/:app/transfer',
      operationId: 'transferApp',
      summary: 'Make another user the owner of the app (Owner); the previous owner stays as Master',
      tags: ['members'],
      access: { kind: 'user', scope: 'write' },
      params: appParams,
      body: transferBody,
      responses: { 200: memberResponse },
      errors: [403, 409],
      etag: true,
      handler: async ({ params, body, principal: p, idempotency }) =>
        mutations.answer(
          p,
          async () => {
            const { app } = await loadApp(ctx, p, params.app, 'transfer');
            await requireUser(ctx, body.owner, '$.owner');
            if (app.value.owner === body.owner) {
              throw new InputError(`"${body.owner}" already owns "${params.app}"`, [
                { path: '$.owner', message: 'already the owner' },
              ]);
            }
            // The app's whole share of usage moves to the new owner.
            const usage = await quotas.appUsage(params.app);
            const newOwnerGuard = await quotas.check(body.owner, { ...usage, apps: 1 });
            const oldOwnerGuard = await quotas.check(app.value.owner, { apps: -1 });
            const at = now();
            const nextApp: App = { ...app.value, owner: body.owner, updatedAt: at };
            const all = await members(params.app);
            const newOwner: Member = {
              user: body.owner,
              role: 'Owner',
              addedAt: all.find((m) => m.value.user === body.owner)?.value.addedAt ?? at,
              addedBy: p.user,
            };
            const previous = all.find((m) => m.value.user === app.value.owner);
            const ops: Op[] = [
              { op: 'update', key: app.key, value: nextApp, modRevision: app.modRevision },
              { op: 'put', key: keys.member(params.app, body.owner), value: newOwner },
              newOwnerGuard,
              oldOwnerGuard,
            ];
            if (previous) {
              ops.push({
                op: 'update',
                key: previous.key,
                value: { ...previous.value, role: 'Master' },
                modRevision: previous.modRevision,
              });
            }
            return {
              ops,
              events: [
                {
                  kind: 'app',
                  resourceId: params.app,
                  incarnation: app.value.incarnation,
                  action: 'transferred',
                  data: { from: app.value.owner, to: body.owner },
                },
              ],
              result: (revision) => ({ status: 200, body: newOwner, headers: { ETag: etag(revision) } }),
            };
          },
          { serializeOn: `app:${params.app}`, idempotency },
        ),
    }),
  ];
}
