/**
 * etcd's v3 JSON gateway over plain node:http: the CNI plugin's transport. The plugin runs at
 * every pod start, and loading a gRPC client would cost more than the allocation itself
 * (docs/ipam.md has the measurements). Speaks the same compare/write vocabulary as the services.
 */
import { ForbiddenError, UnavailableError } from '../errors/index.ts';
import {
  type Compare,
  compareHolds,
  type KeyValue,
  type KvBackend,
  prefixRangeEnd,
  type RangeOptions,
  type TxnResult,
  type Write,
} from './backend.ts';

const b64 = (s: string) => Buffer.from(s).toString('base64');
const unb64 = (s: string | undefined) => (s ? Buffer.from(s, 'base64').toString() : '');

type GatewayKv = { key?: string; value?: string; mod_revision?: string; create_revision?: string };

export type GatewayBackendOptions = {
  timeoutMs?: number;
  /** An etcd user and its password, when etcd's authentication is on. */
  username?: string | undefined;
  password?: string | undefined;
};

export class GatewayBackend implements KvBackend {
  readonly #endpoints: string[];
  readonly #timeoutMs: number;
  readonly #username: string | undefined;
  readonly #password: string;
  #token: string | undefined;
  #current = 0;

  constructor(endpoints: string[], options: GatewayBackendOptions = {}) {
    if (endpoints.length === 0) throw new UnavailableError('no etcd endpoints');
    this.#endpoints = endpoints.map((e) => e.replace(/\/$/, ''));
    this.#timeoutMs = options.timeoutMs ?? 5000;
    this.#username = options.username;
    this.#password = options.password ?? '';
  }

  /** A call as the configured user: its token is fetched first and again once when it expired. */
  async #call(path: string, body: unknown): Promise<Record<string, unknown>> {
    if (!this.#username) return this.#post(path, body);
    this.#token ??= await this.#authenticate();
    try {
      return await this.#post(path, body, this.#token);
    } catch (err) {
      if (!(err instanceof InvalidTokenError)) throw err;
      this.#token = await this.#authenticate();
      return this.#post(path, body, this.#token);
    }
  }

