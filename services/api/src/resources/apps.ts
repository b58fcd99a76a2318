/** Apps: create, list (what the caller owns or is a member of), read, change, delete, status. */

import { randomUUID } from 'node:crypto';
import { buildConfigSchema } from '@berth/shared/builds';
import { ConflictError, InputError } from '@berth/shared/errors';
import type { BerthKeys } from '@berth/shared/keys';
import {
  type App,
  appSchema,
  availabilitySchema,
  type Member,
  memberSchema,
  placementSchema,
  regionSchema,
  versionCellStatusSchema,
  versionSchema,
} from '@berth/shared/model';
import type { Store } from '@berth/shared/store';
import { userRecordSchema } from '../auth/records.ts';
import { etag } from '../http/conditional.ts';
import { page } from '../http/paging.ts';
import { defineRoute } from '../http/routes.ts';
import { loadApp } from './app-access.ts';
import { AppLb } from './app-lb.ts';
import { type ApiContext, now } from './context.ts';
import { assertOwnerCanPull } from './image-groups.ts';
import { Quotas, versionUsage } from './quotas.ts';
import {
  appParams,
  appResponse,
  appStatusResponse,
  createAppBody,
  listOf,
  listQuery,
  patchAppBody,
} from './schemas.ts';

/**
 * One page of the apps `user` is a member of (owners are members too), by name: a keys-only scan
 * of the apps finds the caller's memberships (`apps/{app}/members/{user}`), then only that page's
 * apps and memberships are read. No other app's value (nor any version) is read.
 */
export async function memberApps(
  store: Store,
  keys: BerthKeys,
  user: string,
  limit: number,
  cursor: string | undefined,
): Promise<{ items: (App & { role: Member['role'] })[]; next: string | null }> {
  const names: string[] = [];
  for (const kv of await store.keys(keys.apps())) {
    const member = keys.parse('member', kv.key);
    if (member?.user === user) names.push(member.app);
  }
  names.sort();
  const slice = page(names, (n) => n, limit, cursor);
  const rows = await Promise.all(
    slice.items.map(async (app) => {
      const [a, m] = await Promise.all([
        store.get(keys.app(app), appSchema),
        store.get(keys.member(app, user), memberSchema),
      ]);
      // Gone between the scan and the read: left out.
      return a && m ? { ...a.value, role: m.value.role } : undefined;
    }),
  );
  return { items: rows.filter((r) => r !== undefined), next: slice.next };
}

