/**
 * The plugin's commands. ADD is idempotent for one container and interface (the handle holds its
 * address), DEL is idempotent, CHECK only reads. Each returns what to print on stdout. Where the
 * addresses come from is the caller's: the direct plugin opens the store over etcd's JSON gateway
 * (no gRPC client at every pod start; `directAllocator`), the resident daemon hands its own
 * allocator of the conf's cell (services/cni-ipam/src/daemon).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { BerthKeys } from '@berth/shared/keys';
import { GatewayBackend, type KvBackend } from '@berth/shared/store/lite';
import { type Allocation, AllocationNotFoundError, Allocator, handleOf } from '../ipam/allocator.ts';
import { type CommandInput, type NetConf, SUPPORTED_VERSIONS } from './config.ts';
import { CniError } from './errors.ts';

export function versionResult(): string {
  return JSON.stringify({ cniVersion: '1.0.0', supportedVersions: SUPPORTED_VERSIONS });
}

export function resultJson(conf: NetConf, a: Allocation): Record<string, unknown> {
  const legacy = conf.cniVersion !== '1.0.0';
  return {
    cniVersion: conf.cniVersion,
    ips: [{ ...(legacy ? { version: '4' } : {}), address: `${a.ip}/${a.pool.prefix}`, gateway: a.gateway }],
    routes: conf.ipam.routes,
    dns: {},
  };
}

/** What the commands need of an allocator. */
export type IpamAllocator = Pick<Allocator, 'allocate' | 'release' | 'find'>;
export type AllocatorFor = (conf: NetConf) => IpamAllocator;

/** etcd's JSON gateway with the conf's own identity: what the direct plugin writes through. */
export function directBackend(conf: NetConf): GatewayBackend {
  return new GatewayBackend(conf.ipam.etcdEndpoints, {
    username: conf.ipam.etcdUsername,
    password: conf.ipam.etcdPasswordFile ? readPasswordFile(conf.ipam.etcdPasswordFile) : undefined,
  });
}

/** The direct plugin's allocator: over `backend` (by default the conf's own, directBackend). */
export function directAllocator(conf: NetConf, backend: KvBackend = directBackend(conf)): Allocator {
  return new Allocator({ backend, keys: new BerthKeys(conf.ipam.etcdPrefix), cell: conf.ipam.cell });
}

function readPasswordFile(path: string): string {
  try {
    return readFileSync(path, 'utf8').replace(/\r?\n$/, '');
  } catch (err) {
    throw new CniError(
      'invalid-netconf',
      `cannot read ipam.etcdPasswordFile ${path}: ${(err as NodeJS.ErrnoException).code ?? err}`,
    );
  }
}

/** ADD: the container's address (the same one again for the same container and interface). */
export async function addAddress(
  { conf, containerId, ifName, args }: CommandInput,
  allocatorFor: AllocatorFor = directAllocator,
): Promise<string> {
  const allocation = await allocatorFor(conf).allocate({
    network: conf.name,
    containerId,
    ifName,
    node: conf.ipam.node,
    namespace: args.K8S_POD_NAMESPACE,
    pod: args.K8S_POD_NAME,
    pools: conf.ipam.pools,
    gateway: conf.ipam.gateway,
  });
  forgetNeighbour(allocation.ip);
  return JSON.stringify(resultJson(conf, allocation));
}

/** DEL: frees the container's address; nothing allocated is not an error. */
export async function releaseAddress(
  { conf, containerId, ifName }: CommandInput,
  allocatorFor: AllocatorFor = directAllocator,
): Promise<undefined> {
  const freed = await allocatorFor(conf).release(conf.name, containerId, ifName);
  if (freed) forgetNeighbour(freed.ip);
  return undefined;
}

/** CHECK only reads: the container's address must still be allocated to it. */
export async function checkAddress(
  { conf, containerId, ifName }: CommandInput,
  allocatorFor: AllocatorFor = directAllocator,
): Promise<undefined> {
  const found = await allocatorFor(conf).find(handleOf(conf.name, containerId, ifName));
  if (!found) throw new AllocationNotFoundError(`no address is allocated to container ${containerId} (${ifName})`);
  const expected = conf.prevResult?.ips?.map((i) => i.address?.split('/')[0]);
  if (expected && expected.length > 0 && !expected.includes(found.ip)) {
    throw new CniError('allocation-mismatch', `container ${containerId} has ${found.ip}, not ${expected.join(', ')}`);
  }
  return undefined;
}

/**
 * Drops the host's ARP entry for an address that changes hands. Debian's bridge plugin sends no
 * gratuitous ARP, so without this the host (and the lb-agent on it) keeps sending to the previous
 * pod's MAC until the entry ages out: seconds of refused traffic for a pod that is Running.
 * Best effort: the plugin's result never depends on it, and the answer does not wait for it (the
 * pod takes traffic only once it is ready, long after).
 *
 * One `ip -batch -` process takes the addresses on its stdin, one line each: the resident
 * allocator answers hundreds of ADDs a second and must not start a process for each. The direct
 * plugin ends it (closeNeighbours) before it exits, so its flushes are done by then.
 */
export function forgetNeighbour(ip: string): void {
  neighbours ??= startNeighbourFlusher();
  neighbours.stdin?.write(`neigh flush to ${ip}\n`);
}

/** Ends the `ip` process once it has flushed what it was given. */
export function closeNeighbours(): Promise<void> {
  const child = neighbours;
  neighbours = undefined;
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise<void>((resolve) => {
    child.once('close', () => resolve());
    child.stdin?.end();
  });
}

let neighbours: ChildProcess | undefined;

function startNeighbourFlusher(): ChildProcess {
  const child = spawn('ip', ['-4', '-force', '-batch', '-'], {
    stdio: ['pipe', 'ignore', 'ignore'],
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' },
  });
  child.on('error', () => {}); // no `ip`: nothing to flush with (the next address tries again)
  child.stdin?.on('error', () => {});
  child.on('close', () => {
    if (neighbours === child) neighbours = undefined;
  });
  return child;
}
