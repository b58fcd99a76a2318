/**
 * LB groups, domains and traffic through the API, against the region's real etcd and NATS: who
 * may bind what, what lands in the `/slb/{group}/…` tree the lb-agents watch, the rendered config
 * members see, the traffic split and its copies, rollback moving traffic, the app's feed, and an
 * app's deletion taking its domains along.
 */
import type { LbAgentStatus } from '@berth/shared/model';
import { domainSchema, trafficSchema } from '@berth/shared/model';
import { waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appBody, ensureRegion, startApi, type TestApi } from './harness.ts';

let api: TestApi;
let owner: string;
let master: string;
let developer: string;
let other: string;
let counter = 0;

beforeAll(async () => {
  api = await startApi();
  await ensureRegion(api);
  owner = await api.user('lb-owner');
  master = await api.user('lb-master');
  developer = await api.user('lb-dev');
  other = await api.user('lb-other');
  for (const name of ['public', 'internal']) {
    const res = await api.call('POST', '/lb-groups', {
      token: api.adminToken,
      body: { name, description: `${name} nginx`, vips: ['198.18.0.10'], cname: `${name}.lb.example.test` },
    });
    expect(res.status, JSON.stringify(res.json)).toBe(201);
  }
});

afterAll(async () => {
  await api?.stop();
});

/** A fresh app of lb-owner with a Master and a Developer, and versions v1 (2 replicas) and v2 (0). */
async function fixture(): Promise<string> {
  const app = `lbapp-${++counter}`;
  expect((await api.call('POST', '/apps', { token: owner, body: appBody(app) })).status).toBe(201);
  for (const [user, role] of [
    ['lb-master', 'Master'],
    ['lb-dev', 'Developer'],
  ]) {
    expect((await api.call('PUT', `/apps/${app}/members/${user}`, { token: owner, body: { role } })).status).toBe(200);
  }
  for (const [tag, replicas] of [
    ['t1', 2],
    ['t2', 0],
  ]) {
    const res = await api.call('POST', `/apps/${app}/versions`, { token: owner, body: { imageTag: tag, replicas } });
    expect(res.status).toBe(201);
  }
  return app;
}

function bind(app: string, token: string, body: Record<string, unknown>) {
  return api.call('POST', `/apps/${app}/domains`, { token, body: { group: 'public', ...body } });
}

const store = () => api.service.runtime.store;
const keys = () => api.service.runtime.keys;

describe('LB groups', () => {
  it('admins create them, signed-in users read them, others may not write', async () => {
    const list = await api.call('GET', '/lb-groups', { token: developer });
    expect(list.status).toBe(200);
    expect(list.json.items.map((g: { name: string }) => g.name)).toEqual(['internal', 'public']);
    const one = await api.call('GET', '/lb-groups/public', { token: developer });
    expect(one.json).toMatchObject({ name: 'public', vips: ['198.18.0.10'], cname: 'public.lb.example.test' });
    expect((await api.call('POST', '/lb-groups', { token: owner, body: { name: 'mine' } })).status).toBe(403);
    expect((await api.call('DELETE', '/lb-groups/public', { token: owner })).status).toBe(403);
    expect((await api.call('POST', '/lb-groups', { token: api.adminToken, body: { name: 'public' } })).status).toBe(
      409,
    );
    const bad = await api.call('POST', '/lb-groups', {
      token: api.adminToken,
      body: { name: 'x', vips: ['not-an-ip'] },
    });
    expect(bad.status).toBe(400);
    expect(bad.json.errors.map((e: { path: string }) => e.path)).toEqual(['$.vips[0]']);
  });

  it('a group that serves a domain cannot be deleted; an empty one can', async () => {
    const app = await fixture();
    await api.call('POST', '/lb-groups', { token: api.adminToken, body: { name: 'doomed' } });
    expect((await bind(app, owner, { domain: `d${counter}.doomed.example.test`, group: 'doomed' })).status).toBe(201);
    const refused = await api.call('DELETE', '/lb-groups/doomed', { token: api.adminToken });
    expect(refused.status).toBe(409);
    expect(refused.json.detail).toContain(`d${counter}.doomed.example.test`);
    expect(
      (await api.call('DELETE', `/apps/${app}/domains/d${counter}.doomed.example.test`, { token: owner })).status,
    ).toBe(204);
    expect((await api.call('DELETE', '/lb-groups/doomed', { token: api.adminToken })).status).toBe(204);
    expect((await api.call('GET', '/lb-groups/doomed', { token: owner })).status).toBe(404);
  });

  it("the agents route lists each agent's generations, failed domains and last report", async () => {
    const agent: LbAgentStatus = {
      host: 'lb-1.example.test',
      group: 'internal',
      appliedGeneration: 41,
      lastGoodGeneration: 42,
      failedDomains: [
        {
          domain: 'broken.example.test',
          message: 'nginx: [emerg] unknown directive "gzipp"',
          generation: 43,
          since: new Date().toISOString(),
        },
      ],
      lastError: null,
      reportedAt: new Date().toISOString(),
    };
    // As an lb-agent would report it.
    await store().commit([{ op: 'put', key: keys().lbAgent('internal', agent.host), value: agent }]);
    const res = await api.call('GET', '/lb-groups/internal/agents', { token: developer });
    expect(res.status).toBe(200);
    expect(res.json.items).toEqual([agent]);
    expect((await api.call('GET', '/lb-groups/nope/agents', { token: developer })).status).toBe(404);
  });
});

