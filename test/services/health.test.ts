/**
 * Every Berth service, started as a real process the way `make up` starts it: answers /healthz,
 * is ready while its dependencies answer, turns not-ready when its etcd goes away (and ready
 * again when etcd is back), and exits 0 on SIGTERM.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import {
  exited,
  freePort,
  type PrivateEtcd,
  REPO_ROOT,
  regionAuthEnv,
  regionEnv,
  startPrivateEtcd,
  uniqueId,
  waitFor,
} from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { removeNginx, startNginx, type TestNginx } from '../../services/lb-agent/test/harness.ts';

const SERVICES = ['api', 'scheduler', 'builder-agent', 'lb-agent', 'discovery', 'cni-ipam'] as const;

type Running = { name: string; child: ChildProcess; url: string; output: () => string };

let etcd: PrivateEtcd;
/** The lb-agent's nginx: the agent is ready only when nginx answers on its control socket. */
let nginx: TestNginx;
const running: Running[] = [];

async function startService(name: string, extraEnv: Record<string, string> = {}): Promise<Running> {
  const port = await freePort();
  const region = regionEnv();
  const child = spawn(process.execPath, [join(REPO_ROOT, 'services', name, 'src/index.ts')], {
    cwd: REPO_ROOT,
    env: {
      PATH: process.env.PATH,
      HTTP_ADDR: `127.0.0.1:${port}`,
      ETCD_ENDPOINTS: etcd.endpoint,
      ETCD_PREFIX: `/t-${uniqueId()}`,
      NATS_URL: region.NATS_URL,
      REDIS_URL: region.REDIS_URL,
      // The region's NATS and Redis credentials; this etcd is private, without auth.
      ...regionAuthEnv(region, ['nats', 'redis']),
      // builder-agent builds with the region's Docker Engine and pushes to its registry.
      ...(region.DOCKER_HOST ? { DOCKER_HOST: region.DOCKER_HOST } : {}),
      ...(region.REGISTRY_ADDR ? { REGISTRY_ADDR: region.REGISTRY_ADDR } : {}),
      LOG_LEVEL: 'warn',
      ...extraEnv,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout?.on('data', (d) => {
    out = (out + d).slice(-8000);
  });
  child.stderr?.on('data', (d) => {
    out = (out + d).slice(-8000);
  });
  return { name, child, url: `http://127.0.0.1:${port}`, output: () => out };
}

async function status(url: string): Promise<number> {
  try {
    return (await fetch(url, { signal: AbortSignal.timeout(3000) })).status;
  } catch {
    return 0;
  }
}

beforeAll(async () => {
  etcd = await startPrivateEtcd();
  nginx = await startNginx({ workers: 1 });
  const lbAgentEnv = {
    NGINX_PREFIX: nginx.prefix,
    NGINX_PID_FILE: nginx.main.pidFile,
    NGINX_ERROR_LOG: nginx.main.errorLog,
    LB_LISTEN: nginx.main.listen,
    ...(nginx.main.user ? { NGINX_USER: nginx.main.user } : {}),
  };
  for (const name of SERVICES) running.push(await startService(name, name === 'lb-agent' ? lbAgentEnv : {}));
});

afterAll(async () => {
  for (const r of running) if (r.child.exitCode === null) r.child.kill('SIGKILL');
  await etcd?.destroy();
  if (nginx) await removeNginx(nginx);
});

describe('every service', () => {
  it('answers /healthz and /readyz, and serves Prometheus metrics', async () => {
    for (const r of running) {
      await waitFor(async () => (await status(`${r.url}/readyz`)) === 200, {
        timeoutMs: 30_000,
        message: `${r.name} ready (output: ${r.output()})`,
      });
      expect(await status(`${r.url}/healthz`)).toBe(200);
      const metrics = await (await fetch(`${r.url}/metrics`)).text();
      expect(metrics).toContain(`service="${r.name}"`);
    }
  });

  it('turns not-ready when its etcd goes away, stays alive, and is ready again when etcd returns', async () => {
    await etcd.kill();
    for (const r of running) {
      await waitFor(async () => (await status(`${r.url}/readyz`)) === 503, {
        timeoutMs: 15_000,
        message: `${r.name} not ready without etcd`,
      });
      const body = (await (await fetch(`${r.url}/readyz`)).json()) as { checks: { name: string; ok: boolean }[] };
      expect(body.checks.find((c) => c.name === 'etcd')?.ok).toBe(false);
      expect(await status(`${r.url}/healthz`)).toBe(200);
    }
    await etcd.restart();
    for (const r of running) {
      await waitFor(async () => (await status(`${r.url}/readyz`)) === 200, {
        timeoutMs: 30_000,
        message: `${r.name} ready again after etcd returned`,
      });
    }
  });

  it('stops gracefully on SIGTERM with exit code 0', async () => {
    for (const r of running) {
      const code = exited(r.child);
      r.child.kill('SIGTERM');
      expect(await code, `${r.name} exit code; output: ${r.output()}`).toBe(0);
    }
  });
});

describe('bad configuration', () => {
  it('a service refuses to start, naming each bad variable on its own line, exit code 78', async () => {
    const r = await startService('scheduler', {
      HTTP_ADDR: 'not-an-address',
      LEADER_TTL_SECONDS: '1',
      ETCD_ENDPOINTS: 'x',
    });
    expect(await exited(r.child)).toBe(78);
    const out = r.output();
    expect(out).toContain('HTTP_ADDR: expected host:port (got "not-an-address")');
    expect(out).toMatch(/LEADER_TTL_SECONDS: expected an integer in \[2, 120\]/);
    expect(out).toMatch(/ETCD_ENDPOINTS: not a URL/);
  });
});
