/**
 * The thin `berth-ipam` plugin (services/cni-ipam/thin, the installed Go binary containerd runs)
 * against the region's real etcd (a key prefix of its own): without a resident allocator it falls
 * back to the direct plugin and counts it; with one (here `cannedDaemon`, a test double of the
 * daemon on a real unix socket) it forwards the CNI variables and stdin and returns the answer.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BerthKeys } from '@berth/shared/keys';
import { GatewayBackend } from '@berth/shared/store/lite';
import { REPO_ROOT, regionCredentials, regionEnv, regionIpamAuth, uniqueId } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CommandRequest, DaemonResponse } from '../src/daemon/protocol.ts';
import { Allocator } from '../src/ipam/allocator.ts';
import { Pools } from '../src/ipam/pools.ts';
import type { FallbackCount } from '../src/plugin/fallback.ts';
import { type PluginRun, runPluginProcess } from './harness.ts';

const THIN = join(REPO_ROOT, '.local/bin/berth-ipam');
const env = regionEnv();
const endpoints = (env.ETCD_ENDPOINTS ?? '').split(',');
const store = new GatewayBackend(endpoints, regionCredentials(env).etcd);
const keys = new BerthKeys(`/t-${uniqueId()}`);
const cell = 'cell-thin';
const node = 'thin-node';
// 198.19.40.0/21 is the CNI tests' range (docs/local-region.md); this pool only lives in etcd.
const POOL = '198.19.47.0/24';
const allocator = new Allocator({ backend: store, keys, cell });

// Sockets of the test doubles, and a socket path where nothing listens: one fresh directory.
const dir = mkdtempSync(join(tmpdir(), 'berth-thin-'));
const servers: Server[] = [];

function netconf(ipam: Record<string, unknown> = {}) {
  return {
    cniVersion: '1.0.0',
    name: 'thinnet',
    ipam: {
      type: 'berth-ipam',
      socket: join(dir, 'no-daemon.sock'),
      etcdEndpoints: endpoints.join(','),
      ...regionIpamAuth(env),
      cell,
      etcdPrefix: keys.prefix,
      node,
      ...ipam,
    },
  };
}

/** The thin plugin, as containerd runs it. */
function thinPlugin(command: string, conf: unknown, extra: Record<string, string> = {}): Promise<PluginRun> {
  return runPluginProcess(
    THIN,
    { CNI_COMMAND: command, CNI_CONTAINERID: 'c1', CNI_NETNS: '/var/run/netns/thin', ...extra },
    conf,
  );
}

/** A unix socket server that runs `onRequest` for each connection; resolves once it listens. */
async function listen(name: string, onRequest: (socket: import('node:net').Socket) => void): Promise<string> {
  const path = join(dir, name);
  const server = createServer(onRequest);
  servers.push(server);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, resolve);
  });
  return path;
}

/**
 * A test double of the resident allocator: it reads one request line, keeps it, and answers the
 * canned response, as the daemon answers every request.
 */
async function cannedDaemon(answer: DaemonResponse): Promise<{ socket: string; received: CommandRequest[] }> {
  const received: CommandRequest[] = [];
  const socket = await listen(`canned-${uniqueId(4)}.sock`, (conn) => {
    let buffered = '';
    conn.on('data', (d) => {
      buffered += d;
      const end = buffered.indexOf('\n');
      if (end < 0) return;
      received.push(JSON.parse(buffered.slice(0, end)) as CommandRequest);
      conn.end(`${JSON.stringify(answer)}\n`);
    });
  });
  return { socket, received };
}

async function fallbacks(): Promise<FallbackCount | undefined> {
  const kv = await store.get(keys.ipamFallbacks(cell, node));
  return kv ? (JSON.parse(kv.value) as FallbackCount) : undefined;
}

beforeAll(async () => {
  expect(existsSync(THIN), 'infra/ipam.sh install (make up / make test) installs berth-ipam').toBe(true);
  await new Pools(store, keys, cell).add(POOL);
});

afterAll(async () => {
  for (const server of servers) await new Promise((resolve) => server.close(resolve));
  rmSync(dir, { recursive: true, force: true });
});

