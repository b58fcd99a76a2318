/**
 * The allocator and the plugin against the region's real etcd (a key prefix of their own).
 */
import { join } from 'node:path';
import { REPO_ROOT } from '@berth/shared/testing';
import { describe, expect, it } from 'vitest';
import { Allocator } from '../src/ipam/allocator.ts';
import { contains, ipToInt, parseCidr } from '../src/ipam/cidr.ts';
import { parseBlock } from '../src/ipam/model.ts';
import { ipamWorld, netconf, type PluginRun, runPluginProcess } from './harness.ts';

/** The direct plugin from its source, as containerd would run a plugin. */
function plugin(command: string, conf: unknown, extra: Record<string, string> = {}): Promise<PluginRun> {
  const main = join(REPO_ROOT, 'services/cni-ipam/src/plugin/main.ts');
  return runPluginProcess([process.execPath, main], { CNI_COMMAND: command, CNI_CONTAINERID: 'c1', ...extra }, conf);
}

describe('allocation on real etcd', () => {
  it('200 concurrent ADDs from 4 nodes get 200 distinct addresses, each in a block its node owns', {
    timeout: 120_000,
  }, async () => {
    const w = ipamWorld();
    await w.pools.add('198.19.40.0/22');
    const nodes = ['node-1', 'node-2', 'node-3', 'node-4'];
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        w.allocator.allocate({
          network: 'net',
          containerId: `c${i}`,
          ifName: 'eth0',
          node: nodes[i % 4] as string,
          namespace: 'ns',
          pod: `p${i}`,
        }),
      ),
    );
    expect(new Set(results.map((r) => r.ip)).size).toBe(200);
    const blocks = (await w.store.range(w.keys.ipamBlocks(w.cell))).map(parseBlock);
    for (const r of results) {
      const block = blocks.find((b) => contains(parseCidr(b.cidr), ipToInt(r.ip)));
      expect(block?.node, `${r.ip} is in a block of its node`).toBe(r.record.node);
      expect(Object.values(block?.allocations ?? {})).toContain(r.record.handle);
    }
    // 50 addresses per node need 4 blocks of 16 (14 or 15 usable in a pool's first or last block);
    // ADDs racing on a full node claim one new block between them, so no node holds a fifth.
    for (const node of nodes) expect(blocks.filter((b) => b.node === node).length, node).toBe(4);
  });

  it('a crash between the block claim and the allocation is recovered by the next ADD', async () => {
    const w = ipamWorld();
    await w.pools.add('198.19.44.0/24');
    const crashing = new Allocator({
      backend: w.store,
      keys: w.keys,
      cell: w.cell,
      afterClaim: () => {
        throw new Error('simulated crash after the claim');
      },
    });
    await expect(crashing.allocate({ network: 'net', containerId: 'c1', ifName: 'eth0', node: 'n1' })).rejects.toThrow(
      /simulated crash/,
    );
    const claimed = await w.store.range(w.keys.ipamBlocks(w.cell));
    expect(claimed).toHaveLength(1);
    const again = await w.allocator.allocate({ network: 'net', containerId: 'c1', ifName: 'eth0', node: 'n1' });
    expect(contains(parseCidr(parseBlock(claimed[0] as { key: string; value: string }).cidr), ipToInt(again.ip))).toBe(
      true,
    );
    expect(await w.store.range(w.keys.ipamBlocks(w.cell))).toHaveLength(1); // no second block
  });
});

describe('the plugin process', () => {
  it('ADD answers a CNI result, twice the same; DEL frees, twice is fine; CHECK only reads', async () => {
    const w = ipamWorld();
    await w.pools.add('198.19.45.0/24');
    const args = { CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=shop-v1-abc' };
    const add = await plugin('ADD', netconf(w), args);
    expect(add.code).toBe(0);
    const result = JSON.parse(add.out);
    expect(result).toMatchObject({
      cniVersion: '1.0.0',
      ips: [{ gateway: '198.19.45.1' }],
      routes: [{ dst: '0.0.0.0/0' }],
    });
    expect(result.ips[0].address).toMatch(/^198\.19\.45\.\d+\/24$/);
    expect(JSON.parse((await plugin('ADD', netconf(w), args)).out)).toEqual(result);
    const stored = await w.allocator.find('testnet.c1.eth0');
    expect(stored).toMatchObject({ namespace: 'shop', pod: 'shop-v1-abc', node: 'n1' });
    expect((await plugin('CHECK', { ...netconf(w), prevResult: result })).code).toBe(0);
    expect((await plugin('DEL', netconf(w))).code).toBe(0);
    expect((await plugin('DEL', netconf(w))).code).toBe(0);
    const check = await plugin('CHECK', netconf(w));
    expect(check.code).toBe(1);
    expect(JSON.parse(check.out)).toMatchObject({ code: 999, msg: expect.stringContaining('no address is allocated') });
  });

  it('answers the spec error JSON: exhausted pool, unreachable etcd, bad config, bad version, missing env', async () => {
    const w = ipamWorld();
    await w.pools.add('198.19.46.0/28'); // 13 usable addresses
    for (let i = 0; i < 13; i++)
      await w.allocator.allocate({ network: 'testnet', containerId: `x${i}`, ifName: 'eth0', node: 'n1' });
    const exhausted = await plugin('ADD', netconf(w), { CNI_CONTAINERID: 'one-more' });
    expect(exhausted.code).toBe(1);
    expect(JSON.parse(exhausted.out)).toMatchObject({
      cniVersion: '1.0.0',
      code: 999,
      msg: expect.stringContaining('no free address'),
    });

    const down = await plugin('ADD', netconf(w, { etcdEndpoints: 'http://127.0.0.1:1' }));
    expect(JSON.parse(down.out)).toMatchObject({ code: 11, msg: expect.stringContaining('cannot reach etcd') });

    const bad = await plugin('ADD', netconf(w, { cell: 'Not A Cell' }));
    expect(JSON.parse(bad.out)).toMatchObject({ code: 7, msg: expect.stringContaining('ipam.cell') });
    expect(JSON.parse((await plugin('ADD', '{not json')).out).code).toBe(6);
    expect(JSON.parse((await plugin('ADD', { ...netconf(w), cniVersion: '0.1.0' })).out).code).toBe(1);
    expect(JSON.parse((await plugin('ADD', netconf(w), { CNI_CONTAINERID: '' })).out)).toMatchObject({
      code: 4,
      msg: 'CNI_CONTAINERID is not set',
    });
    const version = await plugin('VERSION', '');
    expect(JSON.parse(version.out).supportedVersions).toContain('1.0.0');
  });
});
