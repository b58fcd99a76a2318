/**
 * Every role (Owner, Master, Developer, Reporter, Guest), a non-member and a platform admin,
 * against every route, asserting the status. Each case gets a fresh app with one member of each
 * role, so destructive routes (delete, transfer) do not disturb the next case.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appBody, ensureRegion, startApi, type TestApi } from './harness.ts';

type Caller = 'Owner' | 'Master' | 'Developer' | 'Reporter' | 'Guest' | 'non-member' | 'admin';
const CALLERS: Caller[] = ['Owner', 'Master', 'Developer', 'Reporter', 'Guest', 'non-member', 'admin'];

let api: TestApi;
const tokens = {} as Record<Caller, string>;
const names: Record<Exclude<Caller, 'admin'>, string> = {
  Owner: 'owner1',
  Master: 'master1',
  Developer: 'dev1',
  Reporter: 'rep1',
  Guest: 'guest1',
  'non-member': 'outsider',
};
let counter = 0;

beforeAll(async () => {
  // With a keyring, so the secrets routes answer for real (without one, setting answers 503).
  api = await startApi({ BERTH_SECRETS_KEYS: `k1:${'0123456789abcdef'.repeat(4)}` });
  await ensureRegion(api);
  for (const [caller, name] of Object.entries(names)) tokens[caller as Caller] = await api.user(name);
  await api.user('newcomer');
  tokens.admin = api.adminToken;
});

afterAll(async () => {
  await api?.stop();
});

/** A fresh app owned by owner1 with one member of each role, versions v1 (2 replicas) and v2 (0), and a secret API_KEY. */
async function fixture(): Promise<string> {
  const app = `app-${++counter}`;
  const created = await api.call('POST', '/apps', { token: tokens.Owner, body: appBody(app) });
  expect(created.status).toBe(201);
  for (const role of ['Master', 'Developer', 'Reporter', 'Guest'] as const) {
    const res = await api.call('PUT', `/apps/${app}/members/${names[role]}`, { token: tokens.Owner, body: { role } });
    expect(res.status).toBe(200);
  }
  expect(
    (await api.call('POST', `/apps/${app}/versions`, { token: tokens.Owner, body: { imageTag: 't1', replicas: 2 } }))
      .status,
  ).toBe(201);
  expect(
    (await api.call('POST', `/apps/${app}/versions`, { token: tokens.Owner, body: { imageTag: 't2', replicas: 0 } }))
      .status,
  ).toBe(201);
  const secret = await api.call('PUT', `/apps/${app}/secrets/API_KEY`, { token: tokens.Owner, body: { value: 'v' } });
  expect(secret.status).toBe(201);
  return app;
}

type Case = {
  route: string;
  method: string;
  path: (app: string) => string;
  body?: unknown;
  expect: Record<Caller, number>;
};

const READ = { Owner: 200, Master: 200, Developer: 200, Reporter: 200, Guest: 200, 'non-member': 404, admin: 200 };
const DEPLOY = (ok: number) => ({
  Owner: ok,
  Master: ok,
  Developer: 403,
  Reporter: 403,
  Guest: 403,
  'non-member': 404,
  admin: ok,
});
const OWNER_ONLY = (ok: number) => ({
  Owner: ok,
  Master: 403,
  Developer: 403,
  Reporter: 403,
  Guest: 403,
  'non-member': 404,
  admin: ok,
});
const ADMIN_ONLY = (ok: number) => ({
  Owner: 403,
  Master: 403,
  Developer: 403,
  Reporter: 403,
  Guest: 403,
  'non-member': 403,
  admin: ok,
});
const ANYONE = (ok: number) => ({
  Owner: ok,
  Master: ok,
  Developer: ok,
  Reporter: ok,
  Guest: ok,
  'non-member': ok,
  admin: ok,
});

