/**
 * An app's running instances (its pods in every cell), their logs, exec into one, and their
 * metrics (docs/instances.md). Reporter and up read; Developer and up exec.
 */
import { ForbiddenError } from '@berth/shared/errors';
import { withoutDeadline } from '@berth/shared/http';
import { dnsLabelSchema, versionNameSchema } from '@berth/shared/model';
import { z } from 'zod';
import type { CellLogs, LogLine } from '../cells/logs.ts';
import { type CellMetrics, versionCellMetricsSchema } from '../cells/metrics.ts';
import { type CellPods, instanceSchema } from '../cells/pods.ts';
import { defineRoute } from '../http/routes.ts';
import { type LbRequestCounts, versionRequestsSchema } from '../lb/requests.ts';
import { roleAllows } from '../rbac/index.ts';
import { loadApp } from './app-access.ts';
import type { ApiContext } from './context.ts';
import { appParams } from './schemas.ts';

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

export const logsQuery = z
  .object({
    version: versionNameSchema.optional(),
    cell: dnsLabelSchema.optional(),
    instance: z.string().min(1).max(253).optional().describe('A pod name from GET /apps/{app}/instances'),
    since: z
      .string()
      .regex(/^\d{1,7}[smh]$/, 'expected a duration like 30s, 10m or 2h')
      .optional()
      .describe('Only lines newer than this (30s, 10m, 2h)'),
    tail: z.coerce.number().int().min(0).max(100_000).optional().describe('At most this many lines per instance'),
    follow: z.enum(['true', 'false']).default('false').describe('true: keep the stream open, new instances too'),
    format: z
      .enum(['text', 'ndjson'])
      .optional()
      .describe('ndjson: one JSON object per line (also with Accept: application/x-ndjson); default text'),
  })
  .strict();

const NDJSON = 'application/x-ndjson';

function seconds(duration: string | undefined): number | undefined {
  if (!duration) return undefined;
  const n = Number(duration.slice(0, -1));
  return n * { s: 1, m: 60, h: 3600 }[duration.slice(-1) as 's' | 'm' | 'h'];
}

