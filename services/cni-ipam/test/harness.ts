/**
 * What the IPAM suites (and test/bench/ipam.ts) share: a world of their own in the region's etcd
 * (a key prefix, a cell), its network conf, a plugin run as containerd runs it (a process per
 * call, the conf on stdin, CNI_* in its environment), and the resident allocator as its own process.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { BerthKeys } from '@berth/shared/keys';
import { GatewayBackend } from '@berth/shared/store/lite';
import {
  exited,
  freePort,
  REPO_ROOT,
  regionAuthEnv,
  regionCredentials,
  regionEnv,
  regionIpamAuth,
  uniqueId,
  waitFor,
} from '@berth/shared/testing';
import { Allocator } from '../src/ipam/allocator.ts';
import { Pools } from '../src/ipam/pools.ts';

const env = regionEnv();
const endpoints = (env.ETCD_ENDPOINTS ?? '').split(',');

/** A key prefix of the test's own, one cell in it, and the region's etcd through the plugin's transport. */
export function ipamWorld(cell = 'cell-t') {
  const keys = new BerthKeys(`/t-${uniqueId()}`);
  const store = new GatewayBackend(endpoints, regionCredentials(env).etcd);
  return {
    keys,
    store,
    cell,
    pools: new Pools(store, keys, cell),
    allocator: new Allocator({ backend: store, keys, cell }),
  };
}
export type IpamWorld = ReturnType<typeof ipamWorld>;

/** The world's network conf for berth-ipam (node n1, the tests identity), `ipam` over its IPAM section. */
export function netconf(w: IpamWorld, ipam: Record<string, unknown> = {}) {
  return {
    cniVersion: '1.0.0',
    name: 'testnet',
    ipam: {
      type: 'berth-ipam',
      etcdEndpoints: endpoints.join(','),
      ...regionIpamAuth(env),
      cell: w.cell,
      etcdPrefix: w.keys.prefix,
      node: 'n1',
      ...ipam,
    },
  };
}

export type IpamDaemon = { child: ChildProcess; socket: string; port: number; stop(): Promise<void> };

/** The cni-ipam service from its source, as a node's resident allocator on `socket` (no checker). */
export async function startIpamDaemon(socket: string): Promise<IpamDaemon> {
  const port = await freePort();
  const child = spawn(process.execPath, [join(REPO_ROOT, 'services/cni-ipam/src/index.ts')], {
    env: {
      PATH: process.env.PATH,
      ETCD_ENDPOINTS: endpoints.join(','),
      ...regionAuthEnv(env, ['etcd']),
      HTTP_ADDR: `127.0.0.1:${port}`,
      IPAM_SOCKET: socket,
      IPAM_CHECKER: 'false',
      LOG_LEVEL: 'warn',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  await waitFor(async () => (await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined))?.ok, {
    timeoutMs: 30_000,
    message: 'the IPAM daemon did not become ready',
  });
  return {
    child,
    socket,
    port,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      await exited(child);
    },
  };
}

export type PluginRun = { code: number; out: string };

/**
 * `command` is the plugin's binary, or a program and its arguments (`[node, main.ts]`). The
 * environment is PATH, `CNI_IFNAME=eth0`, `CNI_NETNS=/x` and `env` over them; stderr goes to the
 * test's. Resolves when the process has exited and its stdout is read to the end.
 */
export function runPluginProcess(
  command: string | readonly string[],
  env: Record<string, string>,
  conf: unknown,
): Promise<PluginRun> {
  const [bin, ...args] = typeof command === 'string' ? [command] : command;
  return new Promise((resolve, reject) => {
    const child = spawn(bin as string, args, {
      env: { PATH: process.env.PATH, CNI_IFNAME: 'eth0', CNI_NETNS: '/x', ...env },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
    });
    child.on('error', reject);
    // 'close', not 'exit': under load the answer can still be in the pipe when the process exits.
    child.on('close', (code) => resolve({ code: code ?? -1, out }));
    child.stdin.on('error', () => {}); // a plugin that exits before reading all of stdin
    child.stdin.end(typeof conf === 'string' ? conf : JSON.stringify(conf));
  });
}
