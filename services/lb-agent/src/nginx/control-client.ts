/**
 * The agent's side of nginx's control server (a unix socket; docs/traffic.md): push and remove
 * routing documents, read what Lua holds (for restart detection and the digest check), the
 * generation the workers run, and Lua's counters.
 */
import { request } from 'node:http';
import type { RoutingDocument } from '../routing/document.ts';

export type LuaRoutes = {
  boot: string;
  free: number;
  apps: Record<string, { revision: number; digest: string; generation: number }>;
};

export type VersionStats = {
  requests: number;
  status: Record<string, number>;
  upstreamLatencySum: number;
  upstreamLatencyCount: number;
};

export type LuaStats = {
  apps: Record<string, Record<string, VersionStats>>;
  free: Record<string, number>;
};

export type PushResult = { ok: true } | { ok: false; status: number; error: string; revision?: number };

export class ControlError extends Error {
  readonly status: number | undefined;

  constructor(message: string, status: number | undefined) {
    super(message);
    this.name = 'ControlError';
    this.status = status;
  }
}

export class ControlClient {
  readonly socketPath: string;
  readonly timeoutMs: number;

  constructor(socketPath: string, timeoutMs = 5000) {
    this.socketPath = socketPath;
    this.timeoutMs = timeoutMs;
  }

  /** PUT /routes/{app}. `body` is the document's JSON exactly as its digest is taken. */
  async push(app: string, body: string, options: { force?: boolean } = {}): Promise<PushResult> {
    const res = await this.#call('PUT', `/routes/${encodeURIComponent(app)}`, body, options.force);
    if (res.status === 200) return { ok: true };
    const parsed = safeJson(res.body) as { error?: string; revision?: number } | undefined;
    return {
      ok: false,
      status: res.status,
      error: parsed?.error ?? res.body.slice(0, 200),
      ...(typeof parsed?.revision === 'number' ? { revision: parsed.revision } : {}),
    };
  }

  async remove(app: string, revision: number, options: { force?: boolean } = {}): Promise<PushResult> {
    const res = await this.#call(
      'DELETE',
      `/routes/${encodeURIComponent(app)}?revision=${revision}`,
      undefined,
      options.force,
    );
    if (res.status === 200 || res.status === 404) return { ok: true };
    return { ok: false, status: res.status, error: res.body.slice(0, 200) };
  }

  async routes(): Promise<LuaRoutes> {
    return this.#json<LuaRoutes>('/routes');
  }

  async stats(): Promise<LuaStats> {
    return this.#json<LuaStats>('/stats');
  }

  /** The config generation the worker answering runs. */
  async generation(): Promise<number> {
    const res = await this.#call('GET', '/generation');
    if (res.status !== 200) throw new ControlError(`GET /generation answered ${res.status}`, res.status);
    return Number(res.body.trim());
  }

  async #json<T>(path: string): Promise<T> {
    const res = await this.#call('GET', path);
    if (res.status !== 200)
      throw new ControlError(`GET ${path} answered ${res.status}: ${res.body.slice(0, 200)}`, res.status);
    const parsed = safeJson(res.body);
    if (parsed === undefined) throw new ControlError(`GET ${path} answered no JSON`, res.status);
    return parsed as T;
  }

  #call(method: string, path: string, body?: string, force?: boolean): Promise<{ status: number; body: string }> {
    return new Promise((resolvePromise, reject) => {
      const headers: Record<string, string> = { host: 'berth-control' };
      if (body !== undefined) {
        headers['content-type'] = 'application/json';
        headers['content-length'] = String(Buffer.byteLength(body));
      }
      if (force) headers['x-berth-force'] = '1';
      const req = request({ socketPath: this.socketPath, method, path, headers, timeout: this.timeoutMs }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolvePromise({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
        res.on('error', reject);
      });
      req.on('timeout', () =>
        req.destroy(new ControlError(`${method} ${path}: no answer in ${this.timeoutMs} ms`, undefined)),
      );
      req.on('error', (err) =>
        reject(err instanceof ControlError ? err : new ControlError(`${method} ${path}: ${err.message}`, undefined)),
      );
      req.end(body);
    });
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

export type { RoutingDocument };
