import { describe, expect, it } from 'vitest';
import { parseCniArgs, parseNetConf, readCommandInput } from './config.ts';
import { CniError } from './errors.ts';
import { CNI_ERROR_CODES, errorJson } from './main.ts';

const good = {
  cniVersion: '1.0.0',
  name: 'berth',
  ipam: {
    type: 'berth-ipam',
    etcdEndpoints: 'http://127.0.0.1:2379, http://127.0.0.2:2379',
    cell: 'cell-a',
    node: 'node0',
  },
};

/** The conf with `ipam` fields replaced (undefined removes one). */
function withIpam(fields: Record<string, unknown>): string {
  return JSON.stringify({ ...good, ipam: { ...good.ipam, ...fields } });
}

/** The CNI error object the plugin would print for this stdin. */
function refusal(stdin: string): { code: number; msg: string; details: string } {
  try {
    parseNetConf(stdin, () => 'host');
  } catch (err) {
    expect(err).toBeInstanceOf(CniError);
    return errorJson(err);
  }
  throw new CniError('invalid-netconf', `expected ${stdin} to be refused`);
}

describe('network conf', () => {
  it('reads a good conf with its defaults: the hostname as node, a default route, the /berth prefix', () => {
    const conf = parseNetConf(withIpam({ node: undefined }), () => 'host-1');
    expect(conf).toEqual({
      cniVersion: '1.0.0',
      name: 'berth',
      ipam: {
        etcdEndpoints: ['http://127.0.0.1:2379', 'http://127.0.0.2:2379'],
        etcdPrefix: '/berth',
        cell: 'cell-a',
        node: 'host-1',
        routes: [{ dst: '0.0.0.0/0' }],
      },
    });
  });

  it('reads pools, gateway, routes, prefix and a previous result as given', () => {
    const conf = parseNetConf(
      JSON.stringify({
        ...JSON.parse(
          withIpam({
            pools: ['198.18.0.0/16'],
            gateway: '198.18.0.1',
            routes: [{ dst: '10.0.0.0/8', gw: '198.18.0.1' }],
            etcdPrefix: '/t-1',
          }),
        ),
        prevResult: { ips: [{ address: '198.18.0.5/16' }] },
      }),
    );
    expect(conf.ipam).toMatchObject({
      pools: ['198.18.0.0/16'],
      gateway: '198.18.0.1',
      routes: [{ dst: '10.0.0.0/8', gw: '198.18.0.1' }],
      etcdPrefix: '/t-1',
      node: 'node0',
    });
    expect(conf.prevResult).toEqual({ ips: [{ address: '198.18.0.5/16' }] });
  });

  it("reads the resident allocator's socket when the conf names one", () => {
    expect(parseNetConf(withIpam({ socket: '/run/berth/ipam.sock' })).ipam.socket).toBe('/run/berth/ipam.sock');
    expect(parseNetConf(JSON.stringify(good)).ipam).not.toHaveProperty('socket');
  });

  it('accepts every CNI version it speaks, with the same conf', () => {
    for (const cniVersion of ['0.3.0', '0.3.1', '0.4.0', '1.0.0']) {
      expect(parseNetConf(JSON.stringify({ ...good, cniVersion })).cniVersion).toBe(cniVersion);
    }
  });

  it('stdin that is not JSON is a decode failure (6) with the parser’s words as details', () => {
    const r = refusal('{not json');
    expect(r).toMatchObject({ code: 6, msg: 'the network configuration on stdin is not JSON' });
    expect(r.details).not.toBe('');
  });

  it('an unsupported CNI version is code 1 and lists the supported ones', () => {
    expect(refusal(JSON.stringify({ ...good, cniVersion: '0.1.0' }))).toMatchObject({
      code: 1,
      msg: 'berth-ipam supports CNI 0.3.0, 0.3.1, 0.4.0, 1.0.0, not "0.1.0"',
    });
  });

  it.each([
    ['a JSON array', '[]', 'the network configuration is not a JSON object'],
    ['no name', JSON.stringify({ ...good, name: '' }), 'the network configuration needs a "name"'],
    [
      'no ipam section',
      JSON.stringify({ ...good, ipam: undefined }),
      'the network configuration has no "ipam" section',
    ],
    ['no etcd endpoints', withIpam({ etcdEndpoints: undefined }), 'ipam.etcdEndpoints must be a comma-separated list'],
    ['an endpoint that is no URL', withIpam({ etcdEndpoints: '127.0.0.1:2379' }), 'ipam.etcdEndpoints must be'],
    ['no cell', withIpam({ cell: undefined }), "ipam.cell must be the cell's name (a DNS label)"],
    ['a cell that is no DNS label', withIpam({ cell: 'Cell A' }), "ipam.cell must be the cell's name"],
    ['pools that are no list', withIpam({ pools: '198.18.0.0/16' }), 'ipam.pools must be a non-empty list of CIDRs'],
    ['an empty pool list', withIpam({ pools: [] }), 'ipam.pools must be a non-empty list of CIDRs'],
    ['a pool that is no CIDR', withIpam({ pools: ['198.18.0.0/16', 'x'] }), 'ipam.pools[1]: not an IPv4 CIDR: x'],
    [
      'a pool off its network address',
      withIpam({ pools: ['198.18.0.1/16'] }),
      'ipam.pools[0]: 198.18.0.1/16 is not a network address',
    ],
    ['a relative socket path', withIpam({ socket: 'run/ipam.sock' }), 'ipam.socket must be the absolute path'],
    ['a socket that is no string', withIpam({ socket: 1 }), 'ipam.socket must be the absolute path'],
    ['a gateway that is no address', withIpam({ gateway: 'gw' }), 'ipam.gateway must be an IPv4 address'],
    [
      'routes that are no list',
      withIpam({ routes: { dst: '0.0.0.0/0' } }),
      'ipam.routes must be a list of {"dst": "<cidr>"}',
    ],
    [
      'a route without dst',
      withIpam({ routes: [{ dst: '0.0.0.0/0' }, { gw: '1.2.3.4' }] }),
      'ipam.routes[1].dst must be an IPv4 CIDR',
    ],
  ])('%s is an invalid conf (7) naming the field', (_what, stdin, message) => {
    const r = refusal(stdin);
    expect(r.code).toBe(7);
    expect(r.msg).toContain(message);
  });
});

