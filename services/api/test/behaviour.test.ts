import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appBody, ensureRegion, startApi, type TestApi } from './harness.ts';

let api: TestApi;
let alice: string;
let n = 0;
const fresh = (base: string) => `${base}-${++n}`;

beforeAll(async () => {
  api = await startApi({ LOGIN_RATE_LIMIT: '5' });
  await ensureRegion(api);
  alice = await api.user('alice');
  await api.user('bob');
});

afterAll(async () => {
  await api?.stop();
});

async function createApp(token = alice, name = fresh('shop')): Promise<string> {
  const res = await api.call('POST', '/apps', { token, body: appBody(name) });
  expect(res.status).toBe(201);
  return name;
}

describe('versions', () => {
  it('a new version copies every field the request leaves out from the newest version', async () => {
    const app = await createApp();
    const v1 = await api.call('POST', `/apps/${app}/versions`, {
      token: alice,
      body: {
        imageTag: 'main-1a2b3c4',
        replicas: 4,
        cpu: '250m',
        memory: '256Mi',
        env: { JAVA_OPTS: '-Xmx300m' },
        command: ['/app', '--serve'],
      },
    });
    expect(v1.status).toBe(201);
    expect(v1.json.name).toBe('v1');
    const v2 = await api.call('POST', `/apps/${app}/versions`, { token: alice, body: { imageTag: 'main-5e6f7a8' } });
    expect(v2.status).toBe(201);
    expect(v2.headers.get('location')).toBe(`/api/v1/apps/${app}/versions/v2`);
    expect(v2.json).toMatchObject({
      name: 'v2',
      imageTag: 'main-5e6f7a8',
      replicas: 4,
      cpu: '250m',
      memory: '256Mi',
      env: { JAVA_OPTS: '-Xmx300m' },
      command: ['/app', '--serve'],
      ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
      healthCheck: { path: '/healthz', port: 8080 },
    });
    const v3 = await api.call('POST', `/apps/${app}/versions`, { token: alice, body: { replicas: 1 } });
    expect(v3.json).toMatchObject({ name: 'v3', imageTag: 'main-5e6f7a8', replicas: 1 });
  });

  it('the first version needs an image tag; versions are numbered on after a delete', async () => {
    const app = await createApp();
    const res = await api.call('POST', `/apps/${app}/versions`, { token: alice, body: {} });
    expect(res.status).toBe(400);
    expect(res.json.errors).toEqual([{ path: '$.imageTag', message: expect.stringContaining('required') }]);
    await api.call('POST', `/apps/${app}/versions`, { token: alice, body: { imageTag: 'a', replicas: 0 } });
    expect((await api.call('DELETE', `/apps/${app}/versions/v1`, { token: alice })).status).toBe(204);
    const next = await api.call('POST', `/apps/${app}/versions`, { token: alice, body: { imageTag: 'b' } });
    expect(next.json.name).toBe('v2');
  });

  it('a version is immutable but its replicas; a running version cannot be deleted', async () => {
    const app = await createApp();
    await api.call('POST', `/apps/${app}/versions`, { token: alice, body: { imageTag: 'a', replicas: 2 } });
    const scaled = await api.call('POST', `/apps/${app}/versions/v1/scale`, { token: alice, body: { replicas: 5 } });
    expect(scaled.json.replicas).toBe(5);
    const refused = await api.call('DELETE', `/apps/${app}/versions/v1`, { token: alice });
    expect(refused.status).toBe(409);
    expect(refused.json.detail).toContain('scale it to 0');
    // No PATCH on a version at all: 405, with Allow naming what the path takes.
    const patched = await api.call('PATCH', `/apps/${app}/versions/v1`, { token: alice, body: { imageTag: 'b' } });
    expect(patched.status).toBe(405);
    expect(patched.headers.get('allow')).toBe('DELETE, GET, HEAD, OPTIONS');
  });

  it('rollback brings the older version back to the replicas the current one has and the current one to 0', async () => {
    const app = await createApp();
    await api.call('POST', `/apps/${app}/versions`, { token: alice, body: { imageTag: 'good', replicas: 3 } });
    await api.call('POST', `/apps/${app}/versions`, { token: alice, body: { imageTag: 'bad', replicas: 0 } });
    // The gray step: v2 takes all the traffic, v1 goes to 0.
    await api.call('POST', `/apps/${app}/versions/v2/scale`, { token: alice, body: { replicas: 4 } });
    await api.call('POST', `/apps/${app}/versions/v1/scale`, { token: alice, body: { replicas: 0 } });
    const res = await api.call('POST', `/apps/${app}/rollback`, { token: alice, body: { version: 'v1' } });
    expect(res.status).toBe(200);
    expect(res.json.target).toMatchObject({ name: 'v1', replicas: 4 });
    expect(res.json.previous).toMatchObject({ name: 'v2', replicas: 0 });
    const list = await api.call('GET', `/apps/${app}/versions`, { token: alice });
    expect(list.json.items.map((v: { name: string; replicas: number }) => `${v.name}=${v.replicas}`)).toEqual([
      'v2=0',
      'v1=4',
    ]);
    // Nothing else runs: nothing to roll back from.
    expect((await api.call('POST', `/apps/${app}/rollback`, { token: alice, body: { version: 'v1' } })).status).toBe(
      409,
    );
  });
});

