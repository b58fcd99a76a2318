/**
 * The allocator's view of its store: a few key-value operations with etcd's semantics (mod and
 * create revisions, all-or-nothing transactions). EtcdIpStore speaks to etcd's v3 JSON gateway
 * over plain HTTP: the plugin runs at every pod start, and loading a gRPC client would cost more
 * than the allocation itself (docs/ipam.md has the measurements).
 */

export type KeyValue = { key: string; value: string; modRevision: number; createRevision: number };

export type Compare =
  | { key: string; modRevision: number } // the key is unchanged since read (0: absent)
  | { key: string; absent: true };

export type Write = { put: string; value: string } | { del: string };

export interface IpStore {
  get(key: string): Promise<KeyValue | undefined>;
  /** Every key with the prefix, in key order (values empty with keysOnly). */
  range(prefix: string, options?: { keysOnly?: boolean }): Promise<KeyValue[]>;
  /** All writes if every compare holds, else none; true when written. */
  txn(compares: Compare[], writes: Write[]): Promise<boolean>;
}

/** etcd cannot be reached: the CNI error "try again later". */
export class StoreUnavailableError extends Error {
  override name = 'StoreUnavailableError';
}

const b64 = (s: string) => Buffer.from(s).toString('base64');
const unb64 = (s: string | undefined) => (s ? Buffer.from(s, 'base64').toString() : '');

function rangeEnd(prefix: string): string {
  const buf = Buffer.from(prefix);
  for (let i = buf.length - 1; i >= 0; i--) {
    if ((buf[i] as number) < 0xff) {
      buf[i] = (buf[i] as number) + 1;
      return buf.subarray(0, i + 1).toString('base64');
    }
  }
  return b64('\0');
}

type GatewayKv = { key?: string; value?: string; mod_revision?: string; create_revision?: string };

export class EtcdIpStore implements IpStore {
  readonly #endpoints: string[];
  readonly #timeoutMs: number;
  #current = 0;

  constructor(endpoints: string[], options: { timeoutMs?: number } = {}) {
    if (endpoints.length === 0) throw new Error('no etcd endpoints');
    this.#endpoints = endpoints.map((e) => e.replace(/\/$/, ''));
    this.#timeoutMs = options.timeoutMs ?? 5000;
  }

  async #call(path: string, body: unknown): Promise<Record<string, unknown>> {
    let lastError: unknown;
    for (let i = 0; i < this.#endpoints.length; i++) {
      const endpoint = this.#endpoints[(this.#current + i) % this.#endpoints.length] as string;
      let res: { status: number; json: Record<string, unknown> };
      try {
        res = await postJson(`${endpoint}${path}`, body, this.#timeoutMs);
      } catch (err) {
        lastError = err;
        continue;
      }
      if (res.status >= 400) {
        const message = String(res.json.message ?? res.json.error ?? `HTTP ${res.status}`);
        if (res.status >= 500 && /unavailable|leader|timeout/i.test(message)) {
          lastError = new Error(message);
          continue;
        }
        throw new Error(`etcd refused ${path}: ${message}`);
      }
      this.#current = (this.#current + i) % this.#endpoints.length;
      return res.json;
    }
    throw new StoreUnavailableError(
      `cannot reach etcd at ${this.#endpoints.join(', ')}: ${(lastError as Error)?.message ?? 'no answer'}`,
    );
  }

  #toKv(kv: GatewayKv): KeyValue {
    return {
      key: unb64(kv.key),
      value: unb64(kv.value),
      modRevision: Number(kv.mod_revision ?? 0),
      createRevision: Number(kv.create_revision ?? 0),
    };
  }

  async get(key: string): Promise<KeyValue | undefined> {
    const res = await this.#call('/v3/kv/range', { key: b64(key) });
    const kvs = (res.kvs as GatewayKv[] | undefined) ?? [];
    return kvs[0] ? this.#toKv(kvs[0]) : undefined;
  }

  async range(prefix: string, options: { keysOnly?: boolean } = {}): Promise<KeyValue[]> {
    const out: KeyValue[] = [];
    let start = b64(prefix);
    let revision: string | undefined;
    for (;;) {
      const res = await this.#call('/v3/kv/range', {
        key: start,
        range_end: rangeEnd(prefix),
        limit: 2000,
        ...(options.keysOnly ? { keys_only: true } : {}),
        ...(revision ? { revision } : {}),
      });
      revision ??= String((res.header as { revision?: string })?.revision ?? '');
      const kvs = ((res.kvs as GatewayKv[] | undefined) ?? []).map((kv) => this.#toKv(kv));
      out.push(...kvs);
      const last = kvs[kvs.length - 1];
      if (!res.more || !last) break;
      start = b64(`${last.key}\0`);
    }
    return out;
  }

  async txn(compares: Compare[], writes: Write[]): Promise<boolean> {
    const res = await this.#call('/v3/kv/txn', {
      compare: compares.map((c) =>
        'absent' in c
          ? { key: b64(c.key), target: 'CREATE', result: 'EQUAL', create_revision: '0' }
          : { key: b64(c.key), target: 'MOD', result: 'EQUAL', mod_revision: String(c.modRevision) },
      ),
      success: writes.map((w) =>
        'put' in w
          ? { request_put: { key: b64(w.put), value: b64(w.value) } }
          : { request_delete_range: { key: b64(w.del) } },
      ),
    });
    return res.succeeded === true;
  }
}

/**
 * One JSON POST with node:http. Not fetch: loading fetch's implementation (undici) costs about
 * 100 ms, more than the allocation itself, and the plugin starts at every pod start.
 */
async function postJson(
  url: string,
  body: unknown,
  timeoutMs: number,
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
    req.on('timeout', () => req.destroy(new Error(`no answer in ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(payload);
  });
}
