/**
 * Resource abuse (issue 13): a user without a quota of their own has the default one; a request
 * whose handler runs past HTTP_REQUEST_TIMEOUT gets 503 problem+json; listing apps shows a
 * member their apps only, among many.
 */
import { Writable } from 'node:stream';
import { parseEnv } from '@berth/shared/config';
import { createLogger } from '@berth/shared/logging';
import { regionAuthEnv, regionEnv, uniqueId } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiEnv } from '../src/env.ts';
import { ApiService } from '../src/service.ts';
import { ADMIN_PASSWORD, appBody, deleteTestStreams, ensureRegion, startApi, type TestApi } from './harness.ts';

let api: TestApi;

beforeAll(async () => {
  api = await startApi({ DEFAULT_QUOTA_APPS: '2', DEFAULT_QUOTA_CPU: '1', DEFAULT_QUOTA_MEMORY: '1Gi' });
  await ensureRegion(api);
});

afterAll(async () => {
  await api?.stop();
});

describe('the default quota', () => {
  it('applies to a new user, and their own quota replaces it', async () => {
    const user = `dq-${uniqueId(6)}`;
    const token = await api.user(user);
    const app = `dq-a-${uniqueId(6)}`;
    expect((await api.call('POST', '/apps', { token, body: appBody(app) })).status).toBe(201);
    expect((await api.call('POST', '/apps', { token, body: appBody(`dq-b-${uniqueId(6)}`) })).status).toBe(201);
    const third = await api.call('POST', '/apps', { token, body: appBody(`dq-c-${uniqueId(6)}`) });
    expect(third.status).toBe(403);
    expect(third.json.detail).toContain(`default quota of ${user} exceeded: apps: 3 would exceed the limit of 2`);
    // 3 × 500m = 1.5 cpu > the default 1.
    const big = await api.call('POST', `/apps/${app}/versions`, {
      token,
      body: { imageTag: 'v1', replicas: 3, cpu: '500m', memory: '128Mi' },
    });
    expect(big.status).toBe(403);
    expect(big.json.quota.cpu).toEqual({ limit: '1', used: '0', requested: '1500m' });
    const fits = await api.call('POST', `/apps/${app}/versions`, {
      token,
      body: { imageTag: 'v1', replicas: 2, cpu: '500m', memory: '128Mi' },
    });
    expect(fits.status).toBe(201);

    // An admin's quota for the user replaces the default.
    const put = await api.call('PUT', `/admin/quotas/${user}`, { token: api.adminToken, body: { maxApps: 3 } });
    expect(put.status).toBe(200);
    expect((await api.call('POST', '/apps', { token, body: appBody(`dq-d-${uniqueId(6)}`) })).status).toBe(201);
  });

  it('does not limit an admin without a quota', async () => {
    for (let i = 0; i < 3; i++) {
      const res = await api.call('POST', '/apps', { token: api.adminToken, body: appBody(`dq-adm-${uniqueId(6)}`) });
      expect(res.status).toBe(201);
    }
  });
});

describe('listing apps', () => {
  it('shows a member their apps only, among many', async () => {
    const ownerName = `many-${uniqueId(6)}`;
    const owner = await api.user(ownerName);
    // The admin's apps (no quota) fill the region; the member owns one and is a Guest of another.
    const others = await Promise.all(
      Array.from({ length: 40 }, async (_, i) => {
        const name = `many-${String(i).padStart(2, '0')}-${uniqueId(4)}`;
        const res = await api.call('POST', '/apps', { token: api.adminToken, body: appBody(name) });
        expect(res.status).toBe(201);
        return name;
      }),
    );
    const own = `many-own-${uniqueId(6)}`;
    expect((await api.call('POST', '/apps', { token: owner, body: appBody(own) })).status).toBe(201);
    const guestOf = others[7] as string;
    const add = await api.call('PUT', `/apps/${guestOf}/members/${ownerName}`, {
      token: api.adminToken,
      body: { role: 'Guest' },
    });
    expect(add.status).toBeLessThan(300);

    const first = await api.call('GET', '/apps?limit=1', { token: owner });
    expect(first.status).toBe(200);
    const second = await api.call('GET', `/apps?limit=10&cursor=${first.json.next}`, { token: owner });
    const seen = [...first.json.items, ...second.json.items].map((a: { name: string; role: string }) => [
      a.name,
      a.role,
    ]);
    expect(seen).toEqual(
      [
        [own, 'Owner'],
        [guestOf, 'Guest'],
      ].sort((a, b) => (a[0] as string).localeCompare(b[0] as string)),
    );
    expect(second.json.next).toBeNull();
  });
});

describe('the request deadline', () => {
  it('answers 503 problem+json for a handler that runs too long (a login hashing a password)', async () => {
    const id = uniqueId();
    const region = regionEnv();
    // Password hashing at its real cost takes well over 50 ms; health and the OpenAPI document do not.
    const config = parseEnv(apiEnv, {
      HTTP_ADDR: '127.0.0.1:0',
      ETCD_ENDPOINTS: region.ETCD_ENDPOINTS,
      NATS_URL: region.NATS_URL,
      REDIS_URL: region.REDIS_URL,
      ...regionAuthEnv(region),
      ETCD_PREFIX: `/t-${id}`,
      EVENT_SUBJECT_ROOT: `t${id}`,
      BERTH_ADMIN_PASSWORD: ADMIN_PASSWORD,
      PASSWORD_HASH_LOG_N: '17',
      HTTP_REQUEST_TIMEOUT: '50ms',
    });
    const service = ApiService.create(
      config,
      createLogger({ service: 'api', level: 'silent', destination: new Writable({ write: (_c, _e, done) => done() }) }),
    );
    await service.start();
    try {
      const url = service.runtime.http.url;
      const login = await fetch(`${url}/api/v1/auth/login`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ username: 'admin', password: ADMIN_PASSWORD }),
      });
      expect(login.status).toBe(503);
      expect(login.headers.get('content-type')).toContain('application/problem+json');
      expect(login.headers.get('retry-after')).toBe('1');
      expect(((await login.json()) as { detail: string }).detail).toContain('within 50 ms');
      expect((await fetch(`${url}/healthz`)).status).toBe(200);
      expect((await fetch(`${url}/api/v1/openapi.json`)).status).toBe(200);
    } finally {
      await service.stop();
      await deleteTestStreams(`t${id}`);
    }
  });
});
