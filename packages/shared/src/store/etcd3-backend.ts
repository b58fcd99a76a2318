/** The services' transport: etcd3's gRPC client. Outages surface as UnavailableError. */
import type { Etcd3 } from 'etcd3';
import { toBerthError } from '../etcd/client.ts';
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

type EtcdTxn = Parameters<Etcd3['kv']['txn']>[0];
type EtcdCompare = NonNullable<EtcdTxn['compare']>[number];
type EtcdOp = NonNullable<EtcdTxn['success']>[number];

export class Etcd3Backend implements KvBackend {
  readonly etcd: Etcd3;

  constructor(etcd: Etcd3) {
    this.etcd = etcd;
  }

  async get(key: string): Promise<KeyValue | undefined> {
    let res: Awaited<ReturnType<Etcd3['kv']['range']>>;
    try {
      res = await this.etcd.kv.range({ key: Buffer.from(key) });
    } catch (err) {
      throw toBerthError(err, `reading ${key}`);
    }
    const kv = res.kvs[0];
    return kv ? toKeyValue(kv) : undefined;
  }

  async range(prefix: string, options: RangeOptions = {}): Promise<KeyValue[]> {
    let res: Awaited<ReturnType<Etcd3['kv']['range']>>;
    try {
      res = await this.etcd.kv.range({
        key: Buffer.from(prefix),
        range_end: prefixRangeEnd(prefix),
        ...(options.keysOnly ? { keys_only: true } : {}),
      });
    } catch (err) {
      throw toBerthError(err, `listing ${prefix}`);
    }
    return res.kvs.map(toKeyValue);
  }

  async txn(compares: readonly Compare[], writes: readonly Write[]): Promise<TxnResult> {
    const compare: EtcdCompare[] = compares.map((c) => {
      const key = Buffer.from(c.key);
      if ('absent' in c) return { key, target: 'Create', result: 'Equal', create_revision: 0 };
      if ('createRevision' in c) return { key, target: 'Create', result: 'Equal', create_revision: c.createRevision };
      return { key, target: 'Mod', result: 'Equal', mod_revision: c.modRevision };
    });
    const success: EtcdOp[] = writes.map((w) => {
      if ('put' in w) {
        return {
          request_put: { key: Buffer.from(w.put), value: Buffer.from(w.value), ...(w.lease ? { lease: w.lease } : {}) },
        };
      }
      if ('del' in w) return { request_delete_range: { key: Buffer.from(w.del) } };
      return { request_delete_range: { key: Buffer.from(w.delPrefix), range_end: prefixRangeEnd(w.delPrefix) } };
    });
    // On failure, read back every compared key in the same transaction, so the caller learns
    // which compare failed without a second round trip.
    const failure: EtcdOp[] = compares.map((c) => ({ request_range: { key: Buffer.from(c.key) } }));
    let res: Awaited<ReturnType<Etcd3['kv']['txn']>>;
    try {
      res = await this.etcd.kv.txn({ compare, success, failure });
    } catch (err) {
      throw toBerthError(err, 'writing');
    }
    const revision = Number(res.header.revision);
    if (res.succeeded) return { succeeded: true, revision };
    const failedKeys: string[] = [];
    compares.forEach((c, i) => {
      const kv = res.responses[i]?.response_range?.kvs[0];
      if (!compareHolds(c, kv ? toKeyValue(kv) : undefined)) failedKeys.push(c.key);
    });
    return { succeeded: false, revision, failedKeys };
  }
}

type RawKv = { key: Buffer; value: Buffer; mod_revision: string; create_revision: string };

function toKeyValue(kv: RawKv): KeyValue {
  return {
    key: kv.key.toString(),
    value: kv.value.toString(),
    modRevision: Number(kv.mod_revision),
    createRevision: Number(kv.create_revision),
  };
}
