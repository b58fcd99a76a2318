/**
 * `berth-ipam`: a CNI IPAM plugin (spec 1.0.0: ADD, DEL, CHECK, VERSION). `main` only dispatches
 * on CNI_COMMAND; each command parses stdin and the environment, opens the store, does its work
 * and prints its result. Errors are the spec's `{cniVersion, code, msg, details}` on stdout, exit 1.
 *
 * Network conf: "ipam": {"type": "berth-ipam", "etcdEndpoints": "http://127.0.0.1:2379",
 *   "cell": "cell-a", "pools": ["198.18.0.0/16"], "node": "<default: hostname>",
 *   "gateway": "<default: the pool's first address>", "routes": [{"dst": "0.0.0.0/0"}],
 *   "etcdPrefix": "<default /berth>"}
 */
import { spawnSync } from 'node:child_process';
import { hostname } from 'node:os';
import { BerthKeys } from '@berth/shared/keys';
import { type Allocation, AllocationNotFoundError, Allocator, PoolExhaustedError } from '../ipam/allocator.ts';
import { parseCidr } from '../ipam/cidr.ts';
import { EtcdIpStore, StoreUnavailableError } from '../ipam/store.ts';

export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0'];

/** CNI spec error codes. */
export const CNI_ERRORS = {
  incompatibleVersion: 1,
  unsupportedField: 2,
  unknownContainer: 3,
  invalidEnvironment: 4,
  ioFailure: 5,
  decodeFailure: 6,
  invalidConfig: 7,
  tryAgainLater: 11,
  generic: 999,
} as const;

export class CniError extends Error {
  readonly code: number;
  readonly details: string;
  constructor(code: number, msg: string, details = '') {
    super(msg);
    this.code = code;
    this.details = details;
  }
}

export type Route = { dst: string; gw?: string };

export type IpamConfig = {
  etcdEndpoints: string[];
  etcdPrefix: string;
  cell: string;
  pools?: string[];
  node: string;
  gateway?: string;
  routes: Route[];
};

export type NetConf = {
  cniVersion: string;
  name: string;
  ipam: IpamConfig;
  prevResult?: { ips?: { address?: string }[] };
};

function fail(code: number, msg: string, details = ''): never {
  throw new CniError(code, msg, details);
}

/** Validates the network configuration; each problem is a code-7 error naming the field. */
export function parseNetConf(stdin: string): NetConf {
  let raw: unknown;
  try {
    raw = JSON.parse(stdin);
  } catch (err) {
    fail(CNI_ERRORS.decodeFailure, 'the network configuration on stdin is not JSON', (err as Error).message);
  }
  if (typeof raw !== 'object' || raw === null)
    fail(CNI_ERRORS.invalidConfig, 'the network configuration is not a JSON object');
  const conf = raw as Record<string, unknown>;
  const cniVersion = typeof conf.cniVersion === 'string' ? conf.cniVersion : '';
  if (!SUPPORTED_VERSIONS.includes(cniVersion)) {
    fail(
      CNI_ERRORS.incompatibleVersion,
      `berth-ipam supports CNI ${SUPPORTED_VERSIONS.join(', ')}, not "${cniVersion}"`,
    );
  }
  if (typeof conf.name !== 'string' || !conf.name)
    fail(CNI_ERRORS.invalidConfig, 'the network configuration needs a "name"');
  const ipam = conf.ipam as Record<string, unknown> | undefined;
  if (typeof ipam !== 'object' || ipam === null)
    fail(CNI_ERRORS.invalidConfig, 'the network configuration has no "ipam" section');
  const endpoints =
    typeof ipam.etcdEndpoints === 'string'
      ? ipam.etcdEndpoints
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean)
      : [];
  if (endpoints.length === 0 || !endpoints.every((e) => /^https?:\/\/[^\s]+$/.test(e))) {
    fail(
      CNI_ERRORS.invalidConfig,
      'ipam.etcdEndpoints must be a comma-separated list of http(s) URLs, e.g. "http://127.0.0.1:2379"',
    );
  }
  if (typeof ipam.cell !== 'string' || !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(ipam.cell)) {
    fail(CNI_ERRORS.invalidConfig, 'ipam.cell must be the cell\'s name (a DNS label), e.g. "cell-a"');
  }
  let pools: string[] | undefined;
  if (ipam.pools !== undefined) {
    if (!Array.isArray(ipam.pools) || ipam.pools.length === 0)
      fail(CNI_ERRORS.invalidConfig, 'ipam.pools must be a non-empty list of CIDRs');
    pools = [];
    for (const [i, p] of ipam.pools.entries()) {
      try {
        pools.push(parseCidr(String(p)).text);
      } catch (err) {
        fail(CNI_ERRORS.invalidConfig, `ipam.pools[${i}]: ${(err as Error).message}`);
      }
    }
  }
  if (
    ipam.gateway !== undefined &&
    (typeof ipam.gateway !== 'string' || !/^\d{1,3}(\.\d{1,3}){3}$/.test(ipam.gateway))
  ) {
    fail(CNI_ERRORS.invalidConfig, 'ipam.gateway must be an IPv4 address');
  }
  let routes: Route[] = [{ dst: '0.0.0.0/0' }];
  if (ipam.routes !== undefined) {
    if (!Array.isArray(ipam.routes)) fail(CNI_ERRORS.invalidConfig, 'ipam.routes must be a list of {"dst": "<cidr>"}');
    routes = ipam.routes.map((r, i) => {
      const route = r as Record<string, unknown>;
      if (typeof route?.dst !== 'string' || !/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(route.dst)) {
        fail(CNI_ERRORS.invalidConfig, `ipam.routes[${i}].dst must be an IPv4 CIDR`);
      }
      return typeof route.gw === 'string' ? { dst: route.dst, gw: route.gw } : { dst: route.dst };
    });
  }
  const etcdPrefix = typeof ipam.etcdPrefix === 'string' ? ipam.etcdPrefix : '/berth';
  return {
    cniVersion,
    name: conf.name,
    ipam: {
      etcdEndpoints: endpoints,
      etcdPrefix,
      cell: ipam.cell,
      ...(pools ? { pools } : {}),
      node: typeof ipam.node === 'string' && ipam.node ? ipam.node : hostname(),
      ...(typeof ipam.gateway === 'string' ? { gateway: ipam.gateway } : {}),
      routes,
    },
    ...(typeof conf.prevResult === 'object' && conf.prevResult !== null
      ? { prevResult: conf.prevResult as NetConf['prevResult'] }
      : {}),
  };
}

