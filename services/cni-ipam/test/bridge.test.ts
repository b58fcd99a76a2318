/**
 * Debian's real `bridge` CNI plugin calling berth-ipam (the installed launcher, as containerd
 * would find it in the CNI bin dir) for two network namespaces this test creates: both get
 * addresses from Berth's pool, reach each other over the bridge, and give them back on DEL.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BerthKeys } from '@berth/shared/keys';
import { GatewayBackend } from '@berth/shared/store/lite';
import { REPO_ROOT, regionCredentials, regionEnv, regionIpamAuth, uniqueId } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Pools } from '../src/ipam/pools.ts';

const env = regionEnv();
const id = uniqueId(6);
const bridge = `bt-${id}`;
const namespaces = [`berth-t-${id}-a`, `berth-t-${id}-b`];
const keys = new BerthKeys(`/t-${id}`);
const cell = 'cell-bridge';
// 198.19.40.0/21 is the CNI tests' range (docs/local-region.md): routed to nothing else here.
const POOL = '198.19.41.0/24';
const CNI_PATH = ['/usr/lib/cni', join(REPO_ROOT, '.local/bin')].join(':');
const conf = JSON.stringify({
  cniVersion: '1.0.0',
  name: `bt-${id}`,
  type: 'bridge',
  bridge,
  isGateway: true,
  ipMasq: false,
  ipam: {
    type: 'berth-ipam',
    etcdEndpoints: env.ETCD_ENDPOINTS,
    ...regionIpamAuth(env),
    cell,
    etcdPrefix: keys.prefix,
    node: 'bridge-node',
  },
});

function bridgePlugin(command: 'ADD' | 'DEL' | 'CHECK', netns: string, prevResult?: unknown) {
  const input = prevResult ? JSON.stringify({ ...JSON.parse(conf), prevResult }) : conf;
  const res = spawnSync('/usr/lib/cni/bridge', [], {
    input,
    env: {
      PATH: process.env.PATH,
      CNI_COMMAND: command,
      CNI_CONTAINERID: netns,
      CNI_NETNS: `/var/run/netns/${netns}`,
      CNI_IFNAME: 'eth0',
      CNI_PATH,
      CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=bridge-test;K8S_POD_NAME=${netns}`,
    },
    encoding: 'utf8',
  });
  return { code: res.status, out: res.stdout, err: res.stderr };
}

beforeAll(async () => {
  expect(
    existsSync(join(REPO_ROOT, '.local/bin/berth-ipam')),
    'infra/ipam.sh install (make up / make test) installs berth-ipam',
  ).toBe(true);
  await new Pools(
    new GatewayBackend((env.ETCD_ENDPOINTS ?? '').split(','), regionCredentials(env).etcd),
    keys,
    cell,
  ).add(POOL);
  for (const ns of namespaces) execFileSync('ip', ['netns', 'add', ns]);
});

afterAll(() => {
  for (const ns of namespaces) spawnSync('ip', ['netns', 'del', ns]);
  spawnSync('ip', ['link', 'del', bridge]);
});

describe('the bridge plugin with berth-ipam', () => {
  it('gives two namespaces pool addresses that reach each other, and frees them on DEL', async () => {
    const results = namespaces.map((ns) => {
      const r = bridgePlugin('ADD', ns);
      expect(r.code, r.out + r.err).toBe(0);
      return JSON.parse(r.out) as { ips: { address: string; gateway: string }[] };
    });
    const [a, b] = results.map((r) => r.ips[0]?.address.split('/')[0] as string);
    expect(a).toMatch(/^198\.19\.41\./);
    expect(b).toMatch(/^198\.19\.41\./);
    expect(a).not.toBe(b);
    // The address is really on eth0 inside the namespace, and the other one answers.
    const shown = execFileSync('ip', ['netns', 'exec', namespaces[0] as string, 'ip', '-4', 'addr', 'show', 'eth0'], {
      encoding: 'utf8',
    });
    expect(shown).toContain(`${a}/24`);
    const ping = spawnSync(
      'ip',
      ['netns', 'exec', namespaces[0] as string, 'ping', '-c', '1', '-W', '2', b as string],
      { encoding: 'utf8' },
    );
    expect(ping.status, ping.stdout + ping.stderr).toBe(0);
    // CHECK through the bridge plugin reaches berth-ipam's CHECK.
    expect(bridgePlugin('CHECK', namespaces[0] as string, results[0]).code).toBe(0);

    const store = new GatewayBackend((env.ETCD_ENDPOINTS ?? '').split(','), regionCredentials(env).etcd);
    expect(await store.range(keys.ipamIps(cell))).toHaveLength(2);
    for (const ns of namespaces) expect(bridgePlugin('DEL', ns).code).toBe(0);
    for (const ns of namespaces) expect(bridgePlugin('DEL', ns).code).toBe(0); // idempotent
    expect(await store.range(keys.ipamIps(cell))).toHaveLength(0);
  });
});
