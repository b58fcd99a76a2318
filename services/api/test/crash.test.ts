/**
 * The API holds no state of its own: killed (SIGKILL) in the middle of many multi-key writes and
 * started again, it finds nothing half written, and carries on.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { createEtcdClient } from '@berth/shared/etcd';
import { BerthKeys } from '@berth/shared/keys';
import { appSchema, memberSchema, versionSchema } from '@berth/shared/model';
import {
  exited,
  freePort,
  REPO_ROOT,
  regionAuthEnv,
  regionCredentials,
  regionEnv,
  startPrivateNats,
  uniqueId,
  waitFor,
} from '@berth/shared/testing';
import { afterEach, describe, expect, it } from 'vitest';
import { appBody } from './harness.ts';

const env = regionEnv();
const id = uniqueId();
const prefix = `/t-${id}`;
let child: ChildProcess | undefined;
let base = '';

async function startApi(natsUrl = env.NATS_URL): Promise<void> {
  const port = await freePort();
  base = `http://127.0.0.1:${port}/api/v1`;
  child = spawn(process.execPath, [join(REPO_ROOT, 'services/api/src/index.ts')], {
    env: {
      PATH: process.env.PATH,
      HTTP_ADDR: `127.0.0.1:${port}`,
      ETCD_ENDPOINTS: env.ETCD_ENDPOINTS,
      NATS_URL: natsUrl,
      REDIS_URL: env.REDIS_URL,
      // A private NATS has no auth: the region's NATS credentials only with the region's NATS.
      ...regionAuthEnv(env, natsUrl === env.NATS_URL ? ['etcd', 'nats', 'redis'] : ['etcd', 'redis']),
      ETCD_PREFIX: prefix,
      EVENT_SUBJECT_ROOT: `t${id}`,
      BERTH_ADMIN_PASSWORD: 'crash-test-admin',
      LOG_LEVEL: process.env.CRASH_LOG_LEVEL ?? 'error',
    },
    stdio: process.env.CRASH_LOG_LEVEL ? 'inherit' : 'ignore',
  });
  await waitFor(async () => (await fetch(base.replace('/api/v1', '/readyz'))).ok, { timeoutMs: 20_000 });
}

async function call(method: string, path: string, token?: string, body?: unknown, key?: string) {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: {
      'content-type': 'application/json',
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...(key ? { 'idempotency-key': key } : {}),
    },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : undefined };
}

// One API at a time: a leftover one would relay this prefix's outbox to its own NATS.
afterEach(async () => {
  if (child && child.exitCode === null) {
    const dead = exited(child);
    child.kill('SIGKILL');
    await dead;
  }
});

describe('a crash in the middle of writes', () => {
  it('leaves nothing half written, and the restarted API carries on', async () => {
    await startApi();
    const token = (await call('POST', '/auth/login', undefined, { username: 'admin', password: 'crash-test-admin' }))
      .json.token;
    await call('POST', '/regions', token, { name: 'local' });

    // Many app and version creates in flight (each is a multi-key transaction)…
    const inflight: Promise<unknown>[] = [];
    for (let i = 0; i < 40; i++) {
      inflight.push(
        call('POST', '/apps', token, appBody(`crash-${i}`))
          .then(() => call('POST', `/apps/crash-${i}/versions`, token, { imageTag: 'a', replicas: 1 }))
          .catch(() => undefined), // the connection dies with the process: expected
      );
    }
    // …and the process is killed while they run.
    await waitFor(async () => (await call('GET', '/apps?limit=500', token)).json.items.length >= 5, { intervalMs: 5 });
    const dead = exited(child as ChildProcess);
    child?.kill('SIGKILL');
    await dead;
    await Promise.all(inflight);

    const etcd = createEtcdClient({ endpoints: (env.ETCD_ENDPOINTS ?? '').split(','), ...regionCredentials(env).etcd });
    try {
      const keys = new BerthKeys(prefix);
      const all = await etcd.getAll().prefix(keys.apps()).strings();
      const apps = Object.entries(all).filter(([k]) => !k.slice(keys.apps().length).includes('/'));
      expect(apps.length).toBeGreaterThan(0);
      for (const [key, raw] of apps) {
        const app = appSchema.parse(JSON.parse(raw));
        // The app and its Owner were written together, or not at all.
        const owner = all[keys.member(app.name, app.owner)];
        expect(owner, `${key} has its owner`).toBeDefined();
        expect(memberSchema.parse(JSON.parse(owner as string)).role).toBe('Owner');
        // A version exists only with the app's counter at or past it.
        for (const [vk, vraw] of Object.entries(all).filter(([k]) => k.startsWith(keys.versions(app.name)))) {
          expect(versionSchema.parse(JSON.parse(vraw)).number, vk).toBeLessThanOrEqual(app.lastVersion);
        }
      }
      // Nothing belongs to an app that does not exist.
      for (const key of Object.keys(all)) {
        const app = key.slice(keys.apps().length).split('/')[0] as string;
        expect(all[keys.app(app)], `${key} belongs to an existing app`).toBeDefined();
      }
    } finally {
      etcd.close();
    }

    await startApi();
    const again = (await call('POST', '/auth/login', undefined, { username: 'admin', password: 'crash-test-admin' }))
      .json.token;
    const listed = await call('GET', '/apps?limit=500', again);
    const name = listed.json.items[0].name as string;
    const next = await call('POST', `/apps/${name}/versions`, again, { imageTag: 'after-restart' });
    expect(next.status).toBe(201);
  });

  it('twenty version creates with Idempotency-Keys, the API killed mid-way, retried: exactly twenty versions', async () => {
    await startApi();
    const token = (await call('POST', '/auth/login', undefined, { username: 'admin', password: 'crash-test-admin' }))
      .json.token;
    await call('POST', '/regions', token, { name: 'local' });
    const app = `idem-crash-${uniqueId()}`;
    expect((await call('POST', '/apps', token, appBody(app))).status).toBe(201);

    const keys = Array.from({ length: 20 }, (_, i) => `create-${i}-${uniqueId()}`);
    const answered = new Map<string, string>();
    const inflight = keys.map(
      (key, i) =>
        call('POST', `/apps/${app}/versions`, token, { imageTag: `t${i}`, replicas: 0 }, key)
          .then((res) => {
            if (res.status === 201) answered.set(key, res.json.name as string);
          })
          .catch(() => undefined), // the connection dies with the process
    );
    const etcd = createEtcdClient({ endpoints: (env.ETCD_ENDPOINTS ?? '').split(','), ...regionCredentials(env).etcd });
    const versionsPrefix = new BerthKeys(prefix).versions(app);
    try {
      await waitFor(async () => (await etcd.getAll().prefix(versionsPrefix).keys()).length >= 3, { intervalMs: 5 });
    } finally {
      etcd.close();
    }
    const dead = exited(child as ChildProcess);
    child?.kill('SIGKILL');
    await dead;
    await Promise.all(inflight);

    // The client retries every request it got no answer to, with the same key and body.
    await startApi();
    const again = (await call('POST', '/auth/login', undefined, { username: 'admin', password: 'crash-test-admin' }))
      .json.token;
    for (const [i, key] of keys.entries()) {
      const res = await call('POST', `/apps/${app}/versions`, again, { imageTag: `t${i}`, replicas: 0 }, key);
      expect(res.status, key).toBe(201);
      if (answered.has(key)) expect(res.json.name, 'a repeat gets the first answer').toBe(answered.get(key));
    }
    const made = (await call('GET', `/apps/${app}/versions?limit=100`, again)).json.items as { imageTag: string }[];
    expect(made).toHaveLength(20);
    expect(new Set(made.map((v) => v.imageTag)).size).toBe(20);
  });

  it('an API killed while NATS is down loses no event: the next API relays it', async () => {
    const nats = await startPrivateNats();
    try {
      await startApi(nats.url);
      const token = (await call('POST', '/auth/login', undefined, { username: 'admin', password: 'crash-test-admin' }))
        .json.token;
      await call('POST', '/regions', token, { name: 'local' });
      const app = `outage-crash-${uniqueId()}`;
      expect((await call('POST', '/apps', token, appBody(app))).status).toBe(201);
      expect((await call('POST', `/apps/${app}/versions`, token, { imageTag: 'a', replicas: 1 })).status).toBe(201);

      await nats.kill();
      expect((await call('POST', `/apps/${app}/versions/v1/scale`, token, { replicas: 3 })).status).toBe(200);
      const dead = exited(child as ChildProcess);
      child?.kill('SIGKILL');
      await dead;
      await nats.start();

      await startApi(nats.url);
      const again = (await call('POST', '/auth/login', undefined, { username: 'admin', password: 'crash-test-admin' }))
        .json.token;
      const scaled = await waitFor(
        async () => {
          const res = await call('GET', `/apps/${app}/events?limit=50`, again);
          const items = (res.json?.items ?? []).filter((e: { action: string }) => e.action === 'scaled');
          return items.length > 0 ? items : undefined;
        },
        { timeoutMs: 30_000, message: 'the scale made during the outage is in the feed' },
      );
      expect(scaled).toHaveLength(1);
      expect(scaled[0].after).toEqual({ replicas: 3 });
    } finally {
      if (child && child.exitCode === null) child.kill('SIGKILL');
      await nats.destroy();
    }
  });
});
