/**
 * Container logs of an app merged across its cells (docs/instances.md): one pods/log request per
 * instance, each line tagged with its cell, instance and version. Followed, the pod lists are
 * polled and instances that start later are picked up; a container that restarts is read again
 * from where its last line was.
 */
import type { IncomingMessage } from 'node:http';
import { type RequestOptions, request } from 'node:https';
import type { Logger } from '@berth/shared/logging';
import { LABELS } from '@berth/shared/model';
import type { V1Pod } from '@kubernetes/client-node';
import { APP_CONTAINER, type CellPods } from './pods.ts';

export type LogLine = { cell: string; instance: string; version: string; ts?: string; line: string };

export type LogRequest = {
  app: string;
  version?: string | undefined;
  cell?: string | undefined;
  instance?: string | undefined;
  /** Only lines newer than this. */
  sinceSeconds?: number | undefined;
  /** At most this many lines per instance from before the request. */
  tail?: number | undefined;
  follow: boolean;
  /** Ends every stream when aborted (the client went away). */
  signal: AbortSignal;
};

export type LogSink = {
  line(line: LogLine): void;
  /** A cell that did not answer (its instances' lines are missing until it does). */
  unreachable(cell: string, error: string): void;
};

export type CellLogsOptions = { pods: CellPods; logger: Logger; pollIntervalMs?: number };

/** One GET to a cell's API server as the API's identity, answered as a stream. */
export async function cellGet(
  pods: CellPods,
  cell: string,
  path: string,
  signal?: AbortSignal,
): Promise<IncomingMessage> {
  const kc = pods.client(cell).kubeConfig;
  const server = kc.getCurrentCluster()?.server;
  if (!server) throw new Error(`cell ${cell}: its kubeconfig names no server`);
  const opts: RequestOptions = { method: 'GET', headers: {} };
  await kc.applyToHTTPSOptions(opts);
  const url = new URL(path, server);
  return new Promise((resolve, reject) => {
    const req = request(url, { ...opts, ...(signal ? { signal } : {}) }, (res) => {
      if ((res.statusCode ?? 0) >= 300) {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          if (body.length < 2000) body += c;
        });
        res.on('end', () => reject(new Error(`cell ${cell}: ${res.statusCode} ${body.slice(0, 300)}`)));
        res.on('error', reject);
        return;
      }
      resolve(res);
    });
    req.on('error', reject);
    req.end();
  });
}

export class CellLogs {
  readonly #o: CellLogsOptions;

  constructor(options: CellLogsOptions) {
    this.#o = options;
  }

