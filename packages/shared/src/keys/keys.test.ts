import { describe, expect, it } from 'vitest';
import { BerthKeys } from './index.ts';

describe('keys that round-trip', () => {
  const keys = new BerthKeys('/berth');

  it('every leaf key parses back into the parts it was built from', () => {
    expect(keys.parse('version', keys.version('shop', 'v3'))).toEqual({ app: 'shop', version: 'v3' });
    expect(keys.parse('member', keys.member('shop', 'alice'))).toEqual({ app: 'shop', user: 'alice' });
    expect(keys.parse('placement', keys.placement('shop', 'v1'))).toEqual({ app: 'shop', version: 'v1' });
    expect(keys.parse('status', keys.status('shop', 'v1', 'cell-a'))).toEqual({
      app: 'shop',
      version: 'v1',
      cell: 'cell-a',
    });
    expect(keys.parse('cell', keys.cell('local', 'cell-a'))).toEqual({ region: 'local', cell: 'cell-a' });
    expect(keys.parse('ipamBlock', keys.ipamBlock('cell-a', '198.18.0.16/28'))).toEqual({
      cell: 'cell-a',
      cidr: '198.18.0.16/28',
    });
    expect(keys.parse('ipamAffinity', keys.ipamAffinity('cell-a', 'n1', '198.18.0.0/28'))).toEqual({
      cell: 'cell-a',
      node: 'n1',
      cidr: '198.18.0.0/28',
    });
    expect(keys.parse('slbDomain', keys.slbDomain('public', 'shop.example.test'))).toEqual({
      group: 'public',
      domain: 'shop.example.test',
    });
    expect(keys.slbDomain('public', 'shop.example.test')).toBe('/berth/slb/public/domains/shop.example.test');
    expect(keys.parse('slbTraffic', keys.slbTraffic('public', 'shop'))).toEqual({ group: 'public', app: 'shop' });
    expect(keys.parse('lbAgent', keys.lbAgent('public', 'lb-1.example.test'))).toEqual({
      group: 'public',
      host: 'lb-1.example.test',
    });
    expect(keys.parse('domainClaim', keys.domainClaim('shop.example.test'))).toEqual({ domain: 'shop.example.test' });
    expect(keys.parse('traffic', keys.traffic('shop'))).toEqual({ app: 'shop' });
    expect(keys.parse('imageTag', keys.imageTag('team', 'shop', 'v1.2'))).toEqual({
      group: 'team',
      repo: 'shop',
      tag: 'v1.2',
    });
    expect(keys.imageTag('team', 'shop', 'v1').startsWith(keys.imageTags('team', 'shop'))).toBe(true);
    // A tag's record is no member of its group.
    expect(keys.parse('imageGroupMember', keys.imageTag('team', 'shop', 'v1'))).toBeUndefined();
    for (const [kind, template] of Object.entries(keys.templates)) {
      const parts = template.parse(
        template.format({
          app: 'a',
          version: 'v1',
          user: 'u',
          cell: 'c',
          region: 'r',
          cidr: '10.0.0.0/24',
          node: 'n',
          ip: '10.0.0.1',
          handle: 'h',
          id: 'i',
          hash: 'x',
          token: 't',
          agent: 'g',
          group: 'public',
          domain: 'shop.example.test',
          host: 'lb-1.example.test',
          repo: 'shop',
          tag: 'v1.2',
        } as never),
      );
      expect(parts, kind).toBeDefined();
    }
  });

  it('a foreign key, another kind of key or a deeper key parses to nothing', () => {
    expect(keys.parse('app', '/other/apps/shop')).toBeUndefined();
    expect(keys.parse('app', keys.version('shop', 'v1'))).toBeUndefined();
    expect(keys.parse('version', keys.app('shop'))).toBeUndefined();
    expect(keys.parse('member', `${keys.versions('shop')}v1`)).toBeUndefined();
    expect(keys.parse('app', `${keys.apps()}`)).toBeUndefined();
    expect(new BerthKeys('/t-1').parse('app', keys.app('shop'))).toBeUndefined();
    // An app's traffic record is neither a member nor a version, and a group's traffic is no domain.
    expect(keys.parse('member', keys.traffic('shop'))).toBeUndefined();
    expect(keys.parse('version', keys.traffic('shop'))).toBeUndefined();
    expect(keys.parse('slbDomain', keys.slbTraffic('public', 'shop'))).toBeUndefined();
    expect(keys.parse('lbAgent', `${keys.lbAgents('public')}h/deeper`)).toBeUndefined();
  });
});
