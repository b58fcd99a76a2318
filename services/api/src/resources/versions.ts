/**
 * Versions: immutable deploy specs named v1, v2, … A new version copies every field the request
 * leaves out from the newest version, so an upgrade can be just a new image tag. Only replicas
 * change afterwards (scale, rollback).
 */
import { ConflictError, InputError, NotFoundError } from '@berth/shared/errors';
import { REDACTED } from '@berth/shared/logging';
import { type App, type Role, type Version, versionSchema } from '@berth/shared/model';
import type { Op, Stored } from '@berth/shared/store';
import { z } from 'zod';
import { etag } from '../http/conditional.ts';
import type { ChangeEvent } from '../http/mutation.ts';
import { defineRoute } from '../http/routes.ts';
import { roleAllows } from '../rbac/index.ts';
import { loadApp } from './app-access.ts';
import { AppLb } from './app-lb.ts';
import { type ApiContext, now } from './context.ts';
import { Quotas, versionUsage } from './quotas.ts';
import {
  appParams,
  createVersionBody,
  listOf,
  listQuery,
  rollbackBody,
  rollbackResponse,
  scaleBody,
  versionParams,
  versionResponse,
} from './schemas.ts';
import { trafficChange } from './traffic.ts';

/** Defaults of an app's first version for what the request leaves out (besides the image tag). */
const FIRST_VERSION_DEFAULTS = { replicas: 2, cpu: '500m', memory: '512Mi' } as const;

function byNumberDesc(a: Version, b: Version): number {
  return b.number - a.number;
}

/**
 * A version as a reader sees it (list, get): env values need Developer or above (docs/secrets.md);
 * a Guest or Reporter sees every env name with the value null. Writes answer Masters: all values.
 */
export const versionReadResponse = versionResponse.extend({
  env: z
    .record(z.string(), z.string().nullable())
    .describe('Environment variables by name; each value is null for callers below Developer'),
});

/** A version as a caller with `role` sees it: env values need Developer or above, names do not. */
export function versionView(
  version: Version,
  role: Role,
): Version | (Omit<Version, 'env'> & { env: Record<string, null> }) {
  if (roleAllows(role, 'readEnv')) return version;
  return { ...version, env: Object.fromEntries(Object.keys(version.env).map((name) => [name, null])) };
}

/**
 * A version as its events carry it: env names, every value replaced. Events outlive versions,
 * are read by every member (Guest included) and copied to JetStream; a value's key name does not
 * say whether it holds a credential (`DATABASE_URL`, `STRIPE_SK`), so no value is kept.
 */
export function versionInEvent(version: Version): Version {
  return { ...version, env: Object.fromEntries(Object.keys(version.env).map((name) => [name, REDACTED])) };
}

/**
 * The ops and event of an app's next version: fields the request leaves out are copied from the
 * newest version (or the first version's defaults), checked against the owner's quota. Used by
 * `POST /apps/{app}/versions` and by builds' autoDeploy.
 */
