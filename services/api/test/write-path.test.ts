/**
 * The write path as a user sees it: Idempotency-Key on POST, events that survive a NATS outage
 * (and the API killed during it), and an app's history that belongs to that app alone.
 */
import { randomUUID } from 'node:crypto';
import { type PrivateNats, startPrivateNats, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appBody, ensureRegion, startApi, type TestApi } from './harness.ts';

let api: TestApi;

beforeAll(async () => {
  api = await startApi();
  await ensureRegion(api);
});

afterAll(async () => {
  await api?.stop();
});

describe('Idempotency-Key', () => {
  it('a repeat gets the first answer; another body with the same key gets 422', async () => {
    const app = `idem-${randomUUID().slice(0, 8)}`;
    const token = api.adminToken;
    expect((await api.call('POST', '/apps', { token, body: appBody(app) })).status).toBe(201);
    const key = randomUUID();
    const first = await api.call('POST', `/apps/${app}/versions`, {
      token,
      body: { imageTag: 'a', replicas: 1 },
      headers: { 'idempotency-key': key },
    });
    expect(first.status).toBe(201);
    const again = await api.call('POST', `/apps/${app}/versions`, {
      token,
      body: { imageTag: 'a', replicas: 1 },
      headers: { 'idempotency-key': key },
    });
    expect(again.status).toBe(201);
    expect(again.json).toEqual(first.json);
    expect(again.headers.get('etag')).toBe(first.headers.get('etag'));
    expect(again.headers.get('location')).toBe(first.headers.get('location'));
    const other = await api.call('POST', `/apps/${app}/versions`, {
      token,
      body: { imageTag: 'b', replicas: 1 },
      headers: { 'idempotency-key': key },
    });
    expect(other.status).toBe(422);
    expect(other.json.type).toMatch(/idempotency-mismatch$/);
    const versions = await api.call('GET', `/apps/${app}/versions`, { token });
    expect(versions.json.items.map((v: { name: string }) => v.name)).toEqual(['v1']);
  });

  it('ten concurrent requests with one key make one change and all get its answer', async () => {
    const app = `idem-${randomUUID().slice(0, 8)}`;
    const token = api.adminToken;
    expect((await api.call('POST', '/apps', { token, body: appBody(app) })).status).toBe(201);
    const key = randomUUID();
    const answers = await Promise.all(
      Array.from({ length: 10 }, () =>
        api.call('POST', `/apps/${app}/versions`, {
          token,
          body: { imageTag: 'a', replicas: 1 },
          headers: { 'idempotency-key': key },
        }),
      ),
    );
    expect(answers.map((a) => a.status)).toEqual(Array(10).fill(201));
    expect(new Set(answers.map((a) => a.json.name))).toEqual(new Set(['v1']));
    const versions = await api.call('GET', `/apps/${app}/versions`, { token });
    expect(versions.json.items).toHaveLength(1);
  });

  it('a token is never stored, so its repeat is 409; login ignores the header', async () => {
    const token = await api.user(`idem${randomUUID().slice(0, 6)}`);
    const key = randomUUID();
    const body = { name: 'ci', scopes: ['read'] };
    const first = await api.call('POST', '/tokens', { token, body, headers: { 'idempotency-key': key } });
    expect(first.status).toBe(201);
    expect(first.json.token).toBeTruthy();
    const again = await api.call('POST', '/tokens', { token, body, headers: { 'idempotency-key': key } });
    expect(again.status).toBe(409);
    expect(JSON.stringify(again.json)).not.toContain(first.json.token);
    expect((await api.call('GET', '/tokens', { token })).json.items).toHaveLength(1);

    const login = () =>
      api.call('POST', '/auth/login', {
        body: { username: 'admin', password: 'admin-password-for-tests' },
        headers: { 'idempotency-key': key },
      });
    const [a, b] = [await login(), await login()];
    expect([a.status, b.status]).toEqual([200, 200]);
    expect(a.json.token).not.toBe(b.json.token);
  });
});

describe('an app history belongs to that app', () => {
  it('a new app of a deleted app’s name sees only its own events', async () => {
    const name = `reborn-${randomUUID().slice(0, 8)}`;
    const alice = await api.user(`alice${randomUUID().slice(0, 6)}`);
    const bob = await api.user(`bob${randomUUID().slice(0, 6)}`);
    expect((await api.call('POST', '/apps', { token: alice, body: appBody(name) })).status).toBe(201);
    await api.call('POST', `/apps/${name}/versions`, {
      token: alice,
      body: { imageTag: 'a', replicas: 1, env: { SHOP_SECRET_PLAN: 'alice-only' } },
    });
    await api.call('POST', `/apps/${name}/versions/v1/scale`, { token: alice, body: { replicas: 2 } });
    expect((await api.call('DELETE', `/apps/${name}`, { token: alice })).status).toBe(204);

    expect((await api.call('POST', '/apps', { token: bob, body: appBody(name) })).status).toBe(201);
    const feed = await waitFor(
      async () => {
        const res = await api.call('GET', `/apps/${name}/events?limit=50`, { token: bob });
        return res.json.items.length >= 1 ? res.json.items : undefined;
      },
      { timeoutMs: 10_000, message: "bob's app-created event in the feed" },
    );
    expect(feed.map((e: { action: string; actor: { name: string } }) => [e.action, e.actor.name])).toEqual([
      ['created', expect.stringMatching(/^bob/)],
    ]);
    expect(JSON.stringify(feed)).not.toContain('alice-only');
    expect((await api.call('GET', `/apps/${name}/events`, { token: alice })).status).toBe(404);
  });
});

describe('events through a NATS outage', () => {
  let nats: PrivateNats;
  let outage: TestApi;

  beforeAll(async () => {
    nats = await startPrivateNats();
    outage = await startApi({ NATS_URL: nats.url });
    await ensureRegion(outage);
  });

  afterAll(async () => {
    await outage?.stop();
    await nats?.destroy();
  });

  it('a scale while NATS is down answers 200, and its event reaches the feed once when NATS is back', async () => {
    const app = `outage-${randomUUID().slice(0, 8)}`;
    const token = outage.adminToken;
    expect((await outage.call('POST', '/apps', { token, body: appBody(app) })).status).toBe(201);
    expect((await outage.call('POST', `/apps/${app}/versions`, { token, body: { imageTag: 'a' } })).status).toBe(201);

    await nats.kill();
    for (const replicas of [3, 4, 5]) {
      const res = await outage.call('POST', `/apps/${app}/versions/v1/scale`, { token, body: { replicas } });
      expect(res.status).toBe(200);
    }
    await nats.start();

    const scaled = await waitFor(
      async () => {
        const res = await outage.call('GET', `/apps/${app}/events?limit=50`, { token });
        if (res.status !== 200) return undefined;
        const items = res.json.items.filter((e: { action: string }) => e.action === 'scaled');
        return items.length >= 3 ? items : undefined;
      },
      { timeoutMs: 30_000, message: 'three scaled events in the feed' },
    );
    expect(scaled.map((e: { after: { replicas: number } }) => e.after.replicas)).toEqual([5, 4, 3]);
  });
});