describe('CNI environment', () => {
  it('reads the pod from CNI_ARGS, ignoring what is not a pair', () => {
    expect(parseCniArgs('IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;junk')).toEqual({
      IgnoreUnknown: '1',
      K8S_POD_NAMESPACE: 'shop',
      K8S_POD_NAME: 'web-1',
    });
    expect(parseCniArgs(undefined)).toEqual({});
  });

  it('a missing CNI_CONTAINERID or CNI_IFNAME is an invalid environment (4) naming the variable', async () => {
    const stdin = async () => JSON.stringify(good);
    await expect(readCommandInput({ CNI_IFNAME: 'eth0' }, stdin)).rejects.toMatchObject({
      code: 'cni-invalid-environment',
      message: 'CNI_CONTAINERID is not set',
    });
    const err = await readCommandInput({ CNI_CONTAINERID: 'c1' }, stdin).catch((e: unknown) => e);
    expect(errorJson(err)).toMatchObject({ code: 4, msg: 'CNI_IFNAME is not set' });
    expect(
      await readCommandInput({ CNI_CONTAINERID: 'c1', CNI_IFNAME: 'eth0', CNI_ARGS: 'K8S_POD_NAME=p' }, stdin),
    ).toMatchObject({ containerId: 'c1', ifName: 'eth0', args: { K8S_POD_NAME: 'p' } });
  });
});

describe('CNI error codes', () => {
  it('maps every code of the table, and anything else to 999', () => {
    expect(CNI_ERROR_CODES['invalid-netconf']?.code).toBe(7);
    expect(errorJson(new CniError('cni-decode-failure', 'x'))).toMatchObject({ code: 6 });
    expect(errorJson(new TypeError('boom'), '0.4.0')).toEqual({
      cniVersion: '0.4.0',
      code: 999,
      msg: 'boom',
      details: '',
    });
  });
});
