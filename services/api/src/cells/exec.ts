/**
 * Exec into an app's instance over a WebSocket (docs/instances.md, "Exec"), bridged to the cell's
 * exec API. The upgrade is authenticated like any request (Authorization: Bearer, or
 * `?access_token=` for browsers, which cannot set headers on a WebSocket) and needs Developer or
 * more on the app. Frames:
 * - client → server: binary = stdin; text = JSON control, `{"type":"resize","cols":80,"rows":24}`,
 *   or `{"type":"stdin-eof"}`: stdin has ended (the command reads end-of-file; later stdin is dropped).
 * - server → client: binary = output, its first byte the stream (1 stdout, 2 stderr); text = JSON,
 *   `{"type":"exit","code":0}` once the command ended (then the socket closes with 1000), or
 *   `{"type":"error","message":"…"}` when the cell refused (then 1011).
 * Each session is two events in the app's feed (`pod` exec-started, exec-ended: who, which
 * instance, when, how long, the exit code), never its command or content. A session holds one of
 * its user's MAX_EXEC_PER_USER slots (../http/stream-limits.ts) from before the upgrade until its
 * socket closes; one more is refused with 429 before any upgrade.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { PassThrough, Writable } from 'node:stream';
import { ForbiddenError, InputError, NotFoundError, UnauthorizedError } from '@berth/shared/errors';
import { problemFromError } from '@berth/shared/http';
import type { Logger } from '@berth/shared/logging';
import { LABELS } from '@berth/shared/model';
import { Exec, type V1Status } from '@kubernetes/client-node';
import { type RawData, type WebSocket, WebSocketServer } from 'ws';
import type { Principal } from '../auth/principal.ts';
import { roleAllows } from '../rbac/index.ts';
import { loadApp } from '../resources/app-access.ts';
import type { ApiContext } from '../resources/context.ts';
import { APP_CONTAINER, type CellPods } from './pods.ts';

export const EXEC_PATH =
  /^\/api\/v1\/apps\/([a-z0-9-]{1,63})\/instances\/([a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?)\/exec$/;

/** The longest exec argument, and the most arguments (docs/instances.md). */
export const EXEC_ARG_MAX = 256;
export const EXEC_ARGS_MAX = 16;
const EXEC_ARG = /^[\t\n\x20-\x7e]+$/;

export type ExecSessionsOptions = {
  ctx: ApiContext;
  pods: CellPods;
  logger: Logger;
  authenticate: (req: IncomingMessage) => Promise<Principal>;
};

/** The exit code in the status the exec API ends with (null when the command did not run). */
export function exitCodeOf(status: V1Status): number | null {
  if (status.status === 'Success') return 0;
  const cause = status.details?.causes?.find((c) => c.reason === 'ExitCode');
  const code = cause?.message !== undefined ? Number(cause.message) : Number.NaN;
  return Number.isInteger(code) ? code : null;
}

/** One session's caller and where it runs what. */
type ExecTarget = {
  principal: Principal;
  /** Gives the user's exec slot back (safe to call more than once). */
  release: () => void;
  app: string;
  /** The app's incarnation: its feed shows only this one's events. */
  incarnation: string | undefined;
  instance: string;
  cell: string;
  version: string;
  command: string[];
  tty: boolean;
  stdin: boolean;
};

export class ExecSessions {
  readonly #o: ExecSessionsOptions;
  readonly #wss = new WebSocketServer({ noServer: true, maxPayload: 1024 * 1024 });
  readonly #open = new Set<WebSocket>();

  constructor(options: ExecSessionsOptions) {
    this.#o = options;
  }

