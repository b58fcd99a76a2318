/**
 * The resident allocator (the cni-ipam daemon) and the thin plugin against the region's real etcd
 * (a key prefix of their own): the daemon runs as its own process, the plugin as containerd runs
 * it (a process per call, the conf on stdin).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT, regionAuthEnv, regionEnv, waitFor } from '@berth/shared/testing';
import type { V1Pod } from '@kubernetes/client-node';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { checkCell, problems } from '../src/checker/check.ts';
import { cnictl } from '../src/cli/cnictl.ts';
import type { DaemonResponse, DaemonStats } from '../src/daemon/protocol.ts';
import { parseBlock, parseHandle, parseIp } from '../src/ipam/model.ts';
import {
  type IpamDaemon,
  type IpamWorld,
  ipamWorld,
  netconf,
  type PluginRun,
  runPluginProcess,
  startIpamDaemon,
} from './harness.ts';

const env = regionEnv();
const endpoints = (env.ETCD_ENDPOINTS ?? '').split(',');
/** The thin plugin infra/ipam.sh installs (the binary containerd executes). */
const THIN_PLUGIN = join(REPO_ROOT, '.local/bin/berth-ipam');

const dirs: string[] = [];
const daemons: IpamDaemon[] = [];

async function startDaemon(): Promise<IpamDaemon> {
  const socketDir = mkdtempSync(join(tmpdir(), 'ipamd-'));
  dirs.push(socketDir);
  const daemon = await startIpamDaemon(join(socketDir, 'ipam.sock'));
  daemons.push(daemon);
  return daemon;
}

/** One raw request on the daemon's socket (what the thin plugin sends). */
function ask(socket: string, line: string): Promise<DaemonResponse> {
  return new Promise((resolve, reject) => {
    const conn = createConnection(socket);
    let out = '';
    conn.on('data', (d) => {
      out += d;
    });
    conn.on('end', () => resolve(JSON.parse(out) as DaemonResponse));
    conn.on('error', reject);
    conn.end(`${line}\n`);
  });
}

/** `cnictl --json stats` of the world's cell, asking the daemon on `socket`. */
async function stats(
  w: IpamWorld,
  socket: string,
): Promise<{ daemon: DaemonStats | null; fallbacks: { node: string; count: number }[] }> {
  let out = '';
  const code = await cnictl(['--cell', w.cell, '--json', 'stats', '--socket', socket], {
    out: (s) => {
      out += s;
    },
    err: () => {},
    env: { ...regionAuthEnv(env, ['etcd']), ETCD_ENDPOINTS: endpoints.join(','), ETCD_PREFIX: w.keys.prefix },
  });
  expect(code).toBe(0);
  return JSON.parse(out);
}

/** The thin plugin as containerd runs it. */
function plugin(command: string, conf: unknown, containerId: string, pod = containerId): Promise<PluginRun> {
  const args = `IgnoreUnknown=1;K8S_POD_NAMESPACE=t;K8S_POD_NAME=${pod}`;
  return runPluginProcess(THIN_PLUGIN, { CNI_COMMAND: command, CNI_CONTAINERID: containerId, CNI_ARGS: args }, conf);
}

function addressOf(run: PluginRun): string {
  expect(run.code, run.out).toBe(0);
  return (JSON.parse(run.out) as { ips: { address: string }[] }).ips[0]?.address.split('/')[0] as string;
}

/** Every handle, address and block allocation of the cell agree with each other. */
async function expectConsistent(w: IpamWorld): Promise<void> {
  const ips = (await w.store.range(w.keys.ipamIps(w.cell))).map(parseIp);
  const handles = await w.store.range(w.keys.ipamHandles(w.cell));
  const blocks = (await w.store.range(w.keys.ipamBlocks(w.cell))).map(parseBlock);
  const inBlocks = blocks.flatMap((b) => Object.values(b.allocations));
  expect(handles.length).toBe(ips.length);
  expect(inBlocks.length).toBe(ips.length);
  expect(new Set(inBlocks)).toEqual(new Set(ips.map((i) => i.handle)));
  for (const h of handles) expect(ips.some((i) => i.ip === parseHandle(h).ip)).toBe(true);
}

/** The pods the runtime believes it started, each with the address its ADD returned. */
function runningPods(byPod: Map<string, string>): V1Pod[] {
  return [...byPod].map(([pod, ip]) => ({
    metadata: { namespace: 't', name: pod },
    spec: { nodeName: 'n1', containers: [] },
    status: { phase: 'Running', podIP: ip, podIPs: [{ ip }] },
  }));
}

afterEach(async () => {
  await Promise.all(daemons.splice(0).map((d) => d.stop()));
});

afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