  /** Streams the lines to `sink`; resolves when every stream ended (never while following, until aborted). */
  async stream(r: LogRequest, sink: LogSink): Promise<void> {
    const { pods } = this.#o;
    const started = new Date();
    /** Per instance: whether a stream is open, and its last line's time (to resume after a restart). */
    const open = new Map<string, { cell: string; active: boolean; lastTs?: string }>();
    const done: Promise<void>[] = [];
    const reported = new Set<string>();
    let first = true;

    const pass = async () => {
      const cells = (await pods.cellsOf(r.app)).filter((c) => !r.cell || c === r.cell);
      const answers = await pods.eachCell(cells, (cell) => pods.podsIn(cell, r.app, r.version));
      for (const a of answers) {
        if (!a.ok) {
          if (!reported.has(a.cell)) sink.unreachable(a.cell, a.error);
          reported.add(a.cell);
          continue;
        }
        reported.delete(a.cell);
        for (const pod of a.value) {
          const name = pod.metadata?.name ?? '';
          if (r.instance && name !== r.instance) continue;
          if (!hasStarted(pod)) continue;
          const key = `${a.cell}/${name}`;
          const seen = open.get(key);
          if (seen?.active) continue;
          if (seen && !r.follow) continue;
          // Backlog only on the first pass; an instance found later is read from its start, one
          // seen before from its last line on.
          const since = seen?.lastTs
            ? { sinceTime: seen.lastTs }
            : first
              ? {
                  ...(r.tail !== undefined ? { tailLines: r.tail } : {}),
                  ...(r.sinceSeconds ? { sinceSeconds: r.sinceSeconds } : {}),
                }
              : { sinceTime: startedBefore(pod, started) };
          const state = seen ?? { cell: a.cell, active: true };
          state.active = true;
          open.set(key, state);
          done.push(
            this.#one(a.cell, pod, since, r, (line) => {
              if (line.ts && seen?.lastTs && line.ts <= seen.lastTs) return;
              state.lastTs = line.ts ?? state.lastTs;
              sink.line(line);
            }).finally(() => {
              state.active = false;
            }),
          );
        }
      }
      first = false;
    };

    await pass();
    if (!r.follow) {
      await Promise.all(done);
      return;
    }
    const interval = this.#o.pollIntervalMs ?? 2000;
    while (!r.signal.aborted) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, interval);
        r.signal.addEventListener(
          'abort',
          () => {
            clearTimeout(t);
            resolve();
          },
          { once: true },
        );
      });
      if (r.signal.aborted) break;
      await pass().catch((err) => this.#o.logger.warn({ err, app: r.app }, 'log follow: listing pods failed'));
    }
    await Promise.allSettled(done);
  }

  /** One instance's log, line by line, until it ends or the request is aborted. */
  async #one(
    cell: string,
    pod: V1Pod,
    since: { tailLines?: number; sinceSeconds?: number; sinceTime?: string },
    r: LogRequest,
    emit: (line: LogLine) => void,
  ): Promise<void> {
    const name = pod.metadata?.name ?? '';
    const version = pod.metadata?.labels?.[LABELS.version] ?? '';
    const q = new URLSearchParams({ container: APP_CONTAINER, timestamps: 'true' });
    if (r.follow) q.set('follow', 'true');
    if (since.tailLines !== undefined) q.set('tailLines', String(since.tailLines));
    if (since.sinceSeconds !== undefined) q.set('sinceSeconds', String(since.sinceSeconds));
    if (since.sinceTime !== undefined) q.set('sinceTime', since.sinceTime);
    const path = `/api/v1/namespaces/${encodeURIComponent(r.app)}/pods/${encodeURIComponent(name)}/log?${q}`;
    let res: IncomingMessage;
    try {
      res = await cellGet(this.#o.pods, cell, path, r.signal);
    } catch (err) {
      if (!r.signal.aborted) this.#o.logger.warn({ err, cell, instance: name }, 'log stream failed');
      return;
    }
    await new Promise<void>((resolve) => {
      let rest = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        const parts = (rest + chunk).split('\n');
        rest = parts.pop() ?? '';
        for (const p of parts) emit(parse(cell, name, version, p));
      });
      res.on('end', () => {
        if (rest) emit(parse(cell, name, version, rest));
        resolve();
      });
      res.on('error', () => resolve());
      res.on('close', () => resolve());
    });
  }
}

/** `2026-01-01T00:00:00.123456789Z text` (timestamps=true) → ts and line. */
function parse(cell: string, instance: string, version: string, raw: string): LogLine {
  const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
  const space = line.indexOf(' ');
  const ts = space > 0 ? line.slice(0, space) : '';
  if (/^\d{4}-\d\d-\d\dT[\d:.]+Z$/.test(ts)) return { cell, instance, version, ts, line: line.slice(space + 1) };
  return { cell, instance, version, line };
}

function hasStarted(pod: V1Pod): boolean {
  const s = pod.status?.containerStatuses?.find((c) => c.name === APP_CONTAINER);
  return Boolean(s?.state?.running || s?.state?.terminated || s?.lastState?.terminated);
}

/** An instance found while following: from when it started, or when the follow began. */
function startedBefore(pod: V1Pod, followStart: Date): string {
  const t = pod.status?.startTime ? new Date(pod.status.startTime) : followStart;
  return new Date(Math.min(t.getTime(), followStart.getTime())).toISOString().replace(/\.\d+Z$/, 'Z');
}