describe('domains', () => {
  it('the owner binds a domain; it lands in the group tree with the group addresses shown', async () => {
    const app = await fixture();
    const domain = `shop${counter}.example.test`;
    const res = await bind(app, owner, {
      domain,
      paths: ['/', '/api/'],
      options: { clientMaxBodySize: '10m', readTimeout: '60s', headers: { 'X-Frame-Options': 'DENY' } },
    });
    expect(res.status, JSON.stringify(res.json)).toBe(201);
    expect(res.json).toMatchObject({
      domain,
      app,
      group: 'public',
      port: 'http',
      paths: ['/', '/api/'],
      lb: { vips: ['198.18.0.10'], cname: 'public.lb.example.test' },
    });
    expect(res.headers.get('location')).toBe(`/api/v1/apps/${app}/domains/${domain}`);
    const stored = await store().get(keys().slbDomain('public', domain), domainSchema);
    expect(stored?.value).toMatchObject({ domain, app, options: { headers: { 'X-Frame-Options': 'DENY' } } });

    const got = await api.call('GET', `/apps/${app}/domains/${domain}`, { token: developer });
    expect(got.status).toBe(200);
    expect(got.headers.get('etag')).toBe(`"${stored?.modRevision}"`);
    const list = await api.call('GET', `/apps/${app}/domains`, { token: developer });
    expect(list.json.items.map((d: { domain: string }) => d.domain)).toEqual([domain]);
  });

  it('Masters bind too; a Developer gets 403 and a non-member 404', async () => {
    const app = await fixture();
    expect((await bind(app, master, { domain: `m${counter}.example.test` })).status).toBe(201);
    const dev = await bind(app, developer, { domain: `dev${counter}.example.test` });
    expect(dev.status).toBe(403);
    expect(dev.headers.get('content-type')).toContain('application/problem+json');
    expect((await bind(app, other, { domain: `o${counter}.example.test` })).status).toBe(404);
    expect((await api.call('GET', `/apps/${app}/domains`, { token: other })).status).toBe(404);
  });

  it('a domain belongs to one app: a second app binding it gets 409', async () => {
    const first = await fixture();
    const second = await fixture();
    const domain = `taken${counter}.example.test`;
    expect((await bind(first, owner, { domain })).status).toBe(201);
    const again = await bind(second, owner, { domain, group: 'internal' });
    expect(again.status).toBe(409);
    expect(again.json.detail).toContain('another app');
    expect((await bind(first, owner, { domain })).status).toBe(409);
    // Freed by its removal, the name can be bound elsewhere.
    expect((await api.call('DELETE', `/apps/${first}/domains/${domain}`, { token: owner })).status).toBe(204);
    expect((await bind(second, owner, { domain })).status).toBe(201);
  });

  it('two apps binding one name at once: exactly one gets it', async () => {
    const apps = await Promise.all([fixture(), fixture(), fixture()]);
    const domain = `race${counter}.example.test`;
    const results = await Promise.all(
      apps.map((app, i) => bind(app, owner, { domain, group: i % 2 ? 'internal' : 'public' })),
    );
    expect(results.map((r) => r.status).sort()).toEqual([201, 409, 409]);
    const winner = apps[results.findIndex((r) => r.status === 201)];
    const claim = await store().keys(keys().domainClaim(domain));
    expect(claim).toHaveLength(1);
    const bound = await Promise.all(apps.map((app) => api.call('GET', `/apps/${app}/domains`, { token: owner })));
    expect(bound.map((b) => b.json.items.length)).toEqual(apps.map((app) => (app === winner ? 1 : 0)));
  });

  it.each([
    ['an uppercase name', { domain: 'Shop.Example.test' }, '$.domain'],
    ['a single label', { domain: 'localhost' }, '$.domain'],
    ['an IP address', { domain: '198.18.0.1' }, '$.domain'],
    ['a label with "_"', { domain: 'a_b.example.test' }, '$.domain'],
    [
      'a header value with a line break',
      { options: { headers: { 'X-A': 'a\nadd_header B c;' } } },
      '$.options.headers["X-A"]',
    ],
    ['a path with ";"', { paths: ['/a;return 200'] }, '$.paths[0]'],
    ['an unknown group', { group: 'nope' }, '$.group'],
    ['a port the app does not have', { port: 'grpc' }, '$.port'],
  ])('%s is refused with problem+json naming the field', async (_what, body, path) => {
    const app = await fixture();
    const res = await bind(app, owner, { domain: `ok${counter}.example.test`, ...body });
    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toContain('application/problem+json');
    expect(res.json.errors.map((e: { path: string }) => e.path)).toContain(path);
  });

  it('raw directives are for admins only', async () => {
    const app = await fixture();
    const domain = `raw${counter}.example.test`;
    const refused = await bind(app, owner, { domain, options: { raw: 'gzip on;' } });
    expect(refused.status).toBe(403);
    expect(refused.json.errors).toEqual([{ path: '$.options.raw', message: 'admins only' }]);
    expect((await bind(app, api.adminToken, { domain, options: { raw: 'gzip on;' } })).status).toBe(201);
    // The owner may change the rest, and the admin's raw stays; touching raw is 403 again.
    const patched = await api.call('PATCH', `/apps/${app}/domains/${domain}`, {
      token: owner,
      body: { options: { headers: { 'X-A': 'b' } } },
    });
    expect(patched.status).toBe(200);
    expect(patched.json.options).toEqual({ headers: { 'X-A': 'b' }, raw: 'gzip on;' });
    const removeRaw = await api.call('PATCH', `/apps/${app}/domains/${domain}`, {
      token: owner,
      body: { options: { raw: null } },
    });
    expect(removeRaw.status).toBe(403);
  });

  it('members read the rendered nginx config, with the server_name and the header', async () => {
    const app = await fixture();
    const domain = `cfg${counter}.example.test`;
    expect(
      (await bind(app, owner, { domain, options: { headers: { 'X-Frame-Options': 'DENY', 'X-Evil': 'a; } {' } } }))
        .status,
    ).toBe(201);
    const res = await api.call('GET', `/apps/${app}/domains/${domain}/config`, { token: developer });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
    const text = res.body as string;
    expect(text).toContain(`server_name ${domain};`);
    expect(text).toContain('add_header X-Frame-Options "DENY" always;');
    expect(text).toContain('add_header X-Evil "a; } {" always;');
    expect(text).toContain(`upstream berth_${app}_http {`);
    expect((await api.call('GET', `/apps/${app}/domains/${domain}/config`, { token: other })).status).toBe(404);
  });

  it('PATCH moves a domain to another group, with If-Match; a stale ETag gets 412', async () => {
    const app = await fixture();
    const domain = `mv${counter}.example.test`;
    const created = await bind(app, owner, { domain });
    const stale = created.headers.get('etag') as string;
    const moved = await api.call('PATCH', `/apps/${app}/domains/${domain}`, {
      token: owner,
      body: { group: 'internal', paths: ['/v2/'] },
      headers: { 'if-match': stale },
    });
    expect(moved.status, JSON.stringify(moved.json)).toBe(200);
    expect(moved.json).toMatchObject({ group: 'internal', paths: ['/v2/'], lb: { cname: 'internal.lb.example.test' } });
    expect(await store().get(keys().slbDomain('public', domain), domainSchema)).toBeUndefined();
    expect((await store().get(keys().slbDomain('internal', domain), domainSchema))?.value.paths).toEqual(['/v2/']);
    const late = await api.call('PATCH', `/apps/${app}/domains/${domain}`, {
      token: owner,
      body: { paths: ['/'] },
      headers: { 'if-match': stale },
    });
    expect(late.status).toBe(412);
  });
});

