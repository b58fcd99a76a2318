/**
 * Build runs: start one by hand, list a config's runs, read one (state, steps with times, cache,
 * the agent and why it was chosen, the image), cancel, retry, and follow its log. Members read
 * runs; Developer and up start, cancel and retry them; Reporter and up read logs.
 */
import { buildRunSchema, clearCacheReplySchema } from '@berth/shared/builds';
import { NotFoundError } from '@berth/shared/errors';
import { z } from 'zod';
import type { Principal } from '../auth/principal.ts';
import type { BuildLogs } from '../builds/logs.ts';
import { type BuildRuns, isFinal } from '../builds/runs.ts';
import { defineRoute } from '../http/routes.ts';
import { type Action, authorize } from '../rbac/index.ts';
import { loadApp } from './app-access.ts';
import { buildConfigParams, loadBuildConfig } from './build-configs.ts';
import type { ApiContext } from './context.ts';
import { listOf } from './schemas.ts';

export const runParams = z.object({ run: z.string().regex(/^[a-z0-9]{16,32}$/, 'expected a build id') }).strict();
export const startRunBody = z
  .object({
    ref: z
      .string()
      .min(1)
      .max(255)
      .regex(/^[^\s~^:?*[\\]+$/, 'expected a branch, a tag or a commit')
      .optional()
      .describe("A branch, a tag or a commit; default the config's branch"),
    tag: z
      .string()
      .regex(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/, 'expected a Docker tag: letters, digits, "_", "." and "-"')
      .optional()
      .describe("The image's tag, instead of the config's `tag` template (a release build by hand)"),
  })
  .strict();
export const clearCacheResponse = z.object({
  /** Each live agent that answered: what it freed, and whether a running build holds the cache till it ends. */
  agents: z.array(clearCacheReplySchema),
  /** Live agents that did not answer in time (they keep the cache until asked again). */
  missing: z.array(z.string()),
});

export const runListQuery = z
  .object({
    limit: z.coerce.number().int().min(1).max(500).default(50),
    cursor: z
      .string()
      .regex(/^[a-z0-9]{16,32}$/)
      .optional()
      .describe('The last build id of the previous page'),
  })
  .strict();
export const logsQuery = z
  .object({
    follow: z
      .enum(['true', 'false'])
      .optional()
      .describe('false: the lines so far as text/plain; default true: Server-Sent Events'),
  })
  .strict();
export const cancelResponse = z.object({
  build: buildRunSchema,
  /** True when the run was active: its agent was asked to cancel it and will mark it cancelled. */
  requested: z.boolean(),
});

export function buildRoutes(ctx: ApiContext, runs: BuildRuns, logs: BuildLogs) {
  /** The run, if the caller may `action` on its app (others get 404). */
  async function loadRun(principal: Principal, runId: string, action: Action) {
    const run = await runs.get(runId);
    if (!run) throw new NotFoundError(`no build ${runId}`);
    try {
      const { role } = await loadApp(ctx, principal, run.value.app, 'read');
      authorize(principal, { kind: 'app', name: run.value.app, private: true }, role, action);
    } catch (err) {
      if (err instanceof NotFoundError) throw new NotFoundError(`no build ${runId}`);
      throw err;
    }
    return run;
  }

  return [
    defineRoute({
      method: 'post',
      path: '/apps/:app/build-configs/:config/clear-cache',
      operationId: 'clearBuildCache',
      summary:
        "Drop the config's build cache on every build machine (Developer and up); the next run is cold. Answers what each live agent freed",
      tags: ['builds'],
      access: { kind: 'user', scope: 'write' },
      params: buildConfigParams,
      responses: { 200: clearCacheResponse },
      idempotent: false,
      handler: async ({ params, principal: p }) => {
        const { app } = await loadApp(ctx, p, params.app, 'build');
        const config = await loadBuildConfig(ctx, params.app, params.config);
        const outcome = await runs.clearCache(p, app.value, config.value);
        return { status: 200, body: outcome };
      },
    }),

    defineRoute({
      method: 'post',
      path: '/apps/:app/build-configs/:config/runs',
      operationId: 'startBuild',
      summary: "Build now (Developer and up): the config's branch, or `ref`",
      tags: ['builds'],
      access: { kind: 'user', scope: 'write' },
      params: buildConfigParams,
      body: startRunBody,
      responses: { 201: buildRunSchema },
      idempotent: false,
      handler: async ({ params, body, principal: p }) => {
        await loadApp(ctx, p, params.app, 'build');
        const config = await loadBuildConfig(ctx, params.app, params.config);
        const run = await runs.start(p, params.app, params.config, {
          ref: body.ref ?? config.value.git.branch,
          trigger: { type: 'manual', by: p.user },
          ...(body.tag
            ? { image: () => ({ repository: config.value.target, tag: body.tag as string, digest: null }) }
            : {}),
        });
        return { status: 201, body: run, headers: { Location: `/api/v1/builds/${run.id}` } };
      },
    }),

    defineRoute({
      method: 'get',
      path: '/apps/:app/build-configs/:config/runs',
      operationId: 'listBuilds',
      summary: "A config's runs, newest first (members)",
      tags: ['builds'],
      access: { kind: 'user', scope: 'read' },
      params: buildConfigParams,
      query: runListQuery,
      responses: { 200: listOf(buildRunSchema) },
      handler: async ({ params, query, principal }) => {
        await loadApp(ctx, principal, params.app, 'read');
        const config = await loadBuildConfig(ctx, params.app, params.config);
        const all = (await runs.listOf(config.value.id)).reverse();
        const rest = query.cursor ? all.filter((r) => r.id < (query.cursor as string)) : all;
        const items = rest.slice(0, query.limit);
        const last = items[items.length - 1];
        return { status: 200, body: { items, next: rest.length > query.limit && last ? last.id : null } };
      },
    }),

    defineRoute({
      method: 'get',
      path: '/builds/:run',
      operationId: 'getBuild',
      summary: 'One run: state, steps with times, cache, the agent and why it was chosen, the image (members)',
      tags: ['builds'],
      access: { kind: 'user', scope: 'read' },
      params: runParams,
      responses: { 200: buildRunSchema },
      handler: async ({ params, principal }) => {
        const run = await loadRun(principal, params.run, 'read');
        return { status: 200, body: run.value };
      },
    }),

    defineRoute({
      method: 'post',
      path: '/builds/:run/cancel',
      operationId: 'cancelBuild',
      summary:
        'Cancel a run (Developer and up): a waiting one is cancelled now (200); a running one is cancelled by its agent (202)',
      tags: ['builds'],
      access: { kind: 'user', scope: 'write' },
      params: runParams,
      responses: { 200: cancelResponse, 202: cancelResponse },
      errors: [409],
      idempotent: false,
      handler: async ({ params, principal: p }) => {
        await loadRun(p, params.run, 'build');
        const outcome = await runs.cancel(p, params.run);
        return { status: outcome.requested ? 202 : 200, body: { build: outcome.run, requested: outcome.requested } };
      },
    }),

    defineRoute({
      method: 'post',
      path: '/builds/:run/retry',
      operationId: 'retryBuild',
      summary: 'Run a failed or cancelled build again as its next attempt (Developer and up)',
      tags: ['builds'],
      access: { kind: 'user', scope: 'write' },
      params: runParams,
      responses: { 200: buildRunSchema },
      errors: [409],
      idempotent: false,
      handler: async ({ params, principal: p }) => {
        await loadRun(p, params.run, 'build');
        return { status: 200, body: await runs.retry(p, params.run) };
      },
    }),

    defineRoute({
      method: 'get',
      path: '/builds/:run/logs',
      operationId: 'buildLogs',
      summary:
        "A run's log (Reporter and up): Server-Sent Events (`log` events with the stream sequence as id, resumable with Last-Event-ID, `: ping` heartbeats, an `end` event with the final state), or with follow=false the lines so far as text/plain",
      tags: ['builds'],
      access: { kind: 'user', scope: 'read' },
      params: runParams,
      query: logsQuery,
      responses: { 200: z.string() },
      contentType: 'text/event-stream',
      errors: [429],
      handler: async ({ req, res, params, query, principal }) => {
        await loadRun(principal, params.run, 'readLogs');
        if (query.follow === 'false') {
          res
            .status(200)
            .type('text/plain')
            .send(await logs.text(params.run));
          return { status: 200 };
        }
        // Followed: one of the user's MAX_FOLLOWS_PER_USER slots until the answer closes.
        const release = ctx.streams?.acquire('follow', principal.user);
        if (release) res.once('close', release);
        await logs.sse(
          req,
          res,
          params.run,
          async () => (await runs.get(params.run))?.value,
          (run) => isFinal(run),
        );
        return { status: 200 };
      },
    }),
  ];
}