export async function nextVersionChange(
  ctx: ApiContext,
  quotas: Quotas,
  app: Stored<App>,
  body: z.output<typeof createVersionBody>,
  user: string,
): Promise<{ version: Version; ops: Op[]; events: ChangeEvent[] }> {
  const { store, keys } = ctx;
  const name = app.value.name;
  let newest: Version | undefined;
  if (app.value.lastVersion > 0) {
    newest = (await store.get(keys.version(name, `v${app.value.lastVersion}`), versionSchema))?.value;
  }
  newest ??= (await store.list(keys.versions(name), versionSchema)).map((v) => v.value).sort(byNumberDesc)[0];
  const imageTag = body.imageTag ?? newest?.imageTag;
  if (!imageTag) {
    throw new InputError('the first version of an app needs an image tag', [
      { path: '$.imageTag', message: 'required: there is no earlier version to copy it from' },
    ]);
  }
  const number = Math.max(app.value.lastVersion, newest?.number ?? 0) + 1;
  const at = now();
  const version: Version = {
    app: name,
    name: `v${number}`,
    number,
    imageTag,
    replicas: body.replicas ?? newest?.replicas ?? FIRST_VERSION_DEFAULTS.replicas,
    cpu: body.cpu ?? newest?.cpu ?? FIRST_VERSION_DEFAULTS.cpu,
    memory: body.memory ?? newest?.memory ?? FIRST_VERSION_DEFAULTS.memory,
    env: body.env ?? newest?.env ?? {},
    ports: body.ports ?? newest?.ports ?? app.value.ports,
    healthCheck: body.healthCheck ?? newest?.healthCheck ?? app.value.healthCheck,
    command: body.command ?? newest?.command ?? [],
    createdAt: at,
    createdBy: user,
    updatedAt: at,
  };
  const guard = await quotas.check(app.value.owner, versionUsage(version));
  return {
    version,
    ops: [
      { op: 'update', key: app.key, value: { ...app.value, lastVersion: number }, modRevision: app.modRevision },
      { op: 'create', key: keys.version(name, version.name), value: version },
      guard,
    ],
    events: [
      {
        kind: 'version',
        resourceId: name,
        incarnation: app.value.incarnation,
        resourceName: version.name,
        action: 'created',
        after: versionInEvent(version),
      },
    ],
  };
}

