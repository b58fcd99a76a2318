/**
 * App secrets and env visibility (docs/secrets.md, issue 13), against the region's real etcd and
 * NATS: a secret's value is sealed at rest and never comes back out, not in any answer, event, log
 * line or etcd value; plain env values need Developer or above, and no event carries them.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { createEtcdClient } from '@berth/shared/etcd';
import { EventSubjects } from '@berth/shared/events';
import { NatsClient, readEvents } from '@berth/shared/nats';
import { appSecretRecordSchema, SecretsKeyring } from '@berth/shared/secrets';
import { regionCredentials, regionEnv, uniqueId, waitFor } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appBody, ensureRegion, startApi, type TestApi } from './harness.ts';

const KEYS = `k1:${randomBytes(32).toString('hex')}`;
const keyring = new SecretsKeyring(KEYS);

let api: TestApi;
let owner: string;
let master: string;
let developer: string;
let reporter: string;
let guest: string;
let n = 0;
const id = uniqueId(4);
const fresh = (base: string) => `${base}-${id}-${++n}`;
/** Every answer of the API in this file, to search for values that must never be in one. */
const answers: string[] = [];

async function call(method: string, path: string, token: string, body?: unknown) {
  const res = await api.call(method, path, { token, ...(body !== undefined ? { body } : {}) });
  answers.push(`${res.status} ${JSON.stringify(res.body)} ${[...res.headers.entries()].join(' ')}`);
  return res;
}

/** An app owned by `owner` with the others as members by role. */
async function appWithMembers(): Promise<string> {
  const app = fresh('sec');
  expect((await call('POST', '/apps', owner, appBody(app))).status).toBe(201);
  for (const [user, role] of [
    [`sec-master-${id}`, 'Master'],
    [`sec-dev-${id}`, 'Developer'],
    [`sec-reporter-${id}`, 'Reporter'],
    [`sec-guest-${id}`, 'Guest'],
  ]) {
    expect((await call('PUT', `/apps/${app}/members/${user}`, owner, { role })).status).toBe(200);
  }
  return app;
}

function etcd() {
  const env = regionEnv();
  return createEtcdClient({
    endpoints: (env.ETCD_ENDPOINTS ?? '').split(','),
    ...regionCredentials(env).etcd,
  });
}

async function allEvents(): Promise<string> {
  const nats = await NatsClient.connect({
    servers: (regionEnv().NATS_URL ?? '').split(','),
    name: 'secrets-test',
    ...regionCredentials().nats,
  });
  try {
    const subjects = new EventSubjects(api.subjectRoot);
    const events = await readEvents(nats.js, subjects, { filter: subjects.allEvents(), max: 100_000 });
    return JSON.stringify(events);
  } finally {
    await nats.drain();
  }
}

beforeAll(async () => {
  api = await startApi({ BERTH_SECRETS_KEYS: KEYS });
  await ensureRegion(api);
  owner = await api.user(`sec-owner-${id}`);
  master = await api.user(`sec-master-${id}`);
  developer = await api.user(`sec-dev-${id}`);
  reporter = await api.user(`sec-reporter-${id}`);
  guest = await api.user(`sec-guest-${id}`);
});

afterAll(async () => {
  await api?.stop();
});

