/** Apps: create, list (what the caller owns or is a member of), read, change, delete, status. */
import { ConflictError, InputError, PreconditionFailedError } from '@berth/shared/errors';
import {
  type App,
  appSchema,
  type Member,
  memberSchema,
  placementSchema,
  regionSchema,
  versionCellStatusSchema,
  versionSchema,
} from '@berth/shared/model';
import { defineRoute } from '../http/routes.ts';
import { commitWithRetry, loadApp } from './access.ts';
import { type ApiContext, checkIfMatch, etag, ifMatchRevision, now, page, recordEvent } from './context.ts';
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

export function appRoutes(ctx: ApiContext) {
  const { store, keys } = ctx;
  const quotas = new Quotas(ctx);

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
      handler: async ({ query, principal }) => {
        const p = principal!;
        const apps = await store.list(keys.apps(), appSchema, { directChildrenOnly: true });
        let visible: (App & { role?: Member['role'] })[];
        if (p.admin) {
          visible = apps.map((a) => ({ ...a.value, role: 'Owner' as const }));
        } else {
          // One keys-only scan finds every membership of the caller.
          const roles = new Map<string, Member['role']>();
          const suffix = `/members/${p.user}`;
          const memberships = await store.list(keys.apps(), memberSchema, { keyFilter: (k) => k.endsWith(suffix) });
          for (const m of memberships) {
            roles.set(m.key.slice(keys.apps().length, -suffix.length), m.value.role);
          }
          visible = apps
            .filter((a) => roles.has(a.value.name))
            .map((a) => ({ ...a.value, role: roles.get(a.value.name) }));
        }
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
      handler: async ({ body, principal }) => {
        const p = principal!;
        const region = await store.get(keys.region(body.region), regionSchema);
        if (!region)
          throw new InputError(`no region "${body.region}"`, [{ path: '$.region', message: 'no such region' }]);
        const created = await commitWithRetry(
          ctx,
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
              onFailed: (failed) =>
                failed.includes(keys.app(app.name)) ? new ConflictError(`app "${app.name}" already exists`) : undefined,
              result: (revision) => ({ app, revision }),
            };
          },
          { serializeOn: `owner:${p.user}` },
        );
        await recordEvent(ctx, p, { kind: 'app', resourceId: created.app.name, action: 'created', after: created.app });
        return {
          status: 201,
          body: { ...created.app, role: 'Owner' },
          headers: { ETag: etag(created.revision), Location: `/api/v1/apps/${created.app.name}` },
        };
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
        const { app, role } = await loadApp(ctx, principal!, params.app, 'read');
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
      handler: async ({ req, params, body, principal }) => {
        const p = principal!;
        const wanted = ifMatchRevision(req);
        const done = await commitWithRetry(
          ctx,
          async () => {
            const { app, role } = await loadApp(ctx, p, params.app, 'deploy');
            checkIfMatch(req, app.modRevision);
            const next: App = { ...app.value, ...stripUndefined(body), updatedAt: now() };
            return {
              ops: [{ op: 'update', key: app.key, value: next, modRevision: app.modRevision }],
              onFailed: () =>
                wanted !== undefined ? new PreconditionFailedError('the app changed; read it again') : undefined,
              result: (revision) => ({ before: app.value, after: next, role, revision }),
            };
          },
          { serializeOn: `app:${params.app}` },
        );
        await recordEvent(ctx, p, {
          kind: 'app',
          resourceId: params.app,
          action: 'updated',
          before: done.before,
          after: done.after,
        });
        return { status: 200, body: { ...done.after, role: done.role }, headers: { ETag: etag(done.revision) } };
      },
    }),

    defineRoute({
      method: 'delete',
      path: '/apps/:app',
      operationId: 'deleteApp',
      summary: 'Delete an app, its versions and members (Owner); the scheduler removes it from every cell',
      tags: ['apps'],
      access: { kind: 'user', scope: 'write' },
      params: appParams,
      responses: { 204: undefined },
      errors: [403, 412],
      etag: true,
      handler: async ({ req, params, principal }) => {
        const p = principal!;
        const wanted = ifMatchRevision(req);
        const before = await commitWithRetry(
          ctx,
          async () => {
            const { app } = await loadApp(ctx, p, params.app, 'delete');
            checkIfMatch(req, app.modRevision);
            const guard = await quotas.check(app.value.owner, { apps: -1 });
            return {
              ops: [
                { op: 'delete', key: app.key, modRevision: app.modRevision },
                { op: 'delete-prefix', prefix: `${keys.app(params.app)}/` },
                guard,
              ],
              onFailed: (failed) =>
                wanted !== undefined && failed.includes(app.key)
                  ? new PreconditionFailedError('the app changed; read it again')
                  : undefined,
              result: () => app.value,
            };
          },
          { serializeOn: `app:${params.app}` },
        );
        await recordEvent(ctx, p, { kind: 'app', resourceId: params.app, action: 'deleted', before });
        return { status: 204 };
      },
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
        await loadApp(ctx, principal!, params.app, 'read');
        const [versions, placements, statuses] = await Promise.all([
          store.list(keys.versions(params.app), versionSchema),
          store.list(keys.appPlacements(params.app), placementSchema),
          store.list(keys.appStatus(params.app), versionCellStatusSchema),
        ]);
        const body = {
          app: params.app,
          versions: versions
            .map((v) => v.value)
            .sort((a, b) => b.number - a.number)
            .map((v) => {
              const placement = placements.find((pl) => pl.value.version === v.name)?.value;
              const cells = statuses
                .filter((s) => s.value.version === v.name)
                .map(({ value: { app: _a, version: _v, ...cell } }) => cell);
              return {
                name: v.name,
                replicas: v.replicas,
                placement: placement
                  ? { cells: placement.cells, generation: placement.generation, conditions: placement.conditions }
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