export function appRoutes(ctx: ApiContext) {
  const { store, keys, mutations } = ctx;
  const quotas = new Quotas(ctx);
  const lb = new AppLb(ctx);

  return [
    defineRoute({
      method: 'get',
      path: '/apps',
      operationId: 'listApps',
      summary: 'Apps the caller owns or is a member of (admins: all), by name',
      tags: ['apps'],
      access: { kind: 'user', scope: 'read' },
      query: listQuery,
      responses: { 200: listOf(appResponse) },
      handler: async ({ query, principal: p }) => {
        if (!p.admin) return { status: 200, body: await memberApps(store, keys, p.user, query.limit, query.cursor) };
        const apps = await store.list(keys.apps(), appSchema, { directChildrenOnly: true });
        const visible = apps.map((a) => ({ ...a.value, role: 'Owner' as const }));
        return { status: 200, body: page(visible, (a) => a.name, query.limit, query.cursor) };
      },
    }),

    defineRoute({
      method: 'post',
      path: '/apps',
      operationId: 'createApp',
      summary: 'Create an app; the caller becomes its Owner',
      tags: ['apps'],
      access: { kind: 'user', scope: 'write' },
      body: createAppBody,
      responses: { 201: appResponse },
      errors: [403, 409],
      etag: true,
      handler: async ({ body, principal: p, idempotency }) => {
        const region = await store.get(keys.region(body.region), regionSchema);
        if (!region)
          throw new InputError(`no region "${body.region}"`, [{ path: '$.region', message: 'no such region' }]);
        await assertOwnerCanPull(ctx, p, body.image);
        return mutations.answer(
          p,
          async () => {
            const guard = await quotas.check(p.user, { apps: 1 });
            const at = now();
            const app: App = {
              name: body.name,
              region: body.region,
              image: body.image,
              description: body.description ?? '',
              healthCheck: body.healthCheck,
              ports: body.ports,
              minCells: body.minCells ?? 2,
              owner: p.user,
              lastVersion: 0,
              incarnation: randomUUID(),
              createdAt: at,
              updatedAt: at,
            };
            const member: Member = { user: p.user, role: 'Owner', addedAt: at, addedBy: p.user };
            return {
              ops: [
                { op: 'create', key: keys.app(app.name), value: app },
                { op: 'put', key: keys.member(app.name, p.user), value: member },
                guard,
              ],
              events: [
                { kind: 'app', resourceId: app.name, incarnation: app.incarnation, action: 'created', after: app },
              ],
              onFailed: (failed) =>
                failed.includes(keys.app(app.name)) ? new ConflictError(`app "${app.name}" already exists`) : undefined,
              result: (revision) => ({
                status: 201,
                body: { ...app, role: 'Owner' },
                headers: { ETag: etag(revision), Location: `/api/v1/apps/${app.name}` },
              }),
            };
          },
          { serializeOn: `owner:${p.user}`, idempotency },
        );
      },
    }),

    defineRoute({
      method: 'get',
      path: '/apps/:app',
      operationId: 'getApp',
      summary: 'One app',
      tags: ['apps'],
      access: { kind: 'user', scope: 'read' },
      params: appParams,
      responses: { 200: appResponse },
      etag: true,
      handler: async ({ params, principal }) => {
        const { app, role } = await loadApp(ctx, principal, params.app, 'read');
        return { status: 200, body: { ...app.value, role }, headers: { ETag: etag(app.modRevision) } };
      },
    }),

    defineRoute({
      method: 'patch',
      path: '/apps/:app',
      operationId: 'updateApp',
      summary: 'Change an app (Owner, Master)',
      tags: ['apps'],
      access: { kind: 'user', scope: 'write' },
      params: appParams,
      body: patchAppBody,
      responses: { 200: appResponse },
      errors: [403, 409, 412],
      etag: true,
      handler: async ({ req, params, body, principal: p }) =>
        mutations.commit(
          p,
          async () => {
            const { app, role } = await loadApp(ctx, p, params.app, 'deploy');
            if (body.image && body.image !== app.value.image) {
              // The owner's rights count, not the caller's: the cells pull on the owner's behalf.
              const owner = await store.get(keys.user(app.value.owner), userRecordSchema);
              await assertOwnerCanPull(ctx, { user: app.value.owner, admin: owner?.value.admin ?? false }, body.image);
            }
            const next: App = { ...app.value, ...stripUndefined(body), updatedAt: now() };
            return {
              ops: [{ op: 'update', key: app.key, value: next, modRevision: app.modRevision }],
              pinned: app,
              events: [
                {
                  kind: 'app',
                  resourceId: params.app,
                  incarnation: app.value.incarnation,
                  action: 'updated',
                  before: app.value,
                  after: next,
                },
              ],
              result: (revision) => ({ status: 200, body: { ...next, role }, headers: { ETag: etag(revision) } }),
            };
          },
          { req, serializeOn: `app:${params.app}` },
        ),
    }),

    defineRoute({
      method: 'delete',
      path: '/apps/:app',
      operationId: 'deleteApp',
      summary:
        'Delete an app, its versions, members, domains and traffic (Owner); the scheduler removes it from every cell',
      tags: ['apps'],
      access: { kind: 'user', scope: 'write' },
      params: appParams,
      responses: { 204: undefined },
      errors: [403, 412],
      etag: true,
      handler: async ({ req, params, principal: p }) =>
        mutations.commit(
          p,
          async () => {
            const { app } = await loadApp(ctx, p, params.app, 'delete');
            const guard = await quotas.check(app.value.owner, { apps: -1 });
            // Its domains leave their groups (and their claims free the names) in the same step.
            const routing = await lb.read(params.app);
            const domains = routing.claims.map((c) => c.value.domain);
            // Its build configs go with the prefix; their webhook ids go too.
            const buildConfigs = await store.list(keys.buildConfigs(params.app), buildConfigSchema, {
              directChildrenOnly: true,
            });
            return {
              ops: [
                ...lb.removeAllOps(routing),
                { op: 'delete', key: app.key, modRevision: app.modRevision },
                { op: 'delete-prefix', prefix: `${keys.app(params.app)}/` },
                ...buildConfigs.map((c) => ({ op: 'delete' as const, key: keys.buildConfigId(c.value.id) })),
                guard,
              ],
              pinned: app,
              events: [
                {
                  kind: 'app',
                  resourceId: params.app,
                  incarnation: app.value.incarnation,
                  action: 'deleted',
                  before: app.value,
                  ...(domains.length > 0 ? { data: { domains } } : {}),
                },
              ],
              result: () => ({ status: 204 }),
            };
          },
          { req, serializeOn: `app:${params.app}` },
        ),
    }),

    defineRoute({
      method: 'get',
      path: '/apps/:app/status',
      operationId: 'getAppStatus',
      summary: 'What the scheduler reports of each version, per cell',
      tags: ['apps'],
      access: { kind: 'user', scope: 'read' },
      params: appParams,
      responses: { 200: appStatusResponse },
      handler: async ({ params, principal }) => {
        await loadApp(ctx, principal, params.app, 'read');
        const [versions, placements, statuses, availability] = await Promise.all([
          store.list(keys.versions(params.app), versionSchema),
          store.list(keys.appPlacements(params.app), placementSchema),
          store.list(keys.appStatus(params.app), versionCellStatusSchema),
          store.list(keys.appAvailability(params.app), availabilitySchema),
        ]);
        const body = {
          app: params.app,
          versions: versions
            .map((v) => v.value)
            .sort((a, b) => b.number - a.number)
            .map((v) => {
              const placement = placements.find((pl) => pl.value.version === v.name)?.value;
              // Availability has its own key (the scheduler writes it apart from the placement);
              // it shows among the placement's conditions.
              const available = availability.find((a) => a.value.version === v.name)?.value.condition;
              const cells = statuses
                .filter((s) => s.value.version === v.name)
                .map(({ value: { app: _a, version: _v, ...cell } }) => cell);
              return {
                name: v.name,
                replicas: v.replicas,
                placement: placement
                  ? {
                      cells: placement.cells,
                      generation: placement.generation,
                      // The availability record, when the scheduler writes one, replaces the
                      // placement's own Available condition.
                      conditions: available
                        ? [...placement.conditions.filter((c) => c.type !== 'Available'), available]
                        : placement.conditions,
                    }
                  : null,
                cells,
                ready: cells.reduce((n, c) => n + c.ready, 0),
                available: cells.reduce((n, c) => n + c.available, 0),
              };
            }),
        };
        return { status: 200, body };
      },
    }),
  ];
}

function stripUndefined<T extends Record<string, unknown>>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

export { versionUsage };