describe('traffic', () => {
  it('without a split, GET answers by-ready-replicas with ETag "0"', async () => {
    const app = await fixture();
    const res = await api.call('GET', `/apps/${app}/traffic`, { token: developer });
    expect(res.status).toBe(200);
    expect(res.json).toEqual({
      app,
      weights: null,
      stickiness: null,
      mode: 'by-ready-replicas',
      updatedAt: null,
      updatedBy: null,
    });
    expect(res.headers.get('etag')).toBe('"0"');
  });

  it('PUT then GET round-trips, and each group the app has a domain in gets a copy', async () => {
    const app = await fixture();
    expect((await bind(app, owner, { domain: `tr${counter}.example.test` })).status).toBe(201);
    const put = await api.call('PUT', `/apps/${app}/traffic`, {
      token: master,
      body: { weights: { v1: 90, v2: 10 }, stickiness: { cookie: 'berth_route' } },
      headers: { 'if-match': '"0"' },
    });
    expect(put.status, JSON.stringify(put.json)).toBe(200);
    const got = await api.call('GET', `/apps/${app}/traffic`, { token: developer });
    expect(got.json).toMatchObject({
      weights: { v1: 90, v2: 10 },
      stickiness: { cookie: 'berth_route' },
      mode: 'weights',
      updatedBy: 'lb-master',
    });
    expect(got.headers.get('etag')).toBe(put.headers.get('etag'));
    const copy = await store().get(keys().slbTraffic('public', app), trafficSchema);
    expect(copy?.value.weights).toEqual({ v1: 90, v2: 10 });
    expect(await store().get(keys().slbTraffic('internal', app), trafficSchema)).toBeUndefined();

    // A domain in a second group brings a copy there; removing the group's last domain takes it away.
    const second = `tr${counter}.internal.example.test`;
    expect((await bind(app, owner, { domain: second, group: 'internal' })).status).toBe(201);
    expect((await store().get(keys().slbTraffic('internal', app), trafficSchema))?.value.weights).toEqual({
      v1: 90,
      v2: 10,
    });
    expect((await api.call('DELETE', `/apps/${app}/domains/${second}`, { token: owner })).status).toBe(204);
    expect(await store().get(keys().slbTraffic('internal', app), trafficSchema)).toBeUndefined();

    const header = await api.call('PUT', `/apps/${app}/traffic`, {
      token: owner,
      body: { weights: null, stickiness: { header: 'X-User-Id' } },
    });
    expect(header.json).toMatchObject({
      weights: null,
      stickiness: { header: 'X-User-Id' },
      mode: 'by-ready-replicas',
    });
    expect((await store().get(keys().slbTraffic('public', app), trafficSchema))?.value.weights).toBeNull();
  });

  it.each([
    ['an unknown version', { weights: { v1: 50, v9: 50 } }, '$.weights.v9'],
    ['a negative weight', { weights: { v1: -1, v2: 10 } }, '$.weights.v1'],
    ['a fraction', { weights: { v1: 0.5 } }, '$.weights.v1'],
    ['weights that add up to 0', { weights: { v1: 0, v2: 0 } }, '$.weights'],
    ['a name that is no version', { weights: { latest: 1 } }, '$.weights.latest'],
    ['both cookie and header', { weights: null, stickiness: { cookie: 'a', header: 'b' } }, '$.stickiness'],
  ])('%s is refused with problem+json naming the field', async (_what, body, path) => {
    const app = await fixture();
    const res = await api.call('PUT', `/apps/${app}/traffic`, { token: owner, body });
    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toContain('application/problem+json');
    expect(res.json.errors.map((e: { path: string }) => e.path.replace(/\.(cookie|header)$/, ''))).toContain(path);
  });

  it('a Developer may read the split but not set it', async () => {
    const app = await fixture();
    expect((await api.call('GET', `/apps/${app}/traffic`, { token: developer })).status).toBe(200);
    expect(
      (await api.call('PUT', `/apps/${app}/traffic`, { token: developer, body: { weights: { v1: 1 } } })).status,
    ).toBe(403);
  });

  it('a rollback gives the target all the traffic when weights are set', async () => {
    const app = await fixture();
    expect((await bind(app, owner, { domain: `rb${counter}.example.test` })).status).toBe(201);
    // v2 live at 2 replicas with all of the traffic, v1 at 0: then roll back to v1.
    await api.call('POST', `/apps/${app}/versions/v2/scale`, { token: owner, body: { replicas: 2 } });
    await api.call('POST', `/apps/${app}/versions/v1/scale`, { token: owner, body: { replicas: 0 } });
    await api.call('PUT', `/apps/${app}/traffic`, { token: owner, body: { weights: { v1: 0, v2: 100 } } });
    const rb = await api.call('POST', `/apps/${app}/rollback`, { token: owner, body: { version: 'v1' } });
    expect(rb.status, JSON.stringify(rb.json)).toBe(200);
    const got = await api.call('GET', `/apps/${app}/traffic`, { token: owner });
    expect(got.json.weights).toEqual({ v1: 100 });
    expect((await store().get(keys().slbTraffic('public', app), trafficSchema))?.value.weights).toEqual({ v1: 100 });
  });

  it('a version with a share of the traffic cannot be deleted; one at weight 0 leaves the split', async () => {
    const app = await fixture();
    await api.call('PUT', `/apps/${app}/traffic`, { token: owner, body: { weights: { v1: 100, v2: 0 } } });
    expect((await api.call('DELETE', `/apps/${app}/versions/v2`, { token: owner })).status).toBe(204);
    expect((await api.call('GET', `/apps/${app}/traffic`, { token: owner })).json.weights).toEqual({ v1: 100 });
    await api.call('PUT', `/apps/${app}/traffic`, { token: owner, body: { weights: { v1: 100 } } });
    await api.call('POST', `/apps/${app}/versions/v1/scale`, { token: owner, body: { replicas: 0 } });
    const refused = await api.call('DELETE', `/apps/${app}/versions/v1`, { token: owner });
    expect(refused.status).toBe(409);
    expect(refused.json.detail).toContain('traffic');
  });
});

