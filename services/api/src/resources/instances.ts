/**
 * An app's running instances (its pods in every cell), their logs, exec into one, and their
 * metrics (docs/instances.md). Reporter and up read; Developer and up exec.
 */
import { ForbiddenError } from '@berth/shared/errors';
import { dnsLabelSchema, versionNameSchema } from '@berth/shared/model';
import { z } from 'zod';
import type { CellPods } from '../cells/pods.ts';
import { defineRoute } from '../http/routes.ts';
import { roleAllows } from '../rbac/index.ts';
import { loadApp } from './app-access.ts';
import type { ApiContext } from './context.ts';
import { appParams } from './schemas.ts';

export const instanceSchema = z.object({
  cell: z.string(),
  version: z.string(),
  /** The pod's name. */
  instance: z.string(),
  node: z.string().nullable(),
  ip: z.string().nullable(),
  /** The pod's phase: Pending, Running, Succeeded, Failed, Unknown. */
  phase: z.string(),
  ready: z.boolean(),
  restarts: z.number().int(),
  startedAt: z.string().nullable(),
  /** Why the container last stopped, when it has restarted. */
  lastTermination: z
    .object({ reason: z.string().nullable(), exitCode: z.number().int().nullable(), finishedAt: z.string().nullable() })
    .nullable(),
});
export const instancesResponse = z.object({
  items: z.array(instanceSchema),
  /** Cells of the app that did not answer: their instances are missing from `items`. */
  unreachable: z.array(z.string()),
});
export const instancesQuery = z
  .object({ version: versionNameSchema.optional(), cell: dnsLabelSchema.optional() })
  .strict();

/** Loads the app for a Reporter or more (members below get 403, others 404). */
export async function loadForReporter(ctx: ApiContext, principal: Parameters<typeof loadApp>[1], app: string) {
  const access = await loadApp(ctx, principal, app, 'read');
  if (!principal.admin && !roleAllows(access.role, 'readLogs')) {
    throw new ForbiddenError(`Reporter or higher is needed to see the instances of app "${app}"`, {
      extensions: { requiredRole: 'Reporter', role: access.role },
    });
  }
  return access;
}

export function instanceRoutes(ctx: ApiContext, pods: CellPods) {
  return [
    defineRoute({
      method: 'get',
      path: '/apps/:app/instances',
      operationId: 'listInstances',
      summary:
        'Every pod of every version in every cell the app is placed in (Reporter and up); cells that do not answer are listed in `unreachable`',
      tags: ['instances'],
      access: { kind: 'user', scope: 'read' },
      params: appParams,
      query: instancesQuery,
      responses: { 200: instancesResponse },
      handler: async ({ params, query, principal }) => {
        await loadForReporter(ctx, principal, params.app);
        return { status: 200, body: await pods.instances(params.app, query) };
      },
    }),
  ];
}
