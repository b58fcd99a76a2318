/**
 * Latency and throughput of POST /apps/{app}/versions under 32 concurrent clients, against a real
 * API process on the local region (etcd, NATS, Redis), side by side in one run:
 *   spread:    each client deploys its own app (the usual case)
 *   contended: all 32 clients deploy the same app (each create races for the app's version counter)
 * Run: node test/bench/api-versions.ts   (needs `make up` or `make bench`)
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { freePort, REPO_ROOT, regionEnv, uniqueId, waitFor } from '@berth/shared/testing';

const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 32);
const REQUESTS = Number(process.env.BENCH_REQUESTS ?? 1600);
const env = regionEnv();
const port = await freePort();
const id = uniqueId();
const base = `http://127.0.0.1:${port}/api/v1`;
const api = spawn(process.execPath, [join(REPO_ROOT, 'services/api/src/index.ts')], {
  env: {
    PATH: process.env.PATH,
    HTTP_ADDR: `127.0.0.1:${port}`,
    ETCD_ENDPOINTS: env.ETCD_ENDPOINTS,
    NATS_URL: env.NATS_URL,
    REDIS_URL: env.REDIS_URL,
    ETCD_PREFIX: `/bench-${id}`,
    EVENT_SUBJECT_ROOT: `bench${id}`,
    BERTH_ADMIN_PASSWORD: 'bench-admin-password',
    LOG_LEVEL: 'warn',
    // The bench user owns one app per client.
    DEFAULT_QUOTA_APPS: 'none',
    DEFAULT_QUOTA_CPU: 'none',
    DEFAULT_QUOTA_MEMORY: 'none',
  },
  stdio: ['ignore', 'inherit', 'inherit'],
});

async function call(
  method: string,
  path: string,
  token: string | undefined,
  body?: unknown,
): Promise<{ status: number; json: { token?: string } | undefined }> {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : undefined };
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

async function run(label: string, appFor: (client: number) => string, token: string) {
  const latencies: number[] = [];
  let next = 0;
  let errors = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: CLIENTS }, async (_, client) => {
      while (next < REQUESTS) {
        next++;
        const t0 = performance.now();
        const res = await call('POST', `/apps/${appFor(client)}/versions`, token, {
          imageTag: `t${next}`,
          replicas: 0,
        });
        latencies.push(performance.now() - t0);
        if (res.status !== 201) errors++;
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return {
    label,
    requests: latencies.length,
    errors,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    rps: latencies.length / seconds,
  };
}

try {
  await waitFor(async () => (await fetch(`${base.replace('/api/v1', '')}/readyz`)).ok, { timeoutMs: 30_000 });
  const login = async (username: string, password: string): Promise<string> => {
    const token = (await call('POST', '/auth/login', undefined, { username, password })).json?.token;
    if (!token) throw new Error(`cannot sign in as ${username}`);
    return token;
  };
  const admin = await login('admin', 'bench-admin-password');
  await call('POST', '/regions', admin, { name: 'local' });
  await call('POST', '/users', admin, { username: 'bench', password: 'bench-password' });
  const token = await login('bench', 'bench-password');
  const app = (n: number) => ({
    name: `app-${n}`,
    region: 'local',
    image: 'team/app',
    healthCheck: { path: '/healthz', port: 8080 },
    ports: [{ name: 'http', port: 8080 }],
  });
  for (let i = 0; i < CLIENTS; i++) await call('POST', '/apps', token, app(i));
  await call('POST', '/apps', token, app(999));
  // Warm up (JIT, connections), then measure.
  await run('warm-up', (c) => `app-${c}`, token);
  const spread = await run('spread (an app per client)', (c) => `app-${c}`, token);
  const contended = await run('contended (one app)', () => 'app-999', token);
  console.log(`\nPOST /apps/{app}/versions, ${CLIENTS} concurrent clients, ${REQUESTS} requests each run`);
  console.log('| run | requests | errors | p50 ms | p99 ms | req/s |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const r of [spread, contended]) {
    console.log(
      `| ${r.label} | ${r.requests} | ${r.errors} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} | ${r.rps.toFixed(0)} |`,
    );
  }
  console.log(
    `| ratio contended/spread p99 | | | | ${(contended.p99 / spread.p99).toFixed(2)} | ${(contended.rps / spread.rps).toFixed(2)} |`,
  );
} finally {
  api.kill('SIGTERM');
}