  /** The HTTP server's upgrade handler: exec sessions; anything else is refused. */
  readonly upgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    socket.on('error', () => undefined);
    const url = new URL(req.url ?? '/', 'http://api');
    const m = EXEC_PATH.exec(url.pathname);
    if (!m?.[1] || !m[2]) {
      refuse(socket, new NotFoundError('no WebSocket here'), url.pathname);
      return;
    }
    const [app, instance] = [m[1], m[2]];
    this.#prepare(req, url, app, instance).then(
      (target) => {
        // The slot is freed when the socket closes, whatever closed it (also a failed handshake).
        socket.once('close', target.release);
        this.#wss.handleUpgrade(req, socket, head, (ws) => {
          this.#session(ws, target).catch((err) => this.#o.logger.error({ err }, 'exec session failed'));
        });
      },
      (err) => refuse(socket, err, url.pathname),
    );
  };

  /** Ends every open session (at shutdown). */
  close(): void {
    for (const ws of this.#open) ws.close(1001, 'the API is stopping');
  }

  async #prepare(req: IncomingMessage, url: URL, app: string, instance: string): Promise<ExecTarget> {
    // Browsers cannot send headers with a WebSocket: the token may come as ?access_token=.
    const token = url.searchParams.get('access_token');
    if (token && !req.headers.authorization) req.headers.authorization = `Bearer ${token}`;
    if (!req.headers.authorization) throw new UnauthorizedError('sign in: send Authorization: Bearer <token>');
    const principal = await this.#o.authenticate(req);
    const { role, app: stored } = await loadApp(this.#o.ctx, principal, app, 'read');
    if (!principal.admin && !roleAllows(role, 'build')) {
      throw new ForbiddenError(`Developer or higher is needed to exec into the instances of app "${app}"`, {
        extensions: { requiredRole: 'Developer', role },
      });
    }
    const { cell, pod } = await this.#o.pods.find(app, instance);
    const tty = url.searchParams.get('tty') === 'true';
    const commands = url.searchParams.getAll('command');
    if (commands.length > EXEC_ARGS_MAX || commands.some((c) => c.length > EXEC_ARG_MAX || !EXEC_ARG.test(c))) {
      throw new InputError(
        `command: at most ${EXEC_ARGS_MAX} arguments of at most ${EXEC_ARG_MAX} printable ASCII characters (longer scripts through stdin)`,
      );
    }
    // Last, so that a refused request takes no slot: 429 when the user's sessions are all open.
    const release = this.#o.ctx.streams?.acquire('exec', principal.user) ?? (() => undefined);
    return {
      principal,
      release,
      app,
      incarnation: stored.value.incarnation,
      instance,
      cell,
      version: pod.metadata?.labels?.[LABELS.version] ?? '',
      command: commands.length > 0 ? commands : ['sh'],
      tty,
      stdin: tty || url.searchParams.get('stdin') === 'true',
    };
  }

  async #session(ws: WebSocket, t: ExecTarget): Promise<void> {
    this.#open.add(ws);
    ws.once('close', () => t.release());
    const started = new Date();
    const { ctx, logger } = this.#o;
    const feed = (action: string, data: Record<string, unknown>) =>
      ctx.events
        .emit({
          kind: 'pod',
          resourceId: t.app,
          ...(t.incarnation ? { incarnation: t.incarnation } : {}),
          resourceName: t.instance,
          action,
          actor: { type: 'user', name: t.principal.user },
          data: { cell: t.cell, version: t.version, tty: t.tty, startedAt: started.toISOString(), ...data },
        })
        .catch((err) => logger.warn({ err, app: t.app }, 'exec event not recorded'));

    const send = (channel: number) =>
      new Writable({
        write(chunk: Buffer, _enc, done) {
          if (ws.readyState !== ws.OPEN) return done();
          ws.send(Buffer.concat([Buffer.from([channel]), chunk]), { binary: true }, () => done());
        },
      });
    const stdout = send(1) as Writable & { columns?: number; rows?: number };
    const stderr = t.tty ? null : send(2);
    if (t.tty) {
      // client-node sends the terminal size of a stdout that has columns and rows, and again on 'resize'.
      stdout.columns = 80;
      stdout.rows = 24;
    }
    const stdin = t.stdin ? new PassThrough() : null;
    let code: number | null = null;
    let message: string | undefined;
    // Frames are taken from the first one on (stdin sent right after the upgrade is kept until
    // the cell's exec is connected); nothing is awaited before these handlers are in place.
    ws.on('message', (data: RawData, binary: boolean) => {
      const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
      if (binary) {
        if (stdin && !stdin.writableEnded) stdin.write(buf);
        return;
      }
      try {
        const frame = JSON.parse(buf.toString('utf8')) as { type?: string; cols?: unknown; rows?: unknown };
        if (frame.type === 'resize' && t.tty && isSize(frame.cols) && isSize(frame.rows)) {
          stdout.columns = frame.cols;
          stdout.rows = frame.rows;
          stdout.emit('resize');
        } else if (frame.type === 'stdin-eof') {
          // The cell's exec closes the command's stdin (client-node sends v5's close signal).
          stdin?.end();
        }
      } catch {
        // not a control frame: ignored
      }
    });
    let upstream: { close: () => void } | undefined;
    const clientGone = new Promise<void>((resolve) => ws.once('close', () => resolve()));
    await feed('exec-started', {});

    try {
      const conn = await new Exec(this.#o.pods.client(t.cell).kubeConfig).exec(
        t.app,
        t.instance,
        APP_CONTAINER,
        t.command,
        stdout,
        stderr,
        stdin,
        t.tty,
        (status) => {
          code = exitCodeOf(status);
          if (code === null) message = status.message;
        },
      );
      upstream = conn;
      const upstreamDone = new Promise<void>((resolve) => {
        conn.once('close', () => resolve());
        conn.once('error', () => resolve());
      });
      await Promise.race([upstreamDone, clientGone]);
    } catch (err) {
      message = (err as Error).message;
      logger.warn({ err, cell: t.cell, instance: t.instance }, 'exec refused by the cell');
    } finally {
      upstream?.close();
      if (stdin && !stdin.writableEnded) stdin.end();
    }
    if (ws.readyState === ws.OPEN) {
      if (code === null && message !== undefined) {
        ws.send(JSON.stringify({ type: 'error', message }));
        ws.close(1011, 'exec failed');
      } else {
        ws.send(JSON.stringify({ type: 'exit', code }));
        ws.close(1000, 'exited');
      }
    }
    this.#open.delete(ws);
    t.release();
    await feed('exec-ended', {
      durationMs: Date.now() - started.getTime(),
      exitCode: code,
      // The cell's message is left out: it can quote the command.
      ...(message !== undefined && code === null ? { failed: true } : {}),
    });
  }
}

function isSize(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v > 0 && v < 10_000;
}

/** Answers a refused upgrade with the problem's status and closes the socket. */
function refuse(socket: Duplex, err: unknown, path: string): void {
  const problem = problemFromError(err, path);
  const body = JSON.stringify(problem);
  socket.end(
    `HTTP/1.1 ${problem.status} ${problem.title}\r\nContent-Type: application/problem+json\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}
