/**
 * `Idempotency-Key` on POST routes (the IETF draft's semantics, as Stripe serves them): the key and
 * the answer are written in the same transaction as the change, under a lease of a day. A repeat
 * with the same key and the same request gets the first answer (same status, body and ETag); with
 * another request, 422. Two racing requests with one key make one change: the record is created
 * with a compare, so the loser re-reads and answers from the winner's record.
 */
import { createHash } from 'node:crypto';
import { IdempotencyMismatchError, InputError } from '@berth/shared/errors';
import type { Etcd3 } from '@berth/shared/etcd';
import type { BerthKeys } from '@berth/shared/keys';
import type { Op, Store } from '@berth/shared/store';
import type { Request } from 'express';
import { z } from 'zod';
import type { Principal } from '../auth/principal.ts';
import type { IdempotencyGate, RouteResult } from './routes.ts';

export type IdempotencyRequest = {
  /** The record's etcd key: the caller and a hash of their key. */
  recordKey: string;
  requestHash: string;
};

const recordSchema = z.object({
  requestHash: z.string(),
  status: z.number().int(),
  body: z.unknown().optional(),
  headers: z.record(z.string(), z.string()),
  /** The answer's ETag was the transaction's revision: the record's own mod revision. */
  etagIsRevision: z.boolean(),
  createdAt: z.string(),
});
type IdempotencyRecord = z.infer<typeof recordSchema>;

const HEADER = 'idempotency-key';
const KEY_PATTERN = /^[\x21-\x7e]{1,255}$/;
/** Records outlive a day: a lease of 25 h, granted once per hour and shared by that hour's records. */
const LEASE_TTL_SECONDS = 25 * 3600;
const LEASE_ROTATION_MS = 3600_000;

/** The revision an answer is built with for its record; its ETag then reads `"0"`. */
export const RECORD_REVISION = 0;

export class Idempotency implements IdempotencyGate {
  readonly #store: Store;
  readonly #keys: BerthKeys;
  readonly #etcd: Etcd3;
  #lease: { since: number; id: Promise<string> } | undefined;

  constructor(store: Store, keys: BerthKeys, etcd: Etcd3) {
    this.#store = store;
    this.#keys = keys;
    this.#etcd = etcd;
  }

  request(req: Request, principal: Principal | undefined, body: unknown): IdempotencyRequest | undefined {
    const raw = req.headers[HEADER];
    if (raw === undefined) return undefined;
    const key = Array.isArray(raw) ? raw[0] : raw;
    if (!key || !KEY_PATTERN.test(key)) {
      throw new InputError('Idempotency-Key must be 1 to 255 visible ASCII characters', [
        { path: 'header:Idempotency-Key', message: 'expected 1-255 visible ASCII characters, e.g. a UUID' },
      ]);
    }
    const user = principal?.user ?? 'anonymous';
    return {
      recordKey: this.#keys.idempotency(user, sha256(key)),
      requestHash: sha256(`${req.method} ${req.originalUrl}\n${canonicalJson(body)}`),
    };
  }

  async replay(request: IdempotencyRequest): Promise<RouteResult | undefined> {
    const stored = await this.#store.get(request.recordKey, recordSchema);
    if (!stored) return undefined;
    if (stored.value.requestHash !== request.requestHash) {
      throw new IdempotencyMismatchError(
        'this Idempotency-Key was used with another request; send a new key for a new request',
      );
    }
    const headers: Record<string, string> = { ...stored.value.headers, 'Idempotent-Replayed': 'true' };
    if (stored.value.etagIsRevision) headers.ETag = `"${stored.modRevision}"`;
    return { status: stored.value.status, body: stored.value.body, headers };
  }

  /** The op that stores `answer` (built with RECORD_REVISION) for this request, in the change's transaction. */
  async recordOp(request: IdempotencyRequest, answer: RouteResult): Promise<Op> {
    const headers = { ...(answer.headers ?? {}) };
    const etagIsRevision = headers.ETag === `"${RECORD_REVISION}"`;
    if (etagIsRevision) delete headers.ETag;
    const record: IdempotencyRecord = {
      requestHash: request.requestHash,
      status: answer.status,
      ...(answer.body !== undefined ? { body: answer.body } : {}),
      headers,
      etagIsRevision,
      createdAt: new Date().toISOString(),
    };
    return { op: 'create', key: request.recordKey, value: record, lease: await this.#leaseId() };
  }

  #leaseId(): Promise<string> {
    const now = Date.now();
    if (!this.#lease || now - this.#lease.since >= LEASE_ROTATION_MS) {
      const id = this.#etcd.lease(LEASE_TTL_SECONDS, { autoKeepAlive: false }).grant();
      this.#lease = { since: now, id };
      // A failed grant is not cached: the next request asks again.
      id.catch(() => {
        if (this.#lease?.id === id) this.#lease = undefined;
      });
    }
    return this.#lease.id;
  }
}

function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

/** JSON with object keys sorted, so `{"a":1,"b":2}` and `{"b":2,"a":1}` are the same request. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}