const CASES: Case[] = [
  { route: 'GET /apps', method: 'GET', path: () => '/apps', expect: ANYONE(200) },
  { route: 'GET /apps/{app}', method: 'GET', path: (a) => `/apps/${a}`, expect: READ },
  {
    route: 'PATCH /apps/{app}',
    method: 'PATCH',
    path: (a) => `/apps/${a}`,
    body: { description: 'changed' },
    expect: DEPLOY(200),
  },
  { route: 'DELETE /apps/{app}', method: 'DELETE', path: (a) => `/apps/${a}`, expect: OWNER_ONLY(204) },
  { route: 'GET /apps/{app}/status', method: 'GET', path: (a) => `/apps/${a}/status`, expect: READ },
  { route: 'GET /apps/{app}/versions', method: 'GET', path: (a) => `/apps/${a}/versions`, expect: READ },
  {
    route: 'POST /apps/{app}/versions',
    method: 'POST',
    path: (a) => `/apps/${a}/versions`,
    body: { imageTag: 't3' },
    expect: DEPLOY(201),
  },
  { route: 'GET /apps/{app}/versions/{v}', method: 'GET', path: (a) => `/apps/${a}/versions/v1`, expect: READ },
  {
    route: 'DELETE /apps/{app}/versions/{v}',
    method: 'DELETE',
    path: (a) => `/apps/${a}/versions/v2`,
    expect: DEPLOY(204),
  },
  {
    route: 'POST /apps/{app}/versions/{v}/scale',
    method: 'POST',
    path: (a) => `/apps/${a}/versions/v1/scale`,
    body: { replicas: 3 },
    expect: DEPLOY(200),
  },
  {
    route: 'POST /apps/{app}/rollback',
    method: 'POST',
    path: (a) => `/apps/${a}/rollback`,
    body: { version: 'v2' },
    expect: DEPLOY(200),
  },
  { route: 'GET /apps/{app}/secrets', method: 'GET', path: (a) => `/apps/${a}/secrets`, expect: READ },
  {
    route: 'GET /apps/{app}/secrets/{name}',
    method: 'GET',
    path: (a) => `/apps/${a}/secrets/API_KEY`,
    expect: READ,
  },
  {
    route: 'PUT /apps/{app}/secrets/{name}',
    method: 'PUT',
    path: (a) => `/apps/${a}/secrets/NEW_KEY`,
    body: { value: 'new' },
    expect: DEPLOY(201),
  },
  {
    route: 'DELETE /apps/{app}/secrets/{name}',
    method: 'DELETE',
    path: (a) => `/apps/${a}/secrets/API_KEY`,
    expect: DEPLOY(204),
  },
  { route: 'GET /apps/{app}/members', method: 'GET', path: (a) => `/apps/${a}/members`, expect: READ },
  {
    route: 'PUT /apps/{app}/members/{user}',
    method: 'PUT',
    path: (a) => `/apps/${a}/members/newcomer`,
    body: { role: 'Developer' },
    expect: DEPLOY(200),
  },
  {
    route: 'DELETE /apps/{app}/members/{user}',
    method: 'DELETE',
    path: (a) => `/apps/${a}/members/guest1`,
    expect: DEPLOY(204),
  },
  {
    route: 'POST /apps/{app}/transfer',
    method: 'POST',
    path: (a) => `/apps/${a}/transfer`,
    body: { owner: 'master1' },
    expect: OWNER_ONLY(200),
  },
  { route: 'GET /apps/{app}/events', method: 'GET', path: (a) => `/apps/${a}/events`, expect: READ },
  { route: 'POST /apps', method: 'POST', path: () => `/apps`, body: 'fresh-app', expect: ANYONE(201) },
  { route: 'GET /users/me', method: 'GET', path: () => '/users/me', expect: ANYONE(200) },
  { route: 'GET /tokens', method: 'GET', path: () => '/tokens', expect: ANYONE(200) },
  {
    route: 'POST /tokens',
    method: 'POST',
    path: () => '/tokens',
    body: { name: 'ci', scopes: ['read'] },
    expect: ANYONE(201),
  },
  { route: 'POST /users', method: 'POST', path: () => '/users', body: 'fresh-user', expect: ADMIN_ONLY(201) },
  { route: 'GET /regions', method: 'GET', path: () => '/regions', expect: ADMIN_ONLY(200) },
  { route: 'POST /regions', method: 'POST', path: () => '/regions', body: 'fresh-region', expect: ADMIN_ONLY(201) },
  { route: 'GET /regions/{region}', method: 'GET', path: () => '/regions/local', expect: ADMIN_ONLY(200) },
  { route: 'DELETE /regions/{region}', method: 'DELETE', path: () => '/regions/empty', expect: ADMIN_ONLY(204) },
  { route: 'GET /regions/{region}/cells', method: 'GET', path: () => '/regions/local/cells', expect: ADMIN_ONLY(200) },
  {
    route: 'POST /regions/{region}/cells',
    method: 'POST',
    path: () => '/regions/local/cells',
    body: 'fresh-cell',
    expect: ADMIN_ONLY(201),
  },
  {
    route: 'GET /regions/{region}/cells/{cell}',
    method: 'GET',
    path: () => '/regions/local/cells/cell-x',
    expect: ADMIN_ONLY(200),
  },
  {
    route: 'PATCH /regions/{region}/cells/{cell}',
    method: 'PATCH',
    path: () => '/regions/local/cells/cell-x',
    body: { state: 'cordoned' },
    expect: ADMIN_ONLY(200),
  },
  {
    route: 'DELETE /regions/{region}/cells/{cell}',
    method: 'DELETE',
    path: () => '/regions/local/cells/cell-y',
    expect: ADMIN_ONLY(204),
  },
  {
    route: 'PUT /admin/quotas/{user}',
    method: 'PUT',
    path: () => '/admin/quotas/dev1',
    body: { maxApps: 100 },
    expect: ADMIN_ONLY(200),
  },
  { route: 'GET /admin/quotas/{user}', method: 'GET', path: () => '/admin/quotas/dev1', expect: ADMIN_ONLY(200) },
  { route: 'GET /admin/stats', method: 'GET', path: () => '/admin/stats', expect: ADMIN_ONLY(200) },
];

