/**
 * An app's traffic split over its versions, region-wide: weights per version and stickiness.
 * Kept at `/berth/apps/{app}/traffic` and copied, in the same transaction, to
 * `/slb/{group}/traffic/{app}` for every LB group the app has a domain in. Without a record
 * (or with `weights: null`) each version gets requests by its ready replicas.
 */
import { InputError, jsonPath, PreconditionFailedError } from '@berth/shared/errors';
import { DEFAULT_TRAFFIC_MODE, type Traffic, versionSchema } from '@berth/shared/model';
import type { Op, Stored } from '@berth/shared/store';
import { etag, ifMatchRevision } from '../http/conditional.ts';
import type { ChangeEvent } from '../http/mutation.ts';
import { defineRoute } from '../http/routes.ts';
import { loadApp } from './app-access.ts';
import { AppLb, type AppLbState } from './app-lb.ts';
import { type ApiContext, now } from './context.ts';
import { appParams, putTrafficBody, trafficResponse } from './schemas.ts';

export function trafficView(app: string, traffic: Traffic | undefined) {
  return {
    app,
    weights: traffic?.weights ?? null,
    stickiness: traffic?.stickiness ?? null,
    mode: traffic?.weights ? ('weights' as const) : DEFAULT_TRAFFIC_MODE,
    updatedAt: traffic?.updatedAt ?? null,
    updatedBy: traffic?.updatedBy ?? null,
  };
}

/**
 * The ops and event of a new traffic record for an app: the record, its copies in every group
 * the app has a domain in, the guard. `incarnation` is the app's.
 */
export function trafficChange(
  ctx: ApiContext,
  lb: AppLb,
  state: AppLbState,
  next: Traffic,
  incarnation: string | undefined,
  data?: Record<string, unknown>,
): { ops: Op[]; event: ChangeEvent } {
  const { keys } = ctx;
  const current: Stored<Traffic> | undefined = state.traffic;
  const groups = AppLb.groups(state.claims.map((c) => c.value));
  const ops: Op[] = [
    current
      ? { op: 'update', key: current.key, value: next, modRevision: current.modRevision }
      : { op: 'create', key: keys.traffic(state.app), value: next },
    lb.guardOp(state),
    ...lb.trafficCopyOps(state.app, next, groups, groups, true),
  ];
  const event: ChangeEvent = {
    kind: 'traffic',
    resourceId: state.app,
    incarnation,
    action: 'updated',
    ...(current ? { before: current.value } : {}),
    after: next,
    ...(data ? { data } : {}),
  };
  return { ops, event };
}

export function trafficRoutes(ctx: ApiContext) {
  const { store, keys, mutations } = ctx;
  const lb = new AppLb(ctx);

  return [
    defineRoute({
      method: 'get',
      path: '/apps/:app/traffic',
      operationId: 'getTraffic',
      summary: `The app's traffic split: weights per version and stickiness (mode ${DEFAULT_TRAFFIC_MODE} when no weights are set)`,
      tags: ['traffic'],
      access: { kind: 'user', scope: 'read' },
      params: appParams,
      responses: { 200: trafficResponse },
      etag: true,
      handler: async ({ params, principal }) => {
        await loadApp(ctx, principal, params.app, 'read');
        const traffic = await lb.read(params.app).then((s) => s.traffic);
        // No record reads as ETag "0": If-Match "0" on a PUT then means "still none".
        return {
          status: 200,
          body: trafficView(params.app, traffic?.value),
          headers: { ETag: etag(traffic?.modRevision ?? 0) },
        };
      },
    }),

    defineRoute({
      method: 'put',
      path: '/apps/:app/traffic',
      operationId: 'putTraffic',
      summary:
        "Set the app's traffic split (Owner, Master): weights name existing versions, non-negative integers with a sum above 0; weights null goes back to by-ready-replicas",
      tags: ['traffic'],
      access: { kind: 'user', scope: 'write' },
      params: appParams,
      body: putTrafficBody,
      responses: { 200: trafficResponse },
      errors: [403, 412],
      etag: true,
      handler: async ({ req, params, body, principal: p }) =>
        mutations.commit(
          p,
          async () => {
            const { app } = await loadApp(ctx, p, params.app, 'deploy');
            const state = await lb.read(params.app);
            const wanted = ifMatchRevision(req);
            if (!state.traffic && wanted !== undefined && wanted !== 0) {
              throw new PreconditionFailedError(`app "${params.app}" has no traffic split yet`, {
                extensions: { currentETag: etag(0) },
              });
            }
            if (body.weights) {
              const versions = new Set(
                (await store.list(keys.versions(params.app), versionSchema)).map((v) => v.value.name),
              );
              const unknown = Object.keys(body.weights).filter((v) => !versions.has(v));
              if (unknown.length > 0) {
                throw new InputError(
                  `app "${params.app}" has no version ${unknown.join(', ')}`,
                  unknown.map((v) => ({ path: jsonPath(['weights', v]), message: 'no such version' })),
                );
              }
              if (Object.values(body.weights).reduce((a, b) => a + b, 0) <= 0) {
                throw new InputError('weights must add up to more than 0', [
                  { path: '$.weights', message: 'the sum of the weights must be more than 0' },
                ]);
              }
            }
            const next: Traffic = {
              app: params.app,
              weights: body.weights,
              stickiness: body.stickiness ?? null,
              updatedAt: now(),
              updatedBy: p.user,
            };
            const { ops, event } = trafficChange(ctx, lb, state, next, app.value.incarnation);
            return {
              ops: [{ op: 'expect', key: app.key, modRevision: app.modRevision }, ...ops],
              pinned: { key: keys.traffic(params.app), modRevision: state.traffic?.modRevision ?? 0 },
              events: [event],
              result: (revision) => ({
                status: 200,
                body: trafficView(params.app, next),
                headers: { ETag: etag(revision) },
              }),
            };
          },
          { req, serializeOn: `app:${params.app}` },
        ),
    }),
  ];
}
