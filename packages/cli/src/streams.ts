/**
 * The streaming commands: server-sent events (build logs), NDJSON (app logs, GET
 * /apps/{app}/logs) and the exec WebSocket (GET /apps/{app}/instances/{instance}/exec).
 */
import { type BerthClient, call, type paths } from '@berth/client';
import type { Io } from './program.ts';

/** One of an app's instances, as GET /apps/{app}/instances answers it (the typed client's own type). */
export type Instance = InstancesPage['items'][number];
type InstancesPage = paths['/api/v1/apps/{app}/instances']['get']['responses'][200]['content']['application/json'];

export async function listInstances(
  api: BerthClient,
  app: string,
  filter: { version?: string | undefined; cell?: string | undefined } = {},
): Promise<InstancesPage> {
  return call(
    api.GET('/api/v1/apps/{app}/instances', {
      params: {
        path: { app },
        query: {
          ...(filter.version ? { version: filter.version } : {}),
          ...(filter.cell ? { cell: filter.cell } : {}),
        },
      },
    }),
  );
}

export type SseEvent = { event: string; data: string; id?: string };

/** Server-sent events from a fetch response (a blank line ends each); comments (`: ping`) are skipped. */
export async function* readSse(res: Response): AsyncGenerator<SseEvent> {
  let ev: SseEvent = { event: 'message', data: '' };
  let data: string[] = [];
  for await (const line of readLines(res)) {
    if (line === '') {
      if (data.length || ev.event !== 'message') {
        ev.data = data.join('\n');
        yield ev;
      }
      ev = { event: 'message', data: '' };
      data = [];
      continue;
    }
    if (line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'event') ev.event = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id') ev.id = value;
  }
}

/** Lines of a streamed text body, as they arrive. */
export async function* readLines(res: Response): AsyncGenerator<string> {
  if (!res.body) return;
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
    for (let i = buffer.indexOf('\n'); i >= 0; i = buffer.indexOf('\n')) {
      yield buffer.slice(0, i);
      buffer = buffer.slice(i + 1);
    }
  }
  if (buffer) yield buffer;
}

export type LogOptions = {
  follow: boolean;
  version?: string;
  cell?: string;
  instance?: string;
  tail?: number;
  since?: string;
  /** -o json: the NDJSON lines as the API sends them. */
  json: boolean;
  write(s: string): void;
};

/** One NDJSON log line: what the CLI prints as `cell/instance  text`. */
export function formatLogLine(line: string): string {
  try {
    const l = JSON.parse(line) as { cell?: string; instance?: string; line?: string; message?: string; text?: string };
    return `${l.cell ?? '?'}/${l.instance ?? '?'}  ${l.line ?? l.message ?? l.text ?? ''}`;
  } catch {
    return line;
  }
}

export async function followLogs(api: BerthClient, app: string, o: LogOptions): Promise<void> {
  const q = new URLSearchParams();
  if (o.version) q.set('version', o.version);
  if (o.cell) q.set('cell', o.cell);
  if (o.instance) q.set('instance', o.instance);
  if (o.tail !== undefined) q.set('tail', String(o.tail));
  if (o.since) q.set('since', o.since);
  if (o.follow) q.set('follow', 'true');
  const res = await api.raw(`/api/v1/apps/${encodeURIComponent(app)}/logs?${q}`, {
    headers: { accept: 'application/x-ndjson' },
  });
  for await (const line of readLines(res)) {
    if (!line.trim()) continue;
    o.write(`${o.json ? line : formatLogLine(line)}\n`);
  }
}

type ExecOptions = { stdin: boolean; tty: boolean; io: Io };

/**
 * Runs `argv` in a container through the exec WebSocket (services/api/src/cells/exec.ts) and
 * resolves with its exit code. Up: binary frames are stdin, text frames JSON
 * `{type:'resize',cols,rows}` and, without a terminal, `{type:'stdin-eof'}` once our stdin ended
 * (so `printf 'x' | berth exec app -i -- cat` ends). Down: binary frames are output (first byte 1
 * stdout, 2 stderr), text frames `{type:'exit',code}` or `{type:'error',message}`. Stdin is read
 * only with -i (as kubectl): without it a command never waits on the caller's stdin.
 */
export async function execCommand(
  api: BerthClient,
  app: string,
  instance: string | undefined,
  argv: string[],
  o: ExecOptions,
): Promise<number> {
  let target = instance;
  if (!target) {
    const { items } = await listInstances(api, app);
    const ready = items.find((i) => i.ready);
    if (!ready) throw new Error(`app ${app} has no ready instance to run the command in`);
    target = ready.instance;
  }
  const url = new URL(
    `/api/v1/apps/${encodeURIComponent(app)}/instances/${encodeURIComponent(target)}/exec`,
    api.baseUrl,
  );
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  for (const a of argv) url.searchParams.append('command', a);
  if (o.stdin) url.searchParams.set('stdin', 'true');
  if (o.tty) url.searchParams.set('tty', 'true');
  const stdout = o.io.stdout as NodeJS.WriteStream;
  // Node's WebSocket (undici) takes headers in its second argument, unlike a browser's.
  const WS = WebSocket as unknown as new (url: string, init: { headers: Record<string, string> }) => WebSocket;
  const ws = new WS(url.toString(), { headers: api.token ? { authorization: `Bearer ${api.token}` } : {} });
  ws.binaryType = 'arraybuffer';
  const stdin = o.io.stdin as NodeJS.ReadStream;
  const resize = () => {
    if (stdout.columns && stdout.rows)
      ws.send(JSON.stringify({ type: 'resize', cols: stdout.columns, rows: stdout.rows }));
  };
  return await new Promise<number>((resolve, reject) => {
    let code: number | undefined;
    let failure: string | undefined;
    const restore = () => {
      if (o.stdin && o.tty && stdin.isTTY) stdin.setRawMode(false);
      if (o.stdin) stdin.pause();
      if (o.tty) stdout.off('resize', resize);
    };
    ws.addEventListener('open', () => {
      if (o.stdin) {
        if (o.tty && stdin.isTTY) stdin.setRawMode(true);
        stdin.on('data', (d: Buffer) => ws.send(d));
        // With a terminal, ^D is a byte like any other; without one, the end of our stdin is the
        // command's end-of-file.
        if (!o.tty) stdin.once('end', () => ws.send(JSON.stringify({ type: 'stdin-eof' })));
        stdin.resume();
      }
      if (o.tty) {
        resize();
        stdout.on('resize', resize);
      }
    });
    ws.addEventListener('message', (ev) => {
      if (typeof ev.data === 'string') {
        const m = JSON.parse(ev.data) as { type: string; code?: number; message?: string };
        if (m.type === 'exit') code = m.code ?? 0;
        else if (m.type === 'error') failure = m.message ?? 'exec failed';
        return;
      }
      const bytes = Buffer.from(ev.data as ArrayBuffer);
      (bytes[0] === 2 ? o.io.stderr : o.io.stdout).write(bytes.subarray(1));
    });
    ws.addEventListener('error', () => {
      restore();
      reject(
        // A refused upgrade's status is not visible through WebSocket: name what it can be.
        new Error(
          `the exec connection to ${target} failed (is the API reachable, are you Developer or more, and are fewer than MAX_EXEC_PER_USER of your sessions open?)`,
        ),
      );
    });
    ws.addEventListener('close', (ev) => {
      restore();
      if (code !== undefined) resolve(code);
      else
        reject(
          new Error(
            failure ?? `the exec session ended without an exit code (${ev.code}${ev.reason ? `: ${ev.reason}` : ''})`,
          ),
        );
    });
  });
}