/** `IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod` → a map. */
export function parseCniArgs(text: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of (text ?? '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0) out[part.slice(0, i)] = part.slice(i + 1);
  }
  return out;
}

function requireEnv(env: NodeJS.ProcessEnv, name: string): string {
  const v = env[name];
  if (!v) fail(CNI_ERRORS.invalidEnvironment, `${name} is not set`);
  return v;
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

function allocatorFor(conf: NetConf): Allocator {
  return new Allocator({
    store: new EtcdIpStore(conf.ipam.etcdEndpoints),
    keys: new BerthKeys(conf.ipam.etcdPrefix),
    cell: conf.ipam.cell,
  });
}

/** Runs one CNI command; returns what to print on stdout (undefined: nothing). */
export async function runCommand(env: NodeJS.ProcessEnv, stdin: () => Promise<string>): Promise<string | undefined> {
  const command = requireEnv(env, 'CNI_COMMAND');
  if (command === 'VERSION') return JSON.stringify({ cniVersion: '1.0.0', supportedVersions: SUPPORTED_VERSIONS });
  if (!['ADD', 'DEL', 'CHECK'].includes(command)) {
    fail(CNI_ERRORS.invalidEnvironment, `CNI_COMMAND ${command} is not supported (ADD, DEL, CHECK, VERSION are)`);
  }
  const conf = parseNetConf(await stdin());
  const containerId = requireEnv(env, 'CNI_CONTAINERID');
  const ifName = requireEnv(env, 'CNI_IFNAME');
  const args = parseCniArgs(env.CNI_ARGS);
  const allocator = allocatorFor(conf);
  switch (command) {
    case 'ADD': {
      const allocation = await allocator.allocate({
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
    case 'DEL': {
      const freed = await allocator.release(conf.name, containerId, ifName);
      if (freed) forgetNeighbour(freed.ip);
      return undefined;
    }
    default: {
      // CHECK only reads: the container's address must still be allocated to it.
      const found = await allocator.find(`${conf.name}.${containerId}.${ifName}`);
      if (!found) throw new AllocationNotFoundError(`no address is allocated to container ${containerId} (${ifName})`);
      const expected = conf.prevResult?.ips?.map((i) => i.address?.split('/')[0]);
      if (expected && expected.length > 0 && !expected.includes(found.ip)) {
        fail(CNI_ERRORS.generic, `container ${containerId} has ${found.ip}, not ${expected.join(', ')}`);
      }
      return undefined;
    }
  }
}

/**
 * Drops the host's ARP entry for an address that changes hands. Debian's bridge plugin sends no
 * gratuitous ARP, so without this the host (and the lb-agent on it) keeps sending to the previous
 * pod's MAC until the entry ages out: seconds of refused traffic for a pod that is Running.
 * Best effort: the plugin's result never depends on it.
 */
function forgetNeighbour(ip: string): void {
  spawnSync('ip', ['-4', 'neigh', 'flush', 'to', ip], {
    stdio: 'ignore',
    timeout: 2000,
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' },
  });
}

/** Maps any error to the CNI error object. */
export function errorJson(
  err: unknown,
  cniVersion = '1.0.0',
): { cniVersion: string; code: number; msg: string; details: string } {
  if (err instanceof CniError) return { cniVersion, code: err.code, msg: err.message, details: err.details };
  if (err instanceof StoreUnavailableError)
    return { cniVersion, code: CNI_ERRORS.tryAgainLater, msg: err.message, details: 'etcd unreachable' };
  if (err instanceof PoolExhaustedError)
    return { cniVersion, code: CNI_ERRORS.generic, msg: err.message, details: 'pool exhausted' };
  if (err instanceof AllocationNotFoundError)
    return { cniVersion, code: CNI_ERRORS.generic, msg: err.message, details: 'no allocation' };
  return { cniVersion, code: CNI_ERRORS.generic, msg: (err as Error)?.message ?? String(err), details: '' };
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

if (import.meta.main) {
  let version = '1.0.0';
  try {
    const out = await runCommand(process.env, async () => {
      const text = await readStdin();
      try {
        version = (JSON.parse(text) as { cniVersion?: string }).cniVersion ?? version;
      } catch {
        // reported by parseNetConf
      }
      return text;
    });
    if (out !== undefined) process.stdout.write(`${out}\n`);
  } catch (err) {
    process.stdout.write(`${JSON.stringify(errorJson(err, version))}\n`);
    process.exitCode = 1;
  }
}