describe('the thin plugin without a resident allocator', () => {
  it('ADD falls back to the direct plugin and gets an address, DEL frees it, and both are counted', async () => {
    const before = (await fallbacks())?.count ?? 0;
    const args = { CNI_CONTAINERID: 'no-daemon-1', CNI_ARGS: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=shop-1' };
    const add = await thinPlugin('ADD', netconf(), args);
    expect(add.code, add.out).toBe(0);
    const result = JSON.parse(add.out);
    expect(result).toMatchObject({ cniVersion: '1.0.0', ips: [{ gateway: '198.19.47.1' }] });
    expect(result.ips[0].address).toMatch(/^198\.19\.47\.\d+\/24$/);
    expect(await allocator.find('thinnet.no-daemon-1.eth0')).toMatchObject({ node, pod: 'shop-1' });

    const del = await thinPlugin('DEL', netconf(), args);
    expect(del).toEqual({ code: 0, out: '' });
    expect(await allocator.find('thinnet.no-daemon-1.eth0')).toBeUndefined();

    const counted = await fallbacks();
    expect(counted).toMatchObject({ count: before + 2, lastReason: 'no-daemon' });
    expect(Date.now() - Date.parse(counted?.lastAt ?? '')).toBeLessThan(60_000);
  });

  it('a bad request gets the spec error JSON and exit 1 through the fallback', async () => {
    const notJson = await thinPlugin('ADD', '{not json');
    expect(notJson.code).toBe(1);
    expect(JSON.parse(notJson.out)).toMatchObject({
      cniVersion: '1.0.0',
      code: 6,
      msg: 'the network configuration on stdin is not JSON',
    });

    const badCell = await thinPlugin('ADD', { ...netconf({ cell: 'Not A Cell' }), cniVersion: '0.4.0' });
    expect(badCell.code).toBe(1);
    expect(JSON.parse(badCell.out)).toMatchObject({
      cniVersion: '0.4.0',
      code: 7,
      msg: expect.stringContaining('ipam.cell'),
    });
  });
});

describe('the thin plugin with a resident allocator', () => {
  it("prints exactly the daemon's stdout, exits with its exit code, and forwards CNI_* and stdin only", async () => {
    const answer = { exitCode: 3, stdout: '{"cniVersion":"1.0.0","code":11,"msg":"canned"}' };
    const daemon = await cannedDaemon(answer);
    const conf = netconf({ socket: daemon.socket });
    const env = {
      CNI_CONTAINERID: 'forwarded-1',
      CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAME=web-1',
      CNI_PATH: '/usr/lib/cni',
      NOT_FOR_THE_DAEMON: 'secret',
    };
    const res = await thinPlugin('ADD', conf, env);
    expect(res).toEqual({ code: 3, out: `${answer.stdout}\n` });
    expect(daemon.received).toEqual([
      {
        v: 1,
        env: {
          CNI_COMMAND: 'ADD',
          CNI_CONTAINERID: 'forwarded-1',
          CNI_NETNS: '/var/run/netns/thin',
          CNI_IFNAME: 'eth0',
          CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAME=web-1',
          CNI_PATH: '/usr/lib/cni',
        },
        stdin: JSON.stringify(conf),
      },
    ]);
  });

  it('an empty answer prints nothing', async () => {
    const daemon = await cannedDaemon({ exitCode: 0, stdout: '' });
    expect(await thinPlugin('DEL', netconf({ socket: daemon.socket }))).toEqual({ code: 0, out: '' });
    expect(daemon.received).toHaveLength(1);
  });

  it('a daemon that closes without a whole answer: the plugin falls back and still returns an address', async () => {
    const hangsUp = await listen('hangs-up.sock', (conn) => conn.once('data', () => conn.end()));
    const halfAnswer = await listen('half-answer.sock', (conn) => conn.once('data', () => conn.end('{"exitCode":0,')));
    for (const [i, socket] of [hangsUp, halfAnswer].entries()) {
      const before = (await fallbacks())?.count ?? 0;
      const add = await thinPlugin('ADD', netconf({ socket }), { CNI_CONTAINERID: `daemon-failed-${i}` });
      expect(add.code, add.out).toBe(0);
      expect(JSON.parse(add.out).ips[0].address).toMatch(/^198\.19\.47\.\d+\/24$/);
      expect(await allocator.find(`thinnet.daemon-failed-${i}.eth0`)).toMatchObject({ node });
      expect(await fallbacks()).toMatchObject({ count: before + 1, lastReason: 'daemon-failed' });
    }
  });
});