describe('quotas', () => {
  it('version create and scale answer 403 with the numbers when over quota', async () => {
    const user = fresh('carol');
    const token = await api.user(user);
    const put = await api.call('PUT', `/admin/quotas/${user}`, {
      token: api.adminToken,
      body: { maxApps: 1, cpu: '2', memory: '2Gi' },
    });
    expect(put.status).toBe(200);
    const app = await createApp(token);
    // 3 x 500m = 1.5 cpu: fits.
    expect(
      (
        await api.call('POST', `/apps/${app}/versions`, {
          token,
          body: { imageTag: 'a', replicas: 3, cpu: '500m', memory: '256Mi' },
        })
      ).status,
    ).toBe(201);
    // 2 more x 500m = 2.5 cpu: does not.
    const over = await api.call('POST', `/apps/${app}/versions`, { token, body: { replicas: 2 } });
    expect(over.status).toBe(403);
    expect(over.json.detail).toContain('cpu: 2500m would exceed the limit of 2 (in use 1500m)');
    expect(over.json.quota.cpu).toEqual({ limit: '2', used: '1500m', requested: '1' });
    const scale = await api.call('POST', `/apps/${app}/versions/v1/scale`, { token, body: { replicas: 5 } });
    expect(scale.status).toBe(403);
    expect((await api.call('POST', `/apps/${app}/versions/v1/scale`, { token, body: { replicas: 4 } })).status).toBe(
      200,
    );
    // One app only.
    const second = await api.call('POST', '/apps', { token, body: appBody(fresh('second')) });
    expect(second.status).toBe(403);
    expect(second.json.detail).toContain('apps: 2 would exceed the limit of 1');
    const usage = await api.call('GET', `/admin/quotas/${user}`, { token: api.adminToken });
    expect(usage.json.usage).toEqual({ apps: 1, cpu: '2', memory: '1Gi' });
  });

  it('concurrent scale-ups cannot both slip under the quota', async () => {
    const user = fresh('dave');
    const token = await api.user(user);
    await api.call('PUT', `/admin/quotas/${user}`, { token: api.adminToken, body: { cpu: '1' } });
    const app = await createApp(token);
    await api.call('POST', `/apps/${app}/versions`, { token, body: { imageTag: 'a', replicas: 0, cpu: '500m' } });
    await api.call('POST', `/apps/${app}/versions`, { token, body: { imageTag: 'b', replicas: 0, cpu: '500m' } });
    // Each alone fits (2 x 500m = 1 cpu); both together do not.
    const [a, b] = await Promise.all([
      api.call('POST', `/apps/${app}/versions/v1/scale`, { token, body: { replicas: 2 } }),
      api.call('POST', `/apps/${app}/versions/v2/scale`, { token, body: { replicas: 2 } }),
    ]);
    expect([a.status, b.status].sort()).toEqual([200, 403]);
  });
});