describe('the resident allocator', () => {
  it('200 concurrent ADDs through the thin plugin from 4 nodes get 200 distinct addresses, in batches', {
    timeout: 180_000,
  }, async () => {
    const w = ipamWorld();
    await w.pools.add('198.19.40.0/22');
    const daemon = await startDaemon();
    const nodes = ['node-1', 'node-2', 'node-3', 'node-4'];
    const runs = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        plugin('ADD', netconf(w, { socket: daemon.socket, node: nodes[i % 4] as string }), `c${i}`),
      ),
    );
    const addresses = runs.map(addressOf);
    expect(new Set(addresses).size).toBe(200);
    // Each address sits in a block its own node claimed (no node took another's).
    const ips = (await w.store.range(w.keys.ipamIps(w.cell))).map(parseIp);
    const blocks = new Map(
      (await w.store.range(w.keys.ipamBlocks(w.cell))).map((kv) => [parseBlock(kv).cidr, parseBlock(kv)]),
    );
    for (const ip of ips) expect(blocks.get(ip.block)?.node).toBe(ip.node);
    await expectConsistent(w);

    // The daemon answered them (no fallback) and put more than one in a transaction.
    const counted = await stats(w, daemon.socket);
    expect(counted.daemon?.commands.ADD).toMatchObject({ requests: 200, failures: 0 });
    expect(counted.daemon?.batches.largest).toBeGreaterThan(1);
    expect(counted.fallbacks).toEqual([]);

    // ADD again is the same address; DEL frees every one.
    expect(addressOf(await plugin('ADD', netconf(w, { socket: daemon.socket, node: 'node-2' }), 'c1'))).toBe(
      addresses[1],
    );
    const dels = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        plugin('DEL', netconf(w, { socket: daemon.socket, node: nodes[i % 4] as string }), `c${i}`),
      ),
    );
    for (const d of dels) expect(d.code, d.out).toBe(0);
    expect(await w.store.range(w.keys.ipamIps(w.cell))).toEqual([]);
    await expectConsistent(w);
  });

  it('killed with SIGKILL mid-ADD: every ADD still ends with an address, and the check finds nothing after the retry', {
    timeout: 180_000,
  }, async () => {
    const w = ipamWorld();
    await w.pools.add('198.19.40.0/22');
    const daemon = await startDaemon();
    const conf = netconf(w, { socket: daemon.socket, node: 'n1' });
    const adds = Array.from({ length: 40 }, (_, i) => plugin('ADD', conf, `k${i}`));
    // Kill it once it has written some and, with 40 asked at once, not all of them.
    await waitFor(async () => (await w.store.range(w.keys.ipamIps(w.cell), { keysOnly: true })).length > 0, {
      timeoutMs: 60_000,
      intervalMs: 5,
    });
    daemon.child.kill('SIGKILL');
    const first = (await Promise.all(adds)).map(addressOf);
    expect(new Set(first).size).toBe(40);
    // The runtime retries what it does not know finished: the same address again, through the
    // direct plugin now that the socket is dead.
    const retried = (await Promise.all(first.map((_, i) => plugin('ADD', conf, `k${i}`)))).map(addressOf);
    expect(retried).toEqual(first);
    const byPod = new Map(first.map((ip, i) => [`k${i}`, ip]));
    const report = await checkCell({
      backend: w.store,
      keys: w.keys,
      cell: w.cell,
      pods: async () => runningPods(byPod),
    });
    expect(report.allocations).toBe(40);
    expect(problems(report), JSON.stringify(report)).toBe(0);
    await expectConsistent(w);
    // Some of them fell back, and cnictl stats shows them counted for the node, and no daemon.
    const counted = await stats(w, daemon.socket);
    expect(counted.daemon).toBeNull();
    expect(counted.fallbacks).toEqual([expect.objectContaining({ node: 'n1', count: expect.any(Number) })]);
    expect(counted.fallbacks[0]?.count).toBeGreaterThan(0);
  });

  it('a request it cannot read gets the spec’s error JSON; a bad conf the same error as the direct plugin', {
    timeout: 60_000,
  }, async () => {
    const w = ipamWorld();
    const daemon = await startDaemon();
    const garbled = await ask(daemon.socket, 'not json');
    expect(garbled.exitCode).toBe(1);
    expect(JSON.parse(garbled.stdout)).toMatchObject({ cniVersion: '1.0.0', code: 6 });
    const oldProtocol = await ask(daemon.socket, '{"v":0,"env":{},"stdin":""}');
    expect(JSON.parse(oldProtocol.stdout).msg).toMatch(/protocol version 1/);

    const badCell = { ...netconf(w, { socket: daemon.socket, node: 'n1' }) };
    badCell.ipam = { ...badCell.ipam, cell: 'Not A Label' };
    const run = await plugin('ADD', badCell, 'x1');
    expect(run.code).toBe(1);
    expect(JSON.parse(run.out)).toMatchObject({
      cniVersion: '1.0.0',
      code: 7,
      msg: expect.stringMatching(/ipam\.cell/),
    });
    const stats = JSON.parse((await ask(daemon.socket, '{"v":1,"stats":true}')).stdout) as DaemonStats;
    expect(stats.commands.ADD).toMatchObject({ requests: 1, failures: 1 });
  });

  it('another node’s claim made behind its back is seen: it never hands out that block’s addresses', {
    timeout: 60_000,
  }, async () => {
    const w = ipamWorld();
    // A /27 is two blocks of 16: the daemon's n1 takes one, then node-x the other through the
    // direct plugin (no daemon on its socket).
    await w.pools.add('198.19.41.0/27');
    const daemon = await startDaemon();
    const viaDaemon = addressOf(await plugin('ADD', netconf(w, { socket: daemon.socket, node: 'n1' }), 'd0'));
    const noDaemon = mkdtempSync(join(tmpdir(), 'ipamd-none-'));
    dirs.push(noDaemon);
    const direct = addressOf(
      await plugin('ADD', netconf(w, { socket: join(noDaemon, 'ipam.sock'), node: 'node-x' }), 'x0'),
    );
    // n1's first block runs out: the other block is node-x's now, whatever the daemon's copy
    // said a moment ago, so n1 borrows from it and never hands out what node-x holds.
    const more = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        plugin('ADD', netconf(w, { socket: daemon.socket, node: 'n1' }), `d${i + 1}`),
      ),
    );
    const all = [viaDaemon, direct, ...more.map(addressOf)];
    expect(new Set(all).size).toBe(all.length);
    await expectConsistent(w);
  });

  it('stops on SIGTERM and removes its socket', { timeout: 60_000 }, async () => {
    const daemon = await startDaemon();
    await daemon.stop();
    expect(daemon.child.exitCode).toBe(0);
    await expect(ask(daemon.socket, '{"v":1,"stats":true}')).rejects.toThrow(/ENOENT/);
  });
});
