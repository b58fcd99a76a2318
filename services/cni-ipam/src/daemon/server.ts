/**
 * The resident allocator's socket: one CNI request per connection (./protocol.ts), answered with
 * exactly what the direct plugin would print, by the same commands over the node's resident
 * allocators. The socket is root's alone: its directory is made mode 700 and the socket 600, so
 * only what could run the plugin itself can ask.
 */
import { chmodSync, existsSync, mkdirSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import type { Logger } from '@berth/shared/logging';
import { Counter, Histogram, type Registry } from 'prom-client';
import { runPlugin } from '../plugin/main.ts';
import {
  type DaemonRequest,
  type DaemonResponse,
  type DaemonStats,
  FORWARDED_ENV,
  MAX_REQUEST_BYTES,
  PROTOCOL_VERSION,
} from './protocol.ts';
import type { ResidentAllocators } from './resident.ts';

/** A connection that sends no whole request within this long is closed. */
const REQUEST_TIMEOUT_MS = 10_000;
/** Latencies kept per command for the percentiles `cnictl stats` shows. */
const LATENCY_WINDOW = 2048;

export type IpamSocketServerOptions = {
  path: string;
  allocators: ResidentAllocators;
  metrics: Registry;
  logger: Logger;
};

type CommandCounters = { requests: number; failures: number; latencies: number[] };

export class IpamSocketServer {
  readonly #o: IpamSocketServerOptions;
  readonly #server: Server;
  readonly #open = new Set<Socket>();
  readonly #commands = new Map<string, CommandCounters>();
  readonly #batches = { transactions: 0, requests: 0, largest: 0 };
  readonly #startedAt = new Date().toISOString();
  readonly #requests: Counter<'command' | 'outcome'>;
  readonly #seconds: Histogram<'command'>;
  #inFlight = 0;
  #idle: (() => void) | undefined;

  constructor(options: IpamSocketServerOptions) {
    this.#o = options;
    this.#server = createServer((socket) => this.#serve(socket));
    this.#requests = new Counter({
      name: 'berth_ipam_daemon_requests_total',
      help: 'CNI requests the resident allocator answered, by command and outcome (ok, error)',
      labelNames: ['command', 'outcome'],
      registers: [options.metrics],
    });
    this.#seconds = new Histogram({
      name: 'berth_ipam_daemon_request_seconds',
      help: 'Time the resident allocator took to answer a CNI request',
      labelNames: ['command'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5],
      registers: [options.metrics],
    });
  }

  /** Counts a transaction that carried `size` requests (the NodeQueues report them). */
  recordBatch(size: number): void {
    if (size < 2) return;
    this.#batches.transactions++;
    this.#batches.requests += size;
    this.#batches.largest = Math.max(this.#batches.largest, size);
  }

  async start(): Promise<void> {
    const { path } = this.#o;
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    chmodSync(dirname(path), 0o700);
    if (existsSync(path)) {
      if (await answers(path)) throw new Error(`another IPAM daemon already listens on ${path}`);
      unlinkSync(path); // left by a daemon that did not stop cleanly
    }
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(path, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
    chmodSync(path, 0o600);
    this.#o.logger.info({ socket: path }, 'resident allocator listening');
  }

  /** Stops accepting, lets the requests in flight finish, and removes the socket. */
  async stop(): Promise<void> {
    if (!this.#server.listening) return;
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    if (this.#inFlight > 0) await new Promise<void>((resolve) => (this.#idle = resolve));
    for (const socket of this.#open) socket.destroy();
    await closed;
  }

  stats(): DaemonStats {
    const commands: DaemonStats['commands'] = {};
    for (const [command, c] of this.#commands) {
      const sorted = [...c.latencies].sort((a, b) => a - b);
      commands[command] = {
        requests: c.requests,
        failures: c.failures,
        p50Ms: round(percentile(sorted, 50)),
        p99Ms: round(percentile(sorted, 99)),
      };
    }
    return {
      startedAt: this.#startedAt,
      socket: this.#o.path,
      commands,
      batches: { ...this.#batches },
      cells: this.#o.allocators.cells(),
    };
  }

  #serve(socket: Socket): void {
    this.#open.add(socket);
    socket.on('close', () => this.#open.delete(socket));
    socket.on('error', () => socket.destroy());
    socket.setTimeout(REQUEST_TIMEOUT_MS, () => socket.destroy());
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer): void => {
      const newline = chunk.indexOf(10);
      chunks.push(newline < 0 ? chunk : chunk.subarray(0, newline));
      size += chunk.length;
      if (newline < 0 && size <= MAX_REQUEST_BYTES) return;
      socket.off('data', onData);
      socket.setTimeout(0);
      const line = size > MAX_REQUEST_BYTES ? undefined : Buffer.concat(chunks).toString('utf8');
      void this.#answer(line).then((response) => socket.end(`${JSON.stringify(response)}\n`));
    };
    socket.on('data', onData);
  }

  async #answer(line: string | undefined): Promise<DaemonResponse> {
    const request = parseRequest(line);
    if ('exitCode' in request) return request;
    if ('stats' in request) return { exitCode: 0, stdout: JSON.stringify(this.stats()) };
    const command = String(request.env.CNI_COMMAND ?? 'none');
    const env: NodeJS.ProcessEnv = {};
    for (const name of FORWARDED_ENV) if (typeof request.env[name] === 'string') env[name] = request.env[name];
    this.#inFlight++;
    const t0 = performance.now();
    try {
      const response = await runPlugin(env, request.stdin, (conf) => this.#o.allocators.for(conf));
      this.#count(command, response.exitCode === 0, performance.now() - t0);
      if (response.exitCode !== 0) this.#o.logger.info({ command, answer: response.stdout }, 'CNI request refused');
      return response;
    } finally {
      if (--this.#inFlight === 0) this.#idle?.();
    }
  }

  #count(command: string, ok: boolean, ms: number): void {
    const label = ['ADD', 'DEL', 'CHECK', 'VERSION'].includes(command) ? command : 'other';
    let c = this.#commands.get(label);
    if (!c) {
      c = { requests: 0, failures: 0, latencies: [] };
      this.#commands.set(label, c);
    }
    c.requests++;
    if (!ok) c.failures++;
    c.latencies.push(ms);
    if (c.latencies.length > LATENCY_WINDOW) c.latencies.splice(0, c.latencies.length - LATENCY_WINDOW);
    this.#requests.inc({ command: label, outcome: ok ? 'ok' : 'error' });
    this.#seconds.observe({ command: label }, ms / 1000);
  }
}

/** The request, or the CNI error answer for one the daemon cannot read. */
export function parseRequest(line: string | undefined): DaemonRequest | DaemonResponse {
  const refuse = (msg: string): DaemonResponse => ({
    exitCode: 1,
    stdout: JSON.stringify({ cniVersion: '1.0.0', code: 6, msg, details: '' }),
  });
  if (line === undefined) return refuse(`the request is larger than ${MAX_REQUEST_BYTES} bytes`);
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch {
    return refuse('the request to the IPAM daemon is not JSON');
  }
  const r = raw as Partial<Record<string, unknown>> | null;
  if (typeof r !== 'object' || r === null || r.v !== PROTOCOL_VERSION) {
    return refuse(`the request to the IPAM daemon is not of protocol version ${PROTOCOL_VERSION}`);
  }
  if (r.stats === true) return { v: PROTOCOL_VERSION, stats: true };
  if (typeof r.env !== 'object' || r.env === null || typeof r.stdin !== 'string') {
    return refuse('the request to the IPAM daemon needs "env" (an object) and "stdin" (a string)');
  }
  return { v: PROTOCOL_VERSION, env: r.env as Record<string, string>, stdin: r.stdin };
}

/** Whether something answers on the socket (another daemon), within a second. */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection(path);
    const done = (up: boolean) => {
      socket.destroy();
      resolve(up);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}