describe('plain env', () => {
  it('a Guest and a Reporter see env names without values; a Developer sees the values', async () => {
    const app = await appWithMembers();
    const env = { DATABASE_URL: 'postgres://shop:pw-in-url-77@db/shop', MODE: 'prod' };
    expect((await call('POST', `/apps/${app}/versions`, owner, { imageTag: 'a', replicas: 0, env })).status).toBe(201);
    for (const token of [guest, reporter]) {
      const one = await call('GET', `/apps/${app}/versions/v1`, token);
      expect(one.status).toBe(200);
      expect(one.json.env).toEqual({ DATABASE_URL: null, MODE: null });
      const list = await call('GET', `/apps/${app}/versions`, token);
      expect(list.json.items[0].env).toEqual({ DATABASE_URL: null, MODE: null });
    }
    for (const token of [developer, master, owner, api.adminToken]) {
      expect((await call('GET', `/apps/${app}/versions/v1`, token)).json.env).toEqual(env);
      expect((await call('GET', `/apps/${app}/versions`, token)).json.items[0].env).toEqual(env);
    }
  });

  it('no event carries an env value, whatever its name says', async () => {
    const app = await appWithMembers();
    const env = { DATABASE_URL: 'postgres://u:hunter-in-url-42@db/x', STRIPE_SK: 'sk_live_plain-env-99', MODE: 'prod' };
    await call('POST', `/apps/${app}/versions`, owner, { imageTag: 'a', replicas: 0, env });
    await call('POST', `/apps/${app}/versions`, owner, { imageTag: 'b', replicas: 0 });
    expect((await call('DELETE', `/apps/${app}/versions/v1`, owner)).status).toBe(204);
    const feed = await call('GET', `/apps/${app}/events`, guest);
    const versionEvents = feed.json.items.filter((e: { kind: string }) => e.kind === 'version');
    expect(versionEvents.map((e: { action: string }) => e.action)).toEqual(['deleted', 'created', 'created']);
    for (const e of versionEvents) {
      expect((e.after ?? e.before).env).toEqual({
        DATABASE_URL: '[redacted]',
        STRIPE_SK: '[redacted]',
        MODE: '[redacted]',
      });
    }
    const stored = await allEvents();
    expect(stored).toContain(app);
    for (const value of Object.values(env)) {
      expect(stored).not.toContain(value);
      expect(JSON.stringify(feed.json)).not.toContain(value);
    }
  });

  it('the feed hides env values of version events stored before they were redacted', async () => {
    const app = await appWithMembers();
    const { incarnation } = (await call('GET', `/apps/${app}`, owner)).json;
    // An event as the API wrote it before: the version with its env values, redacted by key name.
    const nats = await NatsClient.connect({
      servers: (regionEnv().NATS_URL ?? '').split(','),
      name: 'secrets-test',
      ...regionCredentials().nats,
    });
    try {
      const subjects = new EventSubjects(api.subjectRoot);
      const old = {
        v: 1,
        id: randomUUID(),
        time: new Date().toISOString(),
        actor: { type: 'user', name: `sec-owner-${id}` },
        kind: 'version',
        resourceId: app,
        incarnation,
        resourceName: 'v1',
        action: 'created',
        after: { name: 'v1', env: { STRIPE_SK: 'sk_live_stored-before-42', DB_PASSWORD: '[redacted]' } },
      };
      await nats.js.publish(subjects.event('version', app, 'created'), JSON.stringify(old), { msgID: old.id });
    } finally {
      await nats.drain();
    }
    const feed = await call('GET', `/apps/${app}/events`, guest);
    const shown = feed.json.items.find((e: { kind: string }) => e.kind === 'version');
    expect(shown.after.env).toEqual({ STRIPE_SK: '[redacted]', DB_PASSWORD: '[redacted]' });
    expect(JSON.stringify(feed.json)).not.toContain('sk_live_stored-before-42');
  });
});