  async #authenticate(): Promise<string> {
    const res = await this.#post('/v3/auth/authenticate', { name: this.#username, password: this.#password });
    if (typeof res.token !== 'string') throw new UnavailableError('etcd answered no auth token');
    return res.token;
  }

  async #post(path: string, body: unknown, token?: string): Promise<Record<string, unknown>> {
    let lastError: unknown;
    for (let i = 0; i < this.#endpoints.length; i++) {
      const endpoint = this.#endpoints[(this.#current + i) % this.#endpoints.length] as string;
      let res: { status: number; json: Record<string, unknown> };
      try {
        res = await postJson(`${endpoint}${path}`, body, this.#timeoutMs, token);
      } catch (err) {
        lastError = err;
        continue;
      }
      if (res.status >= 400) {
        const message = String(res.json.message ?? res.json.error ?? `HTTP ${res.status}`);
        // Refused credentials or permissions are not an outage: they fail loudly, not "try later".
        if (/invalid auth token/i.test(message)) throw new InvalidTokenError(message);
        if (/permission denied|authentication failed|user name/i.test(message)) {
          throw new ForbiddenError(`etcd refused ${path} to ${this.#username ?? 'an anonymous client'}: ${message}`);
        }
        if (res.status >= 500 && /unavailable|leader|timeout/i.test(message)) {
          lastError = new UnavailableError(message);
          continue;
        }
        throw new UnavailableError(`etcd refused ${path}: ${message}`);
      }
      this.#current = (this.#current + i) % this.#endpoints.length;
      return res.json;
    }
    throw new UnavailableError(
      `cannot reach etcd at ${this.#endpoints.join(', ')}: ${(lastError as Error)?.message ?? 'no answer'}`,
    );
  }

  async get(key: string): Promise<KeyValue | undefined> {
    const res = await this.#call('/v3/kv/range', { key: b64(key) });
    const kvs = (res.kvs as GatewayKv[] | undefined) ?? [];
    return kvs[0] ? toKeyValue(kvs[0]) : undefined;
  }

  async range(prefix: string, options: RangeOptions = {}): Promise<KeyValue[]> {
    const out: KeyValue[] = [];
    const end = prefixRangeEnd(prefix).toString('base64');
    let start = b64(prefix);
    let revision: string | undefined;
    for (;;) {
      const res = await this.#call('/v3/kv/range', {
        key: start,
        range_end: end,
        limit: 2000,
        ...(options.keysOnly ? { keys_only: true } : {}),
        ...(revision ? { revision } : {}),
      });
      revision ??= String((res.header as { revision?: string })?.revision ?? '');
      const kvs = ((res.kvs as GatewayKv[] | undefined) ?? []).map(toKeyValue);
      out.push(...kvs);
      const last = kvs[kvs.length - 1];
      if (!res.more || !last) break;
      start = b64(`${last.key}\0`);
    }
    return out;
  }

  async txn(compares: readonly Compare[], writes: readonly Write[]): Promise<TxnResult> {
    const res = await this.#call('/v3/kv/txn', {
      compare: compares.map((c) => {
        if ('absent' in c) return { key: b64(c.key), target: 'CREATE', result: 'EQUAL', create_revision: '0' };
        if ('createRevision' in c) {
          return { key: b64(c.key), target: 'CREATE', result: 'EQUAL', create_revision: String(c.createRevision) };
        }
        return { key: b64(c.key), target: 'MOD', result: 'EQUAL', mod_revision: String(c.modRevision) };
      }),
      success: writes.map((w) => {
        if ('put' in w)
          return { request_put: { key: b64(w.put), value: b64(w.value), ...(w.lease ? { lease: w.lease } : {}) } };
        if ('del' in w) return { request_delete_range: { key: b64(w.del) } };
        return {
          request_delete_range: { key: b64(w.delPrefix), range_end: prefixRangeEnd(w.delPrefix).toString('base64') },
        };
      }),
      failure: compares.map((c) => ({ request_range: { key: b64(c.key) } })),
    });
    const revision = Number((res.header as { revision?: string } | undefined)?.revision ?? 0);
    if (res.succeeded === true) return { succeeded: true, revision };
    const responses = (res.responses as { response_range?: { kvs?: GatewayKv[] } }[] | undefined) ?? [];
    const failedKeys = compares
      .filter((c, i) => {
        const kv = responses[i]?.response_range?.kvs?.[0];
        return !compareHolds(c, kv ? toKeyValue(kv) : undefined);
      })
      .map((c) => c.key);
    return { succeeded: false, revision, failedKeys };
  }
}

function toKeyValue(kv: GatewayKv): KeyValue {
  return {
    key: unb64(kv.key),
    value: unb64(kv.value),
    modRevision: Number(kv.mod_revision ?? 0),
    createRevision: Number(kv.create_revision ?? 0),
  };
}

/**
 * One JSON POST with node:http. Not fetch: loading fetch's implementation (undici) costs about
 * 100 ms, more than the allocation itself, and the plugin starts at every pod start.
 */
class InvalidTokenError extends UnavailableError {}

async function postJson(
  url: string,
  body: unknown,
  timeoutMs: number,
  token?: string,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const target = new URL(url);
  // getBuiltinModule, not import(): an ESM import of node:http evaluates every export of its
  // facade, including the lazy ones that load undici (fetch, WebSocket), which costs the plugin
  // about 40 ms of its start at every pod start.
  const mod = (
    target.protocol === 'https:' ? process.getBuiltinModule('node:https') : process.getBuiltinModule('node:http')
  ) as typeof import('node:http');
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = mod.request(
      target,
      {
        method: 'POST',
        agent: false,
        headers: {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(payload),
          connection: 'close',
          ...(token ? { authorization: token } : {}),
        },
        timeout: timeoutMs,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          let json: Record<string, unknown> = {};
          try {
            json = JSON.parse(Buffer.concat(chunks).toString() || '{}') as Record<string, unknown>;
          } catch {
            // not JSON: the status says enough
          }
          resolve({ status: res.statusCode ?? 0, json });
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new UnavailableError(`no answer in ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(payload);
  });
}
