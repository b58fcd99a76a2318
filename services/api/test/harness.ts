/**
 * An API running in this process against the region's real etcd, NATS and Redis, isolated by a
 * unique etcd prefix and NATS subject root, with a bootstrapped admin and helpers to call it.
 */
import { Writable } from 'node:stream';
import { parseEnv } from '@berth/shared/config';
import { createLogger } from '@berth/shared/logging';
import { regionAuthEnv, regionCredentials, regionEnv, uniqueId } from '@berth/shared/testing';
import { apiEnv } from '../src/env.ts';
import { ApiService } from '../src/service.ts';

export const ADMIN_PASSWORD = 'admin-password-for-tests';

export type Call = {
  status: number;
  body: unknown;
  headers: Headers;
  // biome-ignore lint/suspicious/noExplicitAny: tests read response bodies freely
  json: any;
};

export type TestApi = {
  url: string;
  prefix: string;
  subjectRoot: string;
  service: ApiService;
  logs: () => string;
  call(
    method: string,
    path: string,
    options?: { token?: string; body?: unknown; headers?: Record<string, string>; raw?: string },
  ): Promise<Call>;
  login(username: string, password: string): Promise<string>;
  adminToken: string;
  /** Creates a user (as admin) and returns a session token for them. */
  user(name: string): Promise<string>;
  stop(): Promise<void>;
};

export async function startApi(extraEnv: Record<string, string> = {}): Promise<TestApi> {
  const id = uniqueId();
  const prefix = `/t-${id}`;
  const subjectRoot = `t${id}`;
  const region = regionEnv();
  const config = parseEnv(apiEnv, {
    HTTP_ADDR: '127.0.0.1:0',
    ETCD_ENDPOINTS: region.ETCD_ENDPOINTS,
    NATS_URL: region.NATS_URL,
    REDIS_URL: region.REDIS_URL,
    ...regionAuthEnv(region),
    ETCD_PREFIX: prefix,
    EVENT_SUBJECT_ROOT: subjectRoot,
    BERTH_ADMIN_PASSWORD: ADMIN_PASSWORD,
    LOG_LEVEL: 'warn',
    // Tests give one user many apps; abuse.test.ts tests the default quota with its own limits.
    DEFAULT_QUOTA_APPS: 'none',
    DEFAULT_QUOTA_CPU: 'none',
    DEFAULT_QUOTA_MEMORY: 'none',
    ...extraEnv,
  });
  let logText = '';
  const logger = createLogger({
    service: 'api',
    level: 'warn',
    destination: new Writable({
      write(chunk, _e, done) {
        logText = (logText + chunk).slice(-20000);
        done();
      },
    }),
  });
  const service = ApiService.create(config, logger);
  await service.start();
  const url = service.runtime.http.url;

  const call: TestApi['call'] = async (method, path, options = {}) => {
    const headers: Record<string, string> = { ...options.headers };
    if (options.token) headers.authorization = `Bearer ${options.token}`;
    let body: string | undefined;
    if (options.raw !== undefined) body = options.raw;
    else if (options.body !== undefined) {
      body = JSON.stringify(options.body);
      headers['content-type'] ??= 'application/json';
    }
    const res = await fetch(`${url}/api/v1${path}`, { method, headers, ...(body !== undefined ? { body } : {}) });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      // not JSON
    }
    return { status: res.status, body: parsed, json: parsed, headers: res.headers };
  };

  const login = async (username: string, password: string) => {
    const res = await call('POST', '/auth/login', { body: { username, password } });
    if (res.status !== 200) throw new Error(`login ${username}: ${res.status} ${JSON.stringify(res.body)}`);
    return res.json.token as string;
  };

  const adminToken = await login('admin', ADMIN_PASSWORD);
  const user = async (name: string) => {
    const password = `pw-${name}-12345`;
    const res = await call('POST', '/users', { token: adminToken, body: { username: name, password } });
    if (res.status !== 201 && res.status !== 409) throw new Error(`create user ${name}: ${res.status}`);
    return login(name, password);
  };

  return {
    url,
    prefix,
    subjectRoot,
    service,
    logs: () => logText,
    call,
    login,
    adminToken,
    user,
    stop: async () => {
      await service.stop();
      await deleteTestStreams(subjectRoot);
    },
  };
}

/** Deletes the JetStream streams (events, build logs) of a test API's subject root. */
export async function deleteTestStreams(subjectRoot: string): Promise<void> {
  const region = regionEnv();
  const { NatsClient } = await import('@berth/shared/nats');
  const { EventSubjects } = await import('@berth/shared/events');
  const nats = await NatsClient.connect({
    servers: (region.NATS_URL ?? '').split(','),
    name: 'test-cleanup',
    ...regionCredentials(region).nats,
  });
  const jsm = await nats.jsm();
  const subjects = new EventSubjects(subjectRoot);
  await jsm.streams.delete(subjects.eventsStream).catch(() => undefined);
  await jsm.streams.delete(subjects.buildLogsStream).catch(() => undefined);
  await nats.drain();
}

/** The body of a minimal valid app. */
export function appBody(name: string, region = 'local') {
  return {
    name,
    region,
    image: 'team/shop',
    healthCheck: { path: '/healthz', port: 8080 },
    ports: [{ name: 'http', port: 8080 }],
  };
}

/** Makes sure the region exists (as admin). */
export async function ensureRegion(api: TestApi, name = 'local'): Promise<void> {
  const res = await api.call('POST', '/regions', { token: api.adminToken, body: { name } });
  if (res.status !== 201 && res.status !== 409) throw new Error(`region: ${res.status}`);
}

/**
 * Gives this API (in a prefix of its own) the region's sample app: an app named `sample` with the
 * placement make up's scheduler gave it (v1, one replica in cell-a and one in cell-b), so the API
 * reads those real pods without a scheduler of its own, and `members` (name → role) on it.
 * Resolves with each member's token.
 */
export async function mirrorSampleApp(api: TestApi, members: Record<string, string>): Promise<Record<string, string>> {
  const created = await api.call('POST', '/apps', { token: api.adminToken, body: appBody('sample') });
  if (created.status !== 201) throw new Error(`creating app sample: ${created.status}`);
  const { runtime } = api.service;
  await runtime.etcd.put(runtime.keys.placement('sample', 'v1')).value(
    JSON.stringify({
      app: 'sample',
      version: 'v1',
      cells: { 'cell-a': 1, 'cell-b': 1 },
      generation: 1,
      desired: 2,
      conditions: [],
      updatedAt: new Date().toISOString(),
    }),
  );
  const tokens: Record<string, string> = {};
  for (const [user, role] of Object.entries(members)) {
    tokens[user] = await api.user(user);
    const res = await api.call('PUT', `/apps/sample/members/${user}`, { token: api.adminToken, body: { role } });
    if (res.status >= 300) throw new Error(`member ${user} of sample: ${res.status} ${JSON.stringify(res.body)}`);
  }
  return tokens;
}
