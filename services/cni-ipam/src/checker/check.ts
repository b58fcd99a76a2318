/**
 * `cnictl check`: compares what IPAM holds in etcd with the pods of the cell's API server.
 * - leaked: an address held for a pod that no longer exists, that has finished, or that now has
 *   another address (its old sandbox was never torn down);
 * - unknown: a running pod whose address is in one of Berth's pools but not allocated by Berth;
 * - duplicates: two running pods with the same address.
 * A pod still starting (no address yet) holds its allocation legitimately.
 *
 * The checker daemon (./watch.ts) releases leaks automatically only when asked to, and only what it saw leaked in
 * two checks a grace apart, each against a fresh list of pods, and never while the pod list cannot
 * be read: Calico's clean-up once freed addresses of live pods from a stale view.
 */
import type { BerthKeys } from '@berth/shared/keys';
import type { KvBackend } from '@berth/shared/store/lite';
import type { CoreV1Api, V1Pod } from '@kubernetes/client-node';
import type { Allocator } from '../ipam/allocator.ts';
import { contains, ipToInt, parseCidr } from '../ipam/cidr.ts';
import { type IpRecord, parseIp, parsePool } from '../ipam/model.ts';

export type Leak = IpRecord & { reason: string };
export type UnknownPod = { namespace: string; pod: string; ip: string; node: string };
export type Duplicate = { ip: string; pods: string[] };

export type CheckReport = {
  cell: string;
  checkedAt: string;
  allocations: number;
  pods: number;
  leaked: Leak[];
  unknown: UnknownPod[];
  duplicates: Duplicate[];
};

export function problems(report: CheckReport): number {
  return report.leaked.length + report.unknown.length + report.duplicates.length;
}

/** Every pod of the cell, page by page. */
export async function listPods(core: CoreV1Api): Promise<V1Pod[]> {
  const pods: V1Pod[] = [];
  let cont: string | undefined;
  do {
    const page = await core.listPodForAllNamespaces({ limit: 1000, ...(cont ? { _continue: cont } : {}) });
    pods.push(...page.items);
    cont = page.metadata?._continue || undefined;
  } while (cont);
  return pods;
}

export async function listAllocations(backend: KvBackend, keys: BerthKeys, cell: string): Promise<IpRecord[]> {
  return (await backend.range(keys.ipamIps(cell))).map(parseIp);
}

function terminal(pod: V1Pod): boolean {
  return pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed';
}

export async function checkCell(options: {
  backend: KvBackend;
  keys: BerthKeys;
  cell: string;
  /** A fresh list of the cell's pods (throws when it cannot be read). */
  pods: () => Promise<V1Pod[]>;
  now?: () => Date;
}): Promise<CheckReport> {
  const { backend, keys, cell } = options;
  // Allocations first, then pods: an address allocated after our read cannot be reported.
  const allocations = await listAllocations(backend, keys, cell);
  const pools = (await backend.range(keys.ipamPools(cell))).map((kv) => parseCidr(parsePool(kv).cidr));
  const pods = await options.pods();
  const byName = new Map<string, V1Pod>();
  const byIp = new Map<string, V1Pod[]>();
  for (const pod of pods) {
    byName.set(`${pod.metadata?.namespace}/${pod.metadata?.name}`, pod);
    if (pod.spec?.hostNetwork || terminal(pod)) continue;
    for (const ip of new Set(
      [pod.status?.podIP, ...(pod.status?.podIPs ?? []).map((p) => p.ip)].filter(Boolean) as string[],
    )) {
      byIp.set(ip, [...(byIp.get(ip) ?? []), pod]);
    }
  }
  const allocated = new Set(allocations.map((a) => a.ip));
  const leaked: Leak[] = [];
  for (const a of allocations) {
    if (!a.namespace || !a.pod) continue; // not a Kubernetes pod: nothing to compare with
    const pod = byName.get(`${a.namespace}/${a.pod}`);
    if (!pod) leaked.push({ ...a, reason: `pod ${a.namespace}/${a.pod} does not exist` });
    else if (terminal(pod))
      leaked.push({
        ...a,
        reason: `pod ${a.namespace}/${a.pod} has ${pod.status?.phase === 'Failed' ? 'failed' : 'finished'}`,
      });
    else if (pod.status?.podIP && pod.status.podIP !== a.ip && !byIp.get(a.ip)?.includes(pod)) {
      leaked.push({ ...a, reason: `pod ${a.namespace}/${a.pod} now has ${pod.status.podIP}` });
    }
  }
  const unknown: UnknownPod[] = [];
  const duplicates: Duplicate[] = [];
  for (const [ip, holders] of byIp) {
    if (holders.length > 1) {
      duplicates.push({ ip, pods: holders.map((p) => `${p.metadata?.namespace}/${p.metadata?.name}`).sort() });
    }
    const n = ipToInt(ip);
    if (!allocated.has(ip) && pools.some((p) => contains(p, n))) {
      for (const p of holders) {
        unknown.push({
          namespace: p.metadata?.namespace ?? '',
          pod: p.metadata?.name ?? '',
          ip,
          node: p.spec?.nodeName ?? '',
        });
      }
    }
  }
  return {
    cell,
    checkedAt: (options.now?.() ?? new Date()).toISOString(),
    allocations: allocations.length,
    pods: pods.length,
    leaked: leaked.sort((a, b) => ipToInt(a.ip) - ipToInt(b.ip)),
    unknown,
    duplicates,
  };
}

/**
 * Remembers leaks across checks, and decides which are safe to release: seen leaked, with the
 * same holder, in two checks at least `graceMs` apart (each on a fresh pod list).
 */
export class LeakTracker {
  readonly #graceMs: number;
  readonly #firstSeen = new Map<string, { handle: string; at: number }>();

  constructor(graceMs: number) {
    this.#graceMs = graceMs;
  }

  /** Feeds one successful check; returns the leaks now confirmed. */
  observe(report: CheckReport): Leak[] {
    const now = Date.parse(report.checkedAt);
    const current = new Set<string>();
    const confirmed: Leak[] = [];
    for (const leak of report.leaked) {
      current.add(leak.ip);
      const seen = this.#firstSeen.get(leak.ip);
      if (!seen || seen.handle !== leak.handle) {
        this.#firstSeen.set(leak.ip, { handle: leak.handle, at: now });
      } else if (now - seen.at >= this.#graceMs) {
        confirmed.push(leak);
      }
    }
    for (const ip of [...this.#firstSeen.keys()]) if (!current.has(ip)) this.#firstSeen.delete(ip);
    return confirmed;
  }

  /** IPs first seen in this report (for leak events). */
  isNew(ip: string): boolean {
    return !this.#firstSeen.has(ip);
  }

  forget(ip: string): void {
    this.#firstSeen.delete(ip);
  }
}

export async function releaseLeaks(allocator: Allocator, leaks: Leak[]): Promise<string[]> {
  const released: string[] = [];
  for (const leak of leaks) {
    const r = await allocator.releaseHandle(leak.handle);
    if (r) released.push(r.ip);
  }
  return released;
}