describe('secrets', () => {
  it('only an Owner or a Master sets or deletes a secret; members see names and fingerprints', async () => {
    const app = await appWithMembers();
    const value = `dev-tries-${uniqueId()}`;
    for (const token of [developer, reporter, guest]) {
      const refused = await call('PUT', `/apps/${app}/secrets/API_KEY`, token, { value });
      expect(refused.status).toBe(403);
      expect(refused.json.requiredRole).toBe('Master');
    }
    const stranger = await api.user(`sec-stranger-${id}`);
    expect((await call('PUT', `/apps/${app}/secrets/API_KEY`, stranger, { value })).status).toBe(404);
    expect((await call('GET', `/apps/${app}/secrets`, stranger)).status).toBe(404);

    const created = await call('PUT', `/apps/${app}/secrets/API_KEY`, master, { value });
    expect(created.status).toBe(201);
    expect(created.headers.get('location')).toBe(`/api/v1/apps/${app}/secrets/API_KEY`);
    expect(created.json).toEqual({
      name: 'API_KEY',
      fingerprint: keyring.fingerprint(app, 'API_KEY', value),
      updatedAt: expect.any(String),
      updatedBy: `sec-master-${id}`,
    });
    for (const token of [guest, reporter, developer]) {
      const list = await call('GET', `/apps/${app}/secrets`, token);
      expect(list.status).toBe(200);
      expect(list.json).toEqual({ items: [created.json], next: null });
      expect((await call('GET', `/apps/${app}/secrets/API_KEY`, token)).json).toEqual(created.json);
    }
    // The same value again: the same fingerprint; another: another.
    const same = await call('PUT', `/apps/${app}/secrets/API_KEY`, owner, { value });
    expect(same.status).toBe(200);
    expect(same.json.fingerprint).toBe(created.json.fingerprint);
    const other = await call('PUT', `/apps/${app}/secrets/API_KEY`, owner, { value: `${value}-2` });
    expect(other.json.fingerprint).not.toBe(created.json.fingerprint);
    expect(other.json.updatedBy).toBe(`sec-owner-${id}`);

    expect((await call('DELETE', `/apps/${app}/secrets/API_KEY`, developer)).status).toBe(403);
    expect((await call('DELETE', `/apps/${app}/secrets/API_KEY`, master)).status).toBe(204);
    expect((await call('GET', `/apps/${app}/secrets/API_KEY`, guest)).status).toBe(404);
    expect((await call('DELETE', `/apps/${app}/secrets/API_KEY`, master)).status).toBe(404);
    expect((await call('GET', `/apps/${app}/secrets`, guest)).json.items).toEqual([]);
  });

  it('a bad name or value is a problem naming the field, without the value', async () => {
    const app = await appWithMembers();
    const badName = await call('PUT', `/apps/${app}/secrets/9-lives`, owner, { value: 'x' });
    expect(badName.status).toBe(400);
    expect(badName.headers.get('content-type')).toContain('application/problem+json');
    expect(badName.json.errors).toEqual([
      { path: 'path:name', message: expect.stringContaining('environment variable') },
    ]);
    const notString = await call('PUT', `/apps/${app}/secrets/A`, owner, { value: 42 });
    expect(notString.status).toBe(400);
    expect(notString.json.errors).toEqual([{ path: '$.value', message: expect.any(String) }]);
    const huge = `huge-${uniqueId()}-${'x'.repeat(70_000)}`;
    const tooLong = await call('PUT', `/apps/${app}/secrets/A`, owner, { value: huge });
    expect(tooLong.status).toBe(400);
    expect(tooLong.json.errors).toEqual([{ path: '$.value', message: expect.any(String) }]);
    expect(JSON.stringify(tooLong.json)).not.toContain(huge.slice(0, 16));
    const extra = await call('PUT', `/apps/${app}/secrets/A`, owner, { value: 'v', sealed: 'x' });
    expect(extra.status).toBe(400);
    expect((await call('PUT', `/apps/${app}/secrets/A`, owner, {})).json.errors[0].path).toBe('$.value');
  });

  it("a secret's value is in no answer, event, log line or etcd value; etcd holds it sealed", async () => {
    const app = await appWithMembers();
    const value = `sk_live_${uniqueId(16)}`;
    const encoded = Buffer.from(value).toString('base64');
    await call('POST', `/apps/${app}/versions`, owner, { imageTag: 'a', replicas: 0, env: { MODE: 'prod' } });
    expect((await call('PUT', `/apps/${app}/secrets/STRIPE_SK`, master, { value })).status).toBe(201);
    expect((await call('PUT', `/apps/${app}/secrets/STRIPE_SK`, master, { value })).status).toBe(200);
    expect((await call('PUT', `/apps/${app}/secrets/OTHER`, owner, { value: `${value}-other` })).status).toBe(201);
    expect((await call('DELETE', `/apps/${app}/secrets/OTHER`, owner)).status).toBe(204);
    // Every route that shows the app, its versions, secrets and activity, by every role.
    for (const token of [owner, master, developer, reporter, guest, api.adminToken]) {
      for (const path of [
        `/apps/${app}`,
        '/apps',
        `/apps/${app}/versions`,
        `/apps/${app}/versions/v1`,
        `/apps/${app}/status`,
        `/apps/${app}/secrets`,
        `/apps/${app}/secrets/STRIPE_SK`,
        `/apps/${app}/events`,
      ]) {
        expect((await call('GET', path, token)).status).toBe(200);
      }
    }
    for (const answer of answers) {
      expect(answer).not.toContain(value);
      expect(answer).not.toContain(encoded);
    }

    // The feed shows the changes with fingerprints.
    const feed = await call('GET', `/apps/${app}/events`, guest);
    const secretEvents = feed.json.items.filter((e: { kind: string }) => e.kind === 'app-secret');
    expect(secretEvents.map((e: { resourceName: string; action: string }) => `${e.resourceName} ${e.action}`)).toEqual([
      'OTHER deleted',
      'OTHER set',
      'STRIPE_SK set',
      'STRIPE_SK set',
    ]);
    expect(secretEvents[3].after.fingerprint).toBe(keyring.fingerprint(app, 'STRIPE_SK', value));

    // JetStream: every stored event of this API.
    const events = await waitFor(
      async () => {
        const text = await allEvents();
        return text.includes('"OTHER"') && text.includes('"deleted"') ? text : undefined;
      },
      { message: 'the secret events in JetStream' },
    );
    expect(events).not.toContain(value);
    expect(events).not.toContain(encoded);

    // etcd: every key under the API's prefix; the record opens with the keyring.
    const client = etcd();
    try {
      const all = await client.getAll().prefix(`${api.prefix}/`).strings();
      expect(Object.keys(all).length).toBeGreaterThan(5);
      for (const [key, raw] of Object.entries(all)) {
        expect(raw, key).not.toContain(value);
        expect(raw, key).not.toContain(encoded);
      }
      const key = Object.keys(all).find((k) => k.endsWith(`/apps/${app}/secrets/STRIPE_SK`)) as string;
      const record = appSecretRecordSchema.parse(JSON.parse(all[key] as string));
      expect(record.sealed.startsWith('v1.k1.')).toBe(true);
      expect(keyring.open(app, 'STRIPE_SK', record.sealed)).toBe(value);
      // Sealed for this app and name: moved to another name, it does not open.
      expect(() => keyring.open(app, 'OTHER', record.sealed)).toThrow(/does not open/);
    } finally {
      client.close();
    }

    // Logs: nothing of the value in any line the API wrote.
    expect(api.logs()).not.toContain(value);
    expect(api.logs()).not.toContain(encoded);
  });

  it('deleting an app deletes its secrets; a new app of its name has none', async () => {
    const app = await appWithMembers();
    await call('PUT', `/apps/${app}/secrets/TOKEN_A`, owner, { value: 'a-value-1' });
    await call('PUT', `/apps/${app}/secrets/TOKEN_B`, owner, { value: 'b-value-2' });
    expect((await call('DELETE', `/apps/${app}`, owner)).status).toBe(204);
    const client = etcd();
    try {
      expect(await client.getAll().prefix(`${api.prefix}/apps/${app}/secrets/`).keys()).toEqual([]);
    } finally {
      client.close();
    }
    expect((await call('POST', '/apps', owner, appBody(app))).status).toBe(201);
    expect((await call('GET', `/apps/${app}/secrets`, owner)).json.items).toEqual([]);
  });

  it('an If-Match on a secret that changed meanwhile is refused', async () => {
    const app = await appWithMembers();
    const first = await call('PUT', `/apps/${app}/secrets/DB_PASS`, owner, { value: 'one-value' });
    const tag = first.headers.get('etag') as string;
    expect((await call('GET', `/apps/${app}/secrets/DB_PASS`, guest)).headers.get('etag')).toBe(tag);
    await call('PUT', `/apps/${app}/secrets/DB_PASS`, owner, { value: 'two-value' });
    const stale = await api.call('PUT', `/apps/${app}/secrets/DB_PASS`, {
      token: owner,
      body: { value: 'three-value' },
      headers: { 'if-match': tag },
    });
    expect(stale.status).toBe(412);
    const missing = await api.call('PUT', `/apps/${app}/secrets/NOT_YET`, {
      token: owner,
      body: { value: 'x' },
      headers: { 'if-match': tag },
    });
    expect(missing.status).toBe(412);
  });
});

describe('without BERTH_SECRETS_KEYS', () => {
  it('setting a secret answers 503; listing still answers', async () => {
    const bare = await startApi();
    try {
      await ensureRegion(bare);
      const user = await bare.user(`sec-bare-${id}`);
      const app = fresh('bare');
      expect((await bare.call('POST', '/apps', { token: user, body: appBody(app) })).status).toBe(201);
      const res = await bare.call('PUT', `/apps/${app}/secrets/API_KEY`, { token: user, body: { value: 'v' } });
      expect(res.status).toBe(503);
      expect(res.headers.get('content-type')).toContain('application/problem+json');
      expect(res.json.detail).toContain('secrets are not configured');
      expect((await bare.call('GET', `/apps/${app}/secrets`, { token: user })).json.items).toEqual([]);
    } finally {
      await bare.stop();
    }
  });
});