describe("the app's feed and its deletion", () => {
  it('domain and traffic changes appear in the app feed', async () => {
    const app = await fixture();
    const domain = `feed${counter}.example.test`;
    await bind(app, owner, { domain });
    await api.call('PATCH', `/apps/${app}/domains/${domain}`, { token: owner, body: { paths: ['/x/'] } });
    await api.call('PUT', `/apps/${app}/traffic`, { token: owner, body: { weights: { v1: 1 } } });
    await api.call('DELETE', `/apps/${app}/domains/${domain}`, { token: owner });
    const want = ['domain.deleted', 'traffic.updated', 'domain.updated', 'domain.created'];
    const feed = await waitFor(
      async () => {
        const res = await api.call('GET', `/apps/${app}/events?limit=4`, { token: developer });
        const actions = res.json.items.map((e: { kind: string; action: string }) => `${e.kind}.${e.action}`);
        return JSON.stringify(actions) === JSON.stringify(want) ? res.json.items : undefined;
      },
      { timeoutMs: 10_000, message: 'domain and traffic events in the feed' },
    );
    expect(feed[3]).toMatchObject({ resourceName: domain, actor: { name: 'lb-owner' }, after: { domain } });
    expect(feed[1].after.weights).toEqual({ v1: 1 });
  });

  it('deleting an app removes its domains, claims and traffic copies in the same step', async () => {
    const app = await fixture();
    const a = `gone-a${counter}.example.test`;
    const b = `gone-b${counter}.example.test`;
    expect((await bind(app, owner, { domain: a })).status).toBe(201);
    expect((await bind(app, owner, { domain: b, group: 'internal' })).status).toBe(201);
    await api.call('PUT', `/apps/${app}/traffic`, { token: owner, body: { weights: { v1: 1 } } });
    expect((await api.call('DELETE', `/apps/${app}`, { token: owner })).status).toBe(204);
    for (const key of [
      keys().slbDomain('public', a),
      keys().slbDomain('internal', b),
      keys().domainClaim(a),
      keys().domainClaim(b),
      keys().slbTraffic('public', app),
      keys().slbTraffic('internal', app),
      keys().traffic(app),
      keys().lbGuard(app),
    ]) {
      expect(
        (await store().keys(key)).filter((k) => k.key === key),
        key,
      ).toEqual([]);
    }
    // The names are free again.
    const next = await fixture();
    expect((await bind(next, owner, { domain: a })).status).toBe(201);
  });
});
