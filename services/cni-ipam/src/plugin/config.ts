/**
 * What a CNI command is given: the network configuration on stdin and the CNI_* variables. Each
 * problem is a CniError naming the field, e.g. `ipam.cell must be the cell's name`.
 *
 * Network conf: "ipam": {"type": "berth-ipam", "socket": "<default: /run/berth/ipam.sock>",
 *   "etcdEndpoints": "http://127.0.0.1:2379",
 *   "cell": "cell-a", "pools": ["198.18.0.0/16"], "node": "<default: hostname>",
 *   "gateway": "<default: the pool's first address>", "routes": [{"dst": "0.0.0.0/0"}],
 *   "etcdPrefix": "<default /berth>", "etcdUsername": "ipam-cell-a",
 *   "etcdPasswordFile": "/path/to/etcd-ipam-cell-a.password"}
 * With etcd's authentication on, the plugin is the cell's IPAM identity: its cell's IPAM keys
 * only (docs/security.md). The password is read from the file, never from the conf. `socket` is
 * where the node's resident allocator listens: the thin plugin (services/cni-ipam/thin) asks it
 * and runs this plugin only when it does not answer.
 */
import { hostname } from 'node:os';
import { parseCidr } from '../ipam/cidr.ts';
import { CniError, type CniFailure } from './errors.ts';

export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0'];

export type Route = { dst: string; gw?: string };

export type IpamConfig = {
  /** The resident allocator's unix socket, when the conf names one (daemon/protocol.ts DEFAULT_SOCKET otherwise). */
  socket?: string;
  etcdEndpoints: string[];
  etcdPrefix: string;
  etcdUsername?: string;
  etcdPasswordFile?: string;
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

function fail(code: CniFailure, msg: string, details = ''): never {
  throw new CniError(code, msg, details);
}

/** Validates the network configuration; each problem is an `invalid-netconf` error naming the field. */
export function parseNetConf(stdin: string, defaultNode: () => string = hostname): NetConf {
  let raw: unknown;
  try {
    raw = JSON.parse(stdin);
  } catch (err) {
    fail('cni-decode-failure', 'the network configuration on stdin is not JSON', (err as Error).message);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    fail('invalid-netconf', 'the network configuration is not a JSON object');
  const conf = raw as Record<string, unknown>;
  const cniVersion = typeof conf.cniVersion === 'string' ? conf.cniVersion : '';
  if (!SUPPORTED_VERSIONS.includes(cniVersion)) {
    fail('cni-incompatible-version', `berth-ipam supports CNI ${SUPPORTED_VERSIONS.join(', ')}, not "${cniVersion}"`);
  }
  if (typeof conf.name !== 'string' || !conf.name) fail('invalid-netconf', 'the network configuration needs a "name"');
  const ipam = conf.ipam as Record<string, unknown> | undefined;
  if (typeof ipam !== 'object' || ipam === null || Array.isArray(ipam))
    fail('invalid-netconf', 'the network configuration has no "ipam" section');
  if (ipam.socket !== undefined && (typeof ipam.socket !== 'string' || !ipam.socket.startsWith('/'))) {
    fail('invalid-netconf', "ipam.socket must be the absolute path of the resident allocator's unix socket");
  }
  const endpoints =
    typeof ipam.etcdEndpoints === 'string'
      ? ipam.etcdEndpoints
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean)
      : [];
  if (endpoints.length === 0 || !endpoints.every((e) => /^https?:\/\/[^\s]+$/.test(e))) {
    fail(
      'invalid-netconf',
      'ipam.etcdEndpoints must be a comma-separated list of http(s) URLs, e.g. "http://127.0.0.1:2379"',
    );
  }
  if (typeof ipam.cell !== 'string' || !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(ipam.cell)) {
    fail('invalid-netconf', 'ipam.cell must be the cell\'s name (a DNS label), e.g. "cell-a"');
  }
  let pools: string[] | undefined;
  if (ipam.pools !== undefined) {
    if (!Array.isArray(ipam.pools) || ipam.pools.length === 0)
      fail('invalid-netconf', 'ipam.pools must be a non-empty list of CIDRs');
    pools = [];
    for (const [i, p] of ipam.pools.entries()) {
      try {
        pools.push(parseCidr(String(p)).text);
      } catch (err) {
        fail('invalid-netconf', `ipam.pools[${i}]: ${(err as Error).message}`);
      }
    }
  }
  if (
    ipam.gateway !== undefined &&
    (typeof ipam.gateway !== 'string' || !/^\d{1,3}(\.\d{1,3}){3}$/.test(ipam.gateway))
  ) {
    fail('invalid-netconf', 'ipam.gateway must be an IPv4 address');
  }
  let routes: Route[] = [{ dst: '0.0.0.0/0' }];
  if (ipam.routes !== undefined) {
    if (!Array.isArray(ipam.routes)) fail('invalid-netconf', 'ipam.routes must be a list of {"dst": "<cidr>"}');
    routes = ipam.routes.map((r, i) => {
      const route = r as Record<string, unknown>;
      if (typeof route?.dst !== 'string' || !/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(route.dst)) {
        fail('invalid-netconf', `ipam.routes[${i}].dst must be an IPv4 CIDR`);
      }
      return typeof route.gw === 'string' ? { dst: route.dst, gw: route.gw } : { dst: route.dst };
    });
  }
  const etcdPrefix = typeof ipam.etcdPrefix === 'string' ? ipam.etcdPrefix : '/berth';
  if (ipam.etcdUsername !== undefined && (typeof ipam.etcdUsername !== 'string' || !ipam.etcdUsername)) {
    fail('invalid-netconf', 'ipam.etcdUsername must be an etcd user name');
  }
  if (ipam.etcdUsername !== undefined && (typeof ipam.etcdPasswordFile !== 'string' || !ipam.etcdPasswordFile)) {
    fail('invalid-netconf', "ipam.etcdPasswordFile must name the file holding ipam.etcdUsername's password");
  }
  return {
    cniVersion,
    name: conf.name,
    ipam: {
      ...(typeof ipam.socket === 'string' ? { socket: ipam.socket } : {}),
      etcdEndpoints: endpoints,
      etcdPrefix,
      ...(typeof ipam.etcdUsername === 'string'
        ? { etcdUsername: ipam.etcdUsername, etcdPasswordFile: ipam.etcdPasswordFile as string }
        : {}),
      cell: ipam.cell,
      ...(pools ? { pools } : {}),
      node: typeof ipam.node === 'string' && ipam.node ? ipam.node : defaultNode(),
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

export function requireEnv(env: NodeJS.ProcessEnv, name: string): string {
  const v = env[name];
  if (!v) fail('cni-invalid-environment', `${name} is not set`);
  return v;
}

/** What ADD, DEL and CHECK act on: the network conf, the container's interface and its pod. */
export type CommandInput = {
  conf: NetConf;
  containerId: string;
  ifName: string;
  /** From CNI_ARGS: K8S_POD_NAMESPACE, K8S_POD_NAME. */
  args: Record<string, string>;
};

/** Reads stdin and the CNI_* variables, in the order a runtime's mistake is most useful reported. */
export async function readCommandInput(env: NodeJS.ProcessEnv, stdin: () => Promise<string>): Promise<CommandInput> {
  const conf = parseNetConf(await stdin());
  return {
    conf,
    containerId: requireEnv(env, 'CNI_CONTAINERID'),
    ifName: requireEnv(env, 'CNI_IFNAME'),
    args: parseCniArgs(env.CNI_ARGS),
  };
}