describe('ETag and If-Match', () => {
  it('a stale If-Match gets 412 and changes nothing; the current ETag works', async () => {
    const app = await createApp();
    const got = await api.call('GET', `/apps/${app}`, { token: alice });
    const etag = got.headers.get('etag') as string;
    expect(etag).toMatch(/^"\d+"$/);
    const first = await api.call('PATCH', `/apps/${app}`, {
      token: alice,
      body: { description: 'one' },
      headers: { 'if-match': etag },
    });
    expect(first.status).toBe(200);
    expect(first.headers.get('etag')).not.toBe(etag);
    const stale = await api.call('PATCH', `/apps/${app}`, {
      token: alice,
      body: { description: 'two' },
      headers: { 'if-match': etag },
    });
    expect(stale.status).toBe(412);
    expect((await api.call('GET', `/apps/${app}`, { token: alice })).json.description).toBe('one');
    expect((await api.call('DELETE', `/apps/${app}`, { token: alice, headers: { 'if-match': etag } })).status).toBe(
      412,
    );
    const current = first.headers.get('etag') as string;
    expect((await api.call('DELETE', `/apps/${app}`, { token: alice, headers: { 'if-match': current } })).status).toBe(
      204,
    );
  });

  it('members, quotas and the caller carry ETags too; If-Match guards member changes', async () => {
    const app = await createApp();
    const me = await api.call('GET', '/users/me', { token: alice });
    expect(me.headers.get('etag')).toMatch(/^"\d+"$/);
    // A membership that does not exist yet matches no ETag.
    const early = await api.call('PUT', `/apps/${app}/members/bob`, {
      token: alice,
      body: { role: 'Guest' },
      headers: { 'if-match': '"1"' },
    });
    expect(early.status).toBe(412);
    const added = await api.call('PUT', `/apps/${app}/members/bob`, { token: alice, body: { role: 'Guest' } });
    const tag = added.headers.get('etag') as string;
    const changed = await api.call('PUT', `/apps/${app}/members/bob`, {
      token: alice,
      body: { role: 'Reporter' },
      headers: { 'if-match': tag },
    });
    expect(changed.status).toBe(200);
    const stalePut = await api.call('PUT', `/apps/${app}/members/bob`, {
      token: alice,
      body: { role: 'Master' },
      headers: { 'if-match': tag },
    });
    expect(stalePut.status).toBe(412);
    const staleDelete = await api.call('DELETE', `/apps/${app}/members/bob`, {
      token: alice,
      headers: { 'if-match': tag },
    });
    expect(staleDelete.status).toBe(412);
    const members = await api.call('GET', `/apps/${app}/members`, { token: alice });
    expect(members.json.items.find((m: { user: string }) => m.user === 'bob').role).toBe('Reporter');
    const removed = await api.call('DELETE', `/apps/${app}/members/bob`, {
      token: alice,
      headers: { 'if-match': changed.headers.get('etag') as string },
    });
    expect(removed.status).toBe(204);

    // No quota yet reads as ETag "0"; If-Match "0" then sets the first one, and only once.
    const user = fresh('quinn');
    await api.user(user);
    const none = await api.call('GET', `/admin/quotas/${user}`, { token: api.adminToken });
    expect(none.headers.get('etag')).toBe('"0"');
    const first = await api.call('PUT', `/admin/quotas/${user}`, {
      token: api.adminToken,
      body: { maxApps: 3 },
      headers: { 'if-match': '"0"' },
    });
    expect(first.status).toBe(200);
    const again = await api.call('PUT', `/admin/quotas/${user}`, {
      token: api.adminToken,
      body: { maxApps: 5 },
      headers: { 'if-match': '"0"' },
    });
    expect(again.status).toBe(412);
  });

  it('twenty concurrent creates of one app name give one 201 and nineteen 409s', async () => {
    const name = fresh('race');
    const results = await Promise.all(
      Array.from({ length: 20 }, () => api.call('POST', '/apps', { token: alice, body: appBody(name) })),
    );
    const statuses = results.map((r) => r.status).sort();
    expect(statuses.filter((s) => s === 201)).toHaveLength(1);
    expect(statuses.filter((s) => s === 409)).toHaveLength(19);
  });

  it('concurrent version creates each get their own number', async () => {
    const app = await createApp();
    await api.call('POST', `/apps/${app}/versions`, { token: alice, body: { imageTag: 'base', replicas: 0 } });
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        api.call('POST', `/apps/${app}/versions`, { token: alice, body: { imageTag: `t${i}` } }),
      ),
    );
    expect(results.every((r) => r.status === 201)).toBe(true);
    expect(results.map((r) => r.json.name).sort()).toEqual(['v2', 'v3', 'v4', 'v5', 'v6', 'v7', 'v8', 'v9']);
  });
});