export function versionRoutes(ctx: ApiContext) {
  const { store, keys, mutations } = ctx;
  const quotas = new Quotas(ctx);
  const lb = new AppLb(ctx);

  async function listVersions(app: string): Promise<Version[]> {
    return (await store.list(keys.versions(app), versionSchema)).map((v) => v.value).sort(byNumberDesc);
  }

  return [
    defineRoute({
      method: 'get',
      path: '/apps/:app/versions',
      operationId: 'listVersions',
      summary: "An app's versions, newest first (env values: Developer and up; others see null)",
      tags: ['versions'],
      access: { kind: 'user', scope: 'read' },
      params: appParams,
      query: listQuery,
      responses: { 200: listOf(versionReadResponse) },
      handler: async ({ params, query, principal }) => {
        const { role } = await loadApp(ctx, principal, params.app, 'read');
        const versions = await listVersions(params.app);
        const after = query.cursor ? Number(query.cursor.replace(/^v/, '')) : Number.POSITIVE_INFINITY;
        const rest = versions.filter((v) => v.number < after);
        const items = rest.slice(0, query.limit).map((v) => versionView(v, role));
        const last = items[items.length - 1];
        return { status: 200, body: { items, next: rest.length > query.limit && last ? last.name : null } };
      },
    }),

    defineRoute({
      method: 'post',
      path: '/apps/:app/versions',
      operationId: 'createVersion',
      summary: 'Create the next version; fields left out are copied from the newest version (Owner, Master)',
      tags: ['versions'],
      access: { kind: 'user', scope: 'write' },
      params: appParams,
      body: createVersionBody,
      responses: { 201: versionResponse },
      errors: [403, 409],
      etag: true,
      handler: async ({ params, body, principal: p, idempotency }) =>
        mutations.answer(
          p,
          async () => {
            const { app } = await loadApp(ctx, p, params.app, 'deploy');
            const { version, ops, events } = await nextVersionChange(ctx, quotas, app, body, p.user);
            return {
              ops,
              events,
              result: (revision) => ({
                status: 201,
                body: version,
                headers: {
                  ETag: etag(revision),
                  Location: `/api/v1/apps/${params.app}/versions/${version.name}`,
                },
              }),
            };
          },
          { serializeOn: `app:${params.app}`, idempotency },
        ),
    }),

    defineRoute({
      method: 'get',
      path: '/apps/:app/versions/:version',
      operationId: 'getVersion',
      summary: 'One version (env values: Developer and up; others see null)',
      tags: ['versions'],
      access: { kind: 'user', scope: 'read' },
      params: versionParams,
      responses: { 200: versionReadResponse },
      etag: true,
      handler: async ({ params, principal }) => {
        const { role } = await loadApp(ctx, principal, params.app, 'read');
        const v = await store.get(keys.version(params.app, params.version), versionSchema);
        if (!v) throw new NotFoundError(`app "${params.app}" has no version ${params.version}`);
        return { status: 200, body: versionView(v.value, role), headers: { ETag: etag(v.modRevision) } };
      },
    }),

    defineRoute({
      method: 'delete',
      path: '/apps/:app/versions/:version',
      operationId: 'deleteVersion',
      summary: 'Delete a version that runs no replicas (Owner, Master)',
      tags: ['versions'],
      access: { kind: 'user', scope: 'write' },
      params: versionParams,
      responses: { 204: undefined },
      errors: [403, 409, 412],
      etag: true,
      handler: async ({ req, params, principal: p }) =>
        mutations.commit(
          p,
          async () => {
            const { app } = await loadApp(ctx, p, params.app, 'deploy');
            const v = await store.get(keys.version(params.app, params.version), versionSchema);
            if (!v) throw new NotFoundError(`app "${params.app}" has no version ${params.version}`);
            if (v.value.replicas > 0) {
              throw new ConflictError(`${params.version} runs ${v.value.replicas} replicas: scale it to 0 first`);
            }
            // Traffic may name the version only with weight 0, which goes with it; a share above 0
            // is the user's to move first.
            const state = await lb.read(params.app);
            const weights = state.traffic?.value.weights;
            const ops: Op[] = [{ op: 'delete', key: v.key, modRevision: v.modRevision }];
            const events: ChangeEvent[] = [];
            if (state.traffic && weights && params.version in weights) {
              if ((weights[params.version] ?? 0) > 0) {
                throw new ConflictError(
                  `${params.version} has a traffic weight of ${weights[params.version]}: change the app's traffic first`,
                );
              }
              const { [params.version]: _gone, ...rest } = weights;
              const next = { ...state.traffic.value, weights: rest, updatedAt: now(), updatedBy: p.user };
              const change = trafficChange(ctx, lb, state, next, app.value.incarnation, {
                reason: `version ${params.version} deleted`,
              });
              ops.push(...change.ops);
              events.push(change.event);
            } else {
              ops.push(lb.guardExpect(state));
            }
            return {
              ops,
              pinned: v,
              events: [
                {
                  kind: 'version',
                  resourceId: params.app,
                  incarnation: app.value.incarnation,
                  resourceName: params.version,
                  action: 'deleted',
                  before: versionInEvent(v.value),
                },
                ...events,
              ],
              result: () => ({ status: 204 }),
            };
          },
          { req, serializeOn: `app:${params.app}` },
        ),
    }),

    defineRoute({
      method: 'post',
      path: '/apps/:app/versions/:version/scale',
      operationId: 'scaleVersion',
      summary: "Set a version's replicas (Owner, Master)",
      tags: ['versions'],
      access: { kind: 'user', scope: 'write' },
      params: versionParams,
      body: scaleBody,
      responses: { 200: versionResponse },
      errors: [403, 409, 412],
      etag: true,
      handler: async ({ req, params, body, principal: p, idempotency }) =>
        mutations.answer(
          p,
          async () => {
            const { app } = await loadApp(ctx, p, params.app, 'deploy');
            const v = await store.get(keys.version(params.app, params.version), versionSchema);
            if (!v) throw new NotFoundError(`app "${params.app}" has no version ${params.version}`);
            const next: Version = { ...v.value, replicas: body.replicas, updatedAt: now() };
            const before = versionUsage(v.value);
            const after = versionUsage(next);
            const guard = await quotas.check(app.value.owner, {
              cpuMillis: after.cpuMillis - before.cpuMillis,
              memoryBytes: after.memoryBytes - before.memoryBytes,
            });
            return {
              ops: [{ op: 'update', key: v.key, value: next, modRevision: v.modRevision }, guard],
              pinned: v,
              events: [
                {
                  kind: 'version',
                  resourceId: params.app,
                  incarnation: app.value.incarnation,
                  resourceName: params.version,
                  action: 'scaled',
                  before: { replicas: v.value.replicas },
                  after: { replicas: next.replicas },
                },
              ],
              result: (revision) => ({ status: 200, body: next, headers: { ETag: etag(revision) } }),
            };
          },
          { req, serializeOn: `app:${params.app}`, idempotency },
        ),
    }),

    defineRoute({
      method: 'post',
      path: '/apps/:app/rollback',
      operationId: 'rollbackApp',
      summary:
        'Bring an older version back with the replicas the current one has, and the current one to 0 (Owner, Master). The scheduler keeps the current version running until the target is available.',
      tags: ['versions'],
      access: { kind: 'user', scope: 'write' },
      params: appParams,
      body: rollbackBody,
      responses: { 200: rollbackResponse },
      errors: [403, 409],
      handler: async ({ params, body, principal: p, idempotency }) =>
        mutations.answer(
          p,
          async () => {
            const { app } = await loadApp(ctx, p, params.app, 'deploy');
            const stored = await store.list(keys.versions(params.app), versionSchema);
            const target = stored.find((s) => s.value.name === body.version);
            if (!target) {
              throw new InputError(`app "${params.app}" has no version ${body.version}`, [
                { path: '$.version', message: 'no such version' },
              ]);
            }
            // The current version: the newest one running replicas, other than the target.
            const current = stored
              .filter((s) => s.value.replicas > 0 && s.value.name !== body.version)
              .sort((a, b) => b.value.number - a.value.number)[0];
            if (!current)
              throw new ConflictError(`no other version of "${params.app}" runs replicas: nothing to roll back from`);
            const at = now();
            const nextTarget: Version = { ...target.value, replicas: current.value.replicas, updatedAt: at };
            const nextCurrent: Version = { ...current.value, replicas: 0, updatedAt: at };
            const delta = {
              cpuMillis:
                versionUsage(nextTarget).cpuMillis -
                versionUsage(target.value).cpuMillis -
                versionUsage(current.value).cpuMillis,
              memoryBytes:
                versionUsage(nextTarget).memoryBytes -
                versionUsage(target.value).memoryBytes -
                versionUsage(current.value).memoryBytes,
            };
            const guard = await quotas.check(app.value.owner, delta);
            // Traffic follows a rollback: when weights are set, the target gets all of it.
            const state = await lb.read(params.app);
            const traffic = state.traffic?.value;
            const moved = traffic?.weights
              ? trafficChange(
                  ctx,
                  lb,
                  state,
                  { ...traffic, weights: { [nextTarget.name]: 100 }, updatedAt: at, updatedBy: p.user },
                  app.value.incarnation,
                  { reason: 'rollback', from: nextCurrent.name, to: nextTarget.name },
                )
              : undefined;
            return {
              ops: [
                { op: 'update', key: target.key, value: nextTarget, modRevision: target.modRevision },
                { op: 'update', key: current.key, value: nextCurrent, modRevision: current.modRevision },
                guard,
                ...(moved ? moved.ops : [lb.guardExpect(state)]),
              ],
              events: [
                {
                  kind: 'version',
                  resourceId: params.app,
                  incarnation: app.value.incarnation,
                  resourceName: nextTarget.name,
                  action: 'rolled-back',
                  data: { from: nextCurrent.name, to: nextTarget.name, replicas: nextTarget.replicas },
                },
                ...(moved ? [moved.event] : []),
              ],
              result: () => ({ status: 200, body: { target: nextTarget, previous: nextCurrent } }),
            };
          },
          { serializeOn: `app:${params.app}`, idempotency },
        ),
    }),
  ];
}