export const execParams = z
  .object({
    app: dnsLabelSchema,
    instance: z.string().regex(/^[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?$/, 'expected a pod name'),
  })
  .strict();
/**
 * The exec route's query as the document shows it. `command` (repeated, at most 16 arguments of
 * at most 256 printable ASCII characters) and `access_token` are read by the upgrade handler
 * (../cells/exec.ts) and left out here: a fuzzer's long arrays of them would only meet Node's
 * 16 KiB header limit (431) before any code of the API.
 */
export const execQuery = z
  .object({
    tty: z.enum(['true', 'false']).optional().describe('true: a terminal (stdin on, stderr merged into stdout)'),
    stdin: z.enum(['true', 'false']).optional().describe('true: binary frames from the client are stdin'),
  })
  .loose();

export const metricsQuery = z
  .object({
    version: versionNameSchema.optional(),
    window: z
      .string()
      .regex(/^\d{1,5}[smh]$/, 'expected a duration like 30s, 10m or 2h')
      .default('15m')
      .describe('How far back `restartedWithinWindow` and `requests` look (default 15m); usage is the last sample'),
  })
  .strict();
export const metricsResponse = z.object({
  window: z.string(),
  items: z.array(versionCellMetricsSchema),
  /** Cells that did not answer: their rows are missing. */
  unreachable: z.array(z.string()),
  /**
   * Requests per version within the window, counted by the lb-agents of the LB groups the app has
   * domains in; versions that got none are left out; null when no agent answered.
   */
  requests: z.array(versionRequestsSchema).nullable(),
  /** The lb-agents asked for `requests`: how many answered, and how many did not. */
  agents: z.object({ answered: z.number().int(), missing: z.number().int() }),
});

export function instanceRoutes(
  ctx: ApiContext,
  pods: CellPods,
  logs: CellLogs,
  metrics: CellMetrics,
  requests: LbRequestCounts,
) {
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

    defineRoute({
      method: 'get',
      path: '/apps/:app/logs',
      operationId: 'appLogs',
      summary:
        "The app's container logs merged across its cells (Reporter and up): text lines `cell/instance line`, or NDJSON `{cell, instance, version, ts, line}`; follow=true keeps the stream open and picks up instances as they start",
      tags: ['instances'],
      access: { kind: 'user', scope: 'read' },
      params: appParams,
      query: logsQuery,
      responses: { 200: z.string() },
      contentType: 'text/plain',
      errors: [429],
      handler: async ({ req, res, params, query, principal }) => {
        await loadForReporter(ctx, principal, params.app);
        const follow = query.follow === 'true';
        // A follow holds one of the user's MAX_FOLLOWS_PER_USER slots until its answer closes
        // (it ended, the client went away, or the API stopped and closed the connection).
        const release = follow ? ctx.streams?.acquire('follow', principal.user) : undefined;
        if (release) res.once('close', release);
        const ndjson = query.format ? query.format === 'ndjson' : (req.get('accept') ?? '').includes(NDJSON);
        const render = ndjson
          ? (l: LogLine) => `${JSON.stringify(l)}\n`
          : (l: LogLine) => `${l.cell}/${l.instance} ${l.line}\n`;
        const abort = new AbortController();
        res.on('close', () => abort.abort());
        withoutDeadline(res);
        res.status(200).type(ndjson ? NDJSON : 'text/plain; charset=utf-8');
        res.setHeader('Cache-Control', 'no-store');
        res.setHeader('X-Accel-Buffering', 'no');
        if (follow) res.flushHeaders();
        // Followed: each line as it comes. Otherwise: every instance's lines, merged by time.
        const held: LogLine[] = [];
        await logs.stream(
          {
            app: params.app,
            version: query.version,
            cell: query.cell,
            instance: query.instance,
            sinceSeconds: seconds(query.since),
            tail: query.tail,
            follow,
            signal: abort.signal,
          },
          {
            line: (l) => {
              if (follow) res.write(render(l));
              else held.push(l);
            },
            unreachable: (cell, error) => {
              const note = ndjson
                ? `${JSON.stringify({ cell, unreachable: true, error })}\n`
                : `${cell} unreachable: ${error}\n`;
              res.write(note);
            },
          },
        );
        if (!follow) {
          held.sort((a, b) => (a.ts ?? '').localeCompare(b.ts ?? ''));
          res.write(held.map(render).join(''));
        }
        res.end();
        return { status: 200 };
      },
    }),

    defineRoute({
      method: 'get',
      path: '/apps/:app/metrics',
      operationId: 'appMetrics',
      summary:
        "CPU, memory and restarts of the app per version and cell, from the cells' kubelets, and its requests per version and status class within the window, from the lb-agents (Reporter and up; docs/instances.md)",
      tags: ['instances'],
      access: { kind: 'user', scope: 'read' },
      params: appParams,
      query: metricsQuery,
      responses: { 200: metricsResponse },
      handler: async ({ params, query, principal }) => {
        await loadForReporter(ctx, principal, params.app);
        const windowMs = (seconds(query.window) ?? 900) * 1000;
        const [cells, lb] = await Promise.all([
          metrics.collect(params.app, { version: query.version, windowMs }),
          requests.collect(params.app, { version: query.version, window: query.window }),
        ]);
        return { status: 200, body: { window: query.window, ...cells, ...lb } };
      },
    }),

    defineRoute({
      method: 'get',
      path: '/apps/:app/instances/:instance/exec',
      operationId: 'execInstance',
      summary:
        'A command or a shell in an instance (Developer and up), over a WebSocket only (docs/instances.md): `command` once per argument (default `sh`), `tty`, `stdin`, and `access_token` for browsers; binary frames are stdin and output (first byte 1 stdout, 2 stderr), text frames JSON `{"type":"resize","cols","rows"}` and `{"type":"stdin-eof"}` (stdin ended) from the client and `{"type":"exit","code"}` at the end. A plain GET answers 426',
      tags: ['instances'],
      access: { kind: 'user', scope: 'write' },
      params: execParams,
      query: execQuery,
      responses: { 101: undefined },
      errors: [426],
      handler: async ({ res, params }) => {
        // Upgrades never reach express (../cells/exec.ts takes them from the HTTP server).
        res.setHeader('Upgrade', 'websocket');
        res.setHeader('Connection', 'Upgrade');
        res
          .status(426)
          .type('application/problem+json')
          .json({
            type: 'https://berth.dev/problems/upgrade-required',
            title: 'Upgrade Required',
            status: 426,
            detail: `exec into ${params.instance} is a WebSocket: connect with Upgrade: websocket`,
          });
        return { status: 426 };
      },
    }),
  ];
}