describe('members', () => {
  it('a Master cannot grant Owner; the last Owner cannot be removed; transfer keeps the old owner as Master', async () => {
    const app = await createApp();
    await api.call('PUT', `/apps/${app}/members/bob`, { token: alice, body: { role: 'Master' } });
    const bob = await api.login('bob', 'pw-bob-12345');
    const grant = await api.call('PUT', `/apps/${app}/members/bob`, { token: bob, body: { role: 'Owner' } });
    expect(grant.status).toBe(403);
    const removeLast = await api.call('DELETE', `/apps/${app}/members/alice`, { token: alice });
    expect(removeLast.status).toBe(409);
    const demoteLast = await api.call('PUT', `/apps/${app}/members/alice`, { token: alice, body: { role: 'Master' } });
    expect(demoteLast.status).toBe(409);
    const transfer = await api.call('POST', `/apps/${app}/transfer`, { token: alice, body: { owner: 'bob' } });
    expect(transfer.status).toBe(200);
    const members = await api.call('GET', `/apps/${app}/members`, { token: bob });
    expect(members.json.items.map((m: { user: string; role: string }) => `${m.user}:${m.role}`)).toEqual([
      'alice:Master',
      'bob:Owner',
    ]);
    expect((await api.call('GET', `/apps/${app}`, { token: bob })).json.owner).toBe('bob');
    expect((await api.call('DELETE', `/apps/${app}`, { token: alice })).status).toBe(403);
  });

  it('the app list shows only what the caller owns or is a member of, with paging', async () => {
    const user = fresh('erin');
    const token = await api.user(user);
    const mine = [
      await createApp(token, `${user}-a`),
      await createApp(token, `${user}-b`),
      await createApp(token, `${user}-c`),
    ];
    const page1 = await api.call('GET', '/apps?limit=2', { token });
    expect(page1.json.items.map((a: { name: string }) => a.name)).toEqual(mine.slice(0, 2));
    const page2 = await api.call('GET', `/apps?limit=2&cursor=${page1.json.next}`, { token });
    expect(page2.json.items.map((a: { name: string }) => a.name)).toEqual(mine.slice(2));
    expect(page2.json.next).toBeNull();
  });
});