/** Bodies that must be unique per case. */
function bodyFor(c: Case): unknown {
  const n = ++counter;
  switch (c.body) {
    case 'fresh-app':
      return appBody(`fresh-${n}`);
    case 'fresh-user':
      return { username: `user-${n}`, password: 'a-long-password' };
    case 'fresh-region':
      return { name: `region-${n}` };
    case 'fresh-cell':
      return { name: `cell-${n}`, apiServer: 'https://127.0.0.1:6443' };
    default:
      return c.body;
  }
}

/** Per-case fixtures outside apps: regions and cells that admin routes act on. */
async function adminFixtures(): Promise<void> {
  await api.call('POST', '/regions', { token: api.adminToken, body: { name: 'empty' } });
  for (const cell of ['cell-x', 'cell-y']) {
    await api.call('POST', '/regions/local/cells', {
      token: api.adminToken,
      body: { name: cell, apiServer: 'https://127.0.0.1:6443' },
    });
  }
}

describe('every role against every route', () => {
  for (const c of CASES) {
    it(`${c.route}: ${CALLERS.map((k) => `${k} ${c.expect[k]}`).join(', ')}`, async () => {
      const got = {} as Record<Caller, number>;
      for (const caller of CALLERS) {
        const app = await fixture();
        await adminFixtures();
        const body = bodyFor(c);
        const res = await api.call(c.method, c.path(app), {
          token: tokens[caller],
          ...(body !== undefined ? { body } : {}),
        });
        got[caller] = res.status;
      }
      expect(got).toEqual(c.expect);
    });
  }

  it('no token is 401 on every route but login', async () => {
    const app = await fixture();
    for (const c of CASES) {
      const res = await api.call(c.method, c.path(app), c.body ? { body: bodyFor(c) } : {});
      expect(res.status, c.route).toBe(401);
    }
  });

  it('a read-only token cannot change anything its user could', async () => {
    const app = await fixture();
    const created = await api.call('POST', '/tokens', { token: tokens.Owner, body: { name: 'ro', scopes: ['read'] } });
    const readOnly = created.json.token as string;
    expect((await api.call('GET', `/apps/${app}`, { token: readOnly })).status).toBe(200);
    const res = await api.call('PATCH', `/apps/${app}`, { token: readOnly, body: { description: 'x' } });
    expect(res.status).toBe(403);
    expect(res.json.detail).toContain('"write" scope');
  });
});
