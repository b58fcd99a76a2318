/**
 * What IPAM keeps in etcd, per cell (docs/ipam.md):
 *   pools/{cidr}            a pool: its CIDR and state (active | draining)
 *   blocks/{blockCidr}      a block of 16 addresses: its pool, owning node and allocations
 *   affinity/{node}/{block} the blocks a node holds (one read finds a node's own blocks)
 *   ips/{ip}                one allocation: container, pod, node, interface
 *   handles/{handle}        `<network>.<containerId>.<ifName>` → address (ADD and DEL find theirs in one read)
 * Parsed by hand, not with zod: the plugin runs at every pod start and loads as little as it can.
 * A record that cannot be read fails the call with CorruptValueError naming its key: never guessed
 * around, since a guess could hand one address to two pods.
 */
import { CorruptValueError } from '@berth/shared/errors';

/** A stored record: its key (for the error when it cannot be read) and its raw value. */
export type Raw = { key: string; value: string };

export type PoolState = 'active' | 'draining';

export type PoolRecord = { cidr: string; state: PoolState; createdAt: string };

export type BlockRecord = {
  cidr: string;
  pool: string;
  node: string;
  claimedAt: string;
  /** Offset in the block → handle. */
  allocations: Record<string, string>;
  /** When the block last became empty: released after a grace. */
  emptySince?: string;
  /**
   * Offset the next allocation starts searching from (one past the last one handed out), so a
   * freed address is reused as late as possible: a host or pod that still has the old pod's MAC
   * for it in its ARP cache would otherwise send the new pod's traffic nowhere for seconds.
   */
  next?: number;
};

export type IpRecord = {
  ip: string;
  block: string;
  pool: string;
  node: string;
  handle: string;
  network: string;
  containerId: string;
  ifName: string;
  namespace?: string;
  pod?: string;
  allocatedAt: string;
};

export type HandleRecord = { ip: string; block: string };

function object(raw: Raw, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(raw.value);
  } catch {
    throw new CorruptValueError(`${raw.key}: the ${what} record is not JSON`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new CorruptValueError(`${raw.key}: the ${what} record is not an object`);
  }
  return v as Record<string, unknown>;
}

function str(o: Record<string, unknown>, k: string, what: string, raw: Raw): string {
  const v = o[k];
  if (typeof v !== 'string' || v === '') {
    throw new CorruptValueError(`${raw.key}: the ${what} record's ${k} must be a non-empty string`);
  }
  return v;
}

export function parsePool(raw: Raw): PoolRecord {
  const o = object(raw, 'pool');
  const state = o.state === 'draining' ? 'draining' : 'active';
  return { cidr: str(o, 'cidr', 'pool', raw), state, createdAt: String(o.createdAt ?? '') };
}

export function parseBlock(raw: Raw): BlockRecord {
  const o = object(raw, 'block');
  const allocations = (typeof o.allocations === 'object' && o.allocations !== null ? o.allocations : {}) as Record<
    string,
    string
  >;
  return {
    cidr: str(o, 'cidr', 'block', raw),
    pool: str(o, 'pool', 'block', raw),
    node: str(o, 'node', 'block', raw),
    claimedAt: String(o.claimedAt ?? ''),
    allocations,
    ...(typeof o.emptySince === 'string' ? { emptySince: o.emptySince } : {}),
    ...(Number.isInteger(o.next) && (o.next as number) >= 0 ? { next: o.next as number } : {}),
  };
}

export function parseIp(raw: Raw): IpRecord {
  const o = object(raw, 'ip');
  return {
    ip: str(o, 'ip', 'ip', raw),
    block: str(o, 'block', 'ip', raw),
    pool: str(o, 'pool', 'ip', raw),
    node: str(o, 'node', 'ip', raw),
    handle: str(o, 'handle', 'ip', raw),
    network: String(o.network ?? ''),
    containerId: String(o.containerId ?? ''),
    ifName: String(o.ifName ?? ''),
    ...(typeof o.namespace === 'string' ? { namespace: o.namespace } : {}),
    ...(typeof o.pod === 'string' ? { pod: o.pod } : {}),
    allocatedAt: String(o.allocatedAt ?? ''),
  };
}

export function parseHandle(raw: Raw): HandleRecord {
  const o = object(raw, 'handle');
  return { ip: str(o, 'ip', 'handle', raw), block: str(o, 'block', 'handle', raw) };
}