describe('activity', () => {
  it("an app's feed is newest first, pages by cursor, and never shows a secret", async () => {
    const app = await createApp();
    await api.call('POST', `/apps/${app}/versions`, {
      token: alice,
      body: { imageTag: 'a', replicas: 1, env: { DB_PASSWORD: 'hunter2-secret', MODE: 'prod' } },
    });
    await api.call('POST', `/apps/${app}/versions/v1/scale`, { token: alice, body: { replicas: 2 } });
    await api.call('PUT', `/apps/${app}/members/bob`, { token: alice, body: { role: 'Reporter' } });
    const all = await api.call('GET', `/apps/${app}/events`, { token: alice });
    expect(all.status).toBe(200);
    const actions = all.json.items.map((e: { kind: string; action: string }) => `${e.kind}.${e.action}`);
    expect(actions).toEqual(['member.added', 'version.scaled', 'version.created', 'app.created']);
    expect(all.json.items.every((e: { actor: { name: string } }) => e.actor.name === 'alice')).toBe(true);
    expect(JSON.stringify(all.json)).not.toContain('hunter2-secret');
    expect(all.json.items[2].after.env).toEqual({ DB_PASSWORD: '[redacted]', MODE: '[redacted]' });

    const first = await api.call('GET', `/apps/${app}/events?limit=3`, { token: alice });
    expect(first.json.items).toHaveLength(3);
    const second = await api.call('GET', `/apps/${app}/events?limit=3&cursor=${first.json.next}`, { token: alice });
    expect(second.json.items.map((e: { action: string }) => e.action)).toEqual(['created']);
    expect(second.json.next).toBeNull();
  });

  it('stats count deploys, scales, rollbacks and logins per day', async () => {
    const app = await createApp();
    await api.call('POST', `/apps/${app}/versions`, { token: alice, body: { imageTag: 'a', replicas: 1 } });
    await api.call('POST', `/apps/${app}/versions`, { token: alice, body: { imageTag: 'b', replicas: 0 } });
    await api.call('POST', `/apps/${app}/versions/v2/scale`, { token: alice, body: { replicas: 1 } });
    await api.call('POST', `/apps/${app}/versions/v1/scale`, { token: alice, body: { replicas: 0 } });
    await api.call('POST', `/apps/${app}/rollback`, { token: alice, body: { version: 'v1' } });
    const before = (await api.call('GET', '/admin/stats?days=1', { token: api.adminToken })).json.days[0];
    await api.login('alice', 'pw-alice-12345');
    const after = (await api.call('GET', '/admin/stats?days=1', { token: api.adminToken })).json.days[0];
    expect(after.date).toBe(new Date().toISOString().slice(0, 10));
    expect(after.logins).toBe(before.logins + 1);
    expect(before.rollbacks).toBeGreaterThanOrEqual(1);
    expect(before.scales).toBeGreaterThanOrEqual(2);
    expect(before.deploys).toBeGreaterThanOrEqual(2);
  });
});

describe('bad input', () => {
  it('names every bad field, refuses unknown fields, and checks path parameters', async () => {
    const res = await api.call('POST', '/apps', {
      token: alice,
      body: { ...appBody('OK'), healthCheck: { path: 'no-slash', port: 70000 }, extra: true },
    });
    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toContain('application/problem+json');
    expect(res.json.errors.map((e: { path: string }) => e.path).sort()).toEqual([
      '$.extra',
      '$.healthCheck.path',
      '$.healthCheck.port',
      '$.name',
    ]);
    const badParam = await api.call('GET', '/apps/Not_A_Label', { token: alice });
    expect(badParam.status).toBe(400);
  });

  it('413 over the body limit, 415 for non-JSON, 400 for broken JSON', async () => {
    const big = await api.call('POST', '/apps', {
      token: alice,
      body: { ...appBody('big'), description: 'x'.repeat(400_000) },
    });
    expect(big.status).toBe(413);
    const text = await api.call('POST', '/apps', {
      token: alice,
      raw: 'name=shop',
      headers: { 'content-type': 'text/plain' },
    });
    expect(text.status).toBe(415);
    const broken = await api.call('POST', '/apps', {
      token: alice,
      raw: '{"name":',
      headers: { 'content-type': 'application/json' },
    });
    expect(broken.status).toBe(400);
  });

  it('401 without a token, with a malformed one, and with a revoked one', async () => {
    expect((await api.call('GET', '/users/me')).status).toBe(401);
    expect((await api.call('GET', '/users/me', { token: 'nonsense' })).status).toBe(401);
    const created = await api.call('POST', '/tokens', { token: alice, body: { name: 'tmp', scopes: ['read'] } });
    expect(created.status).toBe(201);
    const pat = created.json.token as string;
    expect((await api.call('GET', '/users/me', { token: pat })).status).toBe(200);
    const listed = await api.call('GET', '/tokens', { token: alice });
    expect(listed.json.items.map((t: { id: string }) => t.id)).toContain(created.json.id);
    expect(JSON.stringify(listed.json)).not.toContain(pat);
    expect((await api.call('DELETE', `/tokens/${created.json.id}`, { token: alice })).status).toBe(204);
    expect((await api.call('GET', '/users/me', { token: pat })).status).toBe(401);
  });

  it("an admin's token acts as admin only with the admin scope", async () => {
    const app = await createApp();
    const made = await api.call('POST', '/tokens', {
      token: api.adminToken,
      body: { name: 'ci', scopes: ['write'] },
    });
    expect(made.status).toBe(201);
    const write = made.json.token as string;
    expect((await api.call('GET', '/regions', { token: write })).status).toBe(403);
    // Someone else's app: hidden, as from anyone who is not a member.
    expect((await api.call('GET', `/apps/${app}`, { token: write })).status).toBe(404);
    expect((await api.call('GET', `/apps/${app}`, { token: api.adminToken })).status).toBe(200);
    expect((await api.call('POST', '/tokens', { token: write, body: { name: 'up', scopes: ['admin'] } })).status).toBe(
      403,
    );
  });

  it('a token made with a personal token cannot outlive it', async () => {
    const soon = new Date(Date.now() + 3_600_000).toISOString();
    const parent = await api.call('POST', '/tokens', {
      token: alice,
      body: { name: 'parent', scopes: ['write'], expiresAt: soon },
    });
    expect(parent.status).toBe(201);
    const pat = parent.json.token as string;
    const longer = await api.call('POST', '/tokens', {
      token: pat,
      body: { name: 'child', scopes: ['read'], expiresAt: new Date(Date.now() + 7_200_000).toISOString() },
    });
    expect(longer.status).toBe(400);
    expect(longer.json.errors[0].path).toBe('$.expiresAt');
    // Left out, the expiry is the parent's.
    const child = await api.call('POST', '/tokens', { token: pat, body: { name: 'child', scopes: ['read'] } });
    expect(child.status).toBe(201);
    expect(Date.parse(child.json.expiresAt)).toBeLessThanOrEqual(Date.parse(parent.json.expiresAt));
  });

  it('a user name with a dot signs in, and the login is counted', async () => {
    const user = `${fresh('john')}.doe`;
    const before = (await api.call('GET', '/admin/stats?days=1', { token: api.adminToken })).json.days[0].logins;
    await api.user(user);
    const after = (await api.call('GET', '/admin/stats?days=1', { token: api.adminToken })).json.days[0].logins;
    expect(after).toBe(before + 1);
    expect(api.logs()).not.toContain('event not published');
  });

  it('login is rate limited per user and address, and a wrong password is 401', async () => {
    const user = fresh('frank');
    await api.user(user); // one login
    const attempts = [];
    for (let i = 0; i < 7; i++)
      attempts.push(
        (await api.call('POST', '/auth/login', { body: { username: user, password: 'wrong-password' } })).status,
      );
    // Failures only count (the login above does not): 5 per minute per user and address.
    expect(attempts.slice(0, 5)).toEqual([401, 401, 401, 401, 401]);
    expect(attempts.slice(5)).toEqual([429, 429]);
  });

  it('a token never appears in the API log', async () => {
    const created = await api.call('POST', '/tokens', { token: alice, body: { name: 'logged', scopes: ['read'] } });
    // A request that fails loudly with the token in its headers.
    await api.call('GET', '/apps/x/versions/v1', { token: created.json.token });
    expect(api.logs()).not.toContain(created.json.token);
  });
});
