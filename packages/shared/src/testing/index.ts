/**
 * Test plumbing against the real servers of the local region: where they are, a unique key or
 * subject prefix per test, waiting on a condition with a deadline (never a bare sleep), and a
 * private etcd for tests that must kill their etcd.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BerthError, UnavailableError } from '../errors/index.ts';

/** The repo's root directory. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');

/**
 * The region's environment: process.env first, then `.local/env` (written by `make up`), then the
 * documented loopback defaults.
 */
export function regionEnv(): Record<string, string> {
  const fromFile: Record<string, string> = {};
  const file = join(REPO_ROOT, '.local/env');
  if (existsSync(file)) {
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      const m = /^(?:export\s+)?([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line.trim());
      if (m?.[1] && m[2] !== undefined) fromFile[m[1]] = m[2].replace(/^['"]|['"]$/g, '');
    }
  }
  const pick = (name: string, fallback: string): string => process.env[name] ?? fromFile[name] ?? fallback;
  const auth = Object.fromEntries(
    REGION_AUTH_VARS.flatMap((name) => (process.env[name] ? [[name, process.env[name] as string]] : [])),
  );
  return {
    ...fromFile,
    ...auth,
    ETCD_ENDPOINTS: pick('ETCD_ENDPOINTS', 'http://127.0.0.1:2379'),
    NATS_URL: pick('NATS_URL', 'nats://127.0.0.1:4222'),
    REDIS_URL: pick('REDIS_URL', 'redis://127.0.0.1:6379'),
  };
}

/**
 * The variables naming the region's credentials when `make up` turned its authentication on
 * (docs/security.md): the tests identity, passwords as file paths.
 */
export const REGION_AUTH_VARS = [
  'ETCD_USERNAME',
  'ETCD_PASSWORD_FILE',
  'NATS_USER',
  'NATS_PASSWORD_FILE',
  'REDIS_USERNAME',
  'REDIS_PASSWORD_FILE',
] as const;

/**
 * The credential variables to give a service a test starts (empty while the region has no auth);
 * `servers` leaves out the others (a private etcd has no auth).
 */
export function regionAuthEnv(
  env: Record<string, string | undefined> = regionEnv(),
  servers: readonly ('etcd' | 'nats' | 'redis')[] = ['etcd', 'nats', 'redis'],
): Record<string, string> {
  const wanted = REGION_AUTH_VARS.filter((name) => servers.some((s) => name.startsWith(`${s.toUpperCase()}_`)));
  return Object.fromEntries(wanted.flatMap((name) => (env[name] ? [[name, env[name] as string]] : [])));
}

/** The IPAM plugin's network-conf fields for the tests identity (none while the region has no auth). */
export function regionIpamAuth(env: Record<string, string | undefined> = regionEnv()): {
  etcdUsername?: string;
  etcdPasswordFile?: string;
} {
  return env.ETCD_USERNAME && env.ETCD_PASSWORD_FILE
    ? { etcdUsername: env.ETCD_USERNAME, etcdPasswordFile: env.ETCD_PASSWORD_FILE }
    : {};
}

export type RegionCredentials = {
  etcd: { username?: string; password?: string };
  nats: { user?: string; pass?: string };
  redis: { username?: string; password?: string };
};

/**
 * The tests identity's credentials for the clients a test makes itself:
 * `createEtcdClient({ endpoints, ...regionCredentials().etcd })`, `NatsClient.connect({ servers,
 * name, ...regionCredentials().nats })`, `createRedis({ url, ...regionCredentials().redis })`.
 * Empty while the region has no auth.
 */
export function regionCredentials(env: Record<string, string | undefined> = regionEnv()): RegionCredentials {
  const read = (file: string | undefined) => (file ? readFileSync(file, 'utf8').replace(/\r?\n$/, '') : '');
  return {
    etcd: env.ETCD_USERNAME ? { username: env.ETCD_USERNAME, password: read(env.ETCD_PASSWORD_FILE) } : {},
    nats: env.NATS_USER ? { user: env.NATS_USER, pass: read(env.NATS_PASSWORD_FILE) } : {},
    redis: env.REDIS_USERNAME ? { username: env.REDIS_USERNAME, password: read(env.REDIS_PASSWORD_FILE) } : {},
  };
}

/** A short random id for names, prefixes and subjects. */
export function uniqueId(length = 8): string {
  return randomBytes(length).toString('hex').slice(0, length);
}

/** A key prefix no other test uses: `/t-<id>`. */
export function uniquePrefix(): string {
  return `/t-${uniqueId()}`;
}

export type WaitOptions = { timeoutMs?: number; intervalMs?: number; message?: string };

/**
 * Polls `probe` until it returns a value other than undefined/false (or stops throwing), and
 * returns that value; fails with the last error after the deadline.
 */
export async function waitFor<T>(
  probe: () => Promise<T | undefined | false> | T | undefined | false,
  options: WaitOptions = {},
): Promise<T> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const intervalMs = options.intervalMs ?? 50;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value as T;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const why = lastError instanceof Error ? `: ${lastError.message}` : '';
      throw new BerthError(`${options.message ?? 'condition'} not met within ${timeoutMs} ms${why}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** A TCP port free on 127.0.0.1 right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

/** Waits for a child process to exit; resolves with its exit code (or signal name). */
export function exited(child: ChildProcess): Promise<number | string> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  if (child.signalCode !== null) return Promise.resolve(child.signalCode);
  return new Promise((r) => child.once('exit', (code, signal) => r(code ?? signal ?? -1)));
}

export type PrivateEtcd = {
  endpoint: string;
  dataDir: string;
  /** Kills etcd (SIGKILL): the outage a service must survive. */
  kill(): Promise<void>;
  /** Starts it again on the same ports and data. */
  restart(): Promise<void>;
  /** Kills it and removes its data. */
  destroy(): Promise<void>;
};

/**
 * A private, single-member etcd (Debian's etcd-server) on free loopback ports, for tests that
 * take etcd away. Everything else shares the region's etcd, isolated by key prefix.
 */
export async function startPrivateEtcd(): Promise<PrivateEtcd> {
  const dataDir = mkdtempSync(join(tmpdir(), 'berth-etcd-'));
  const clientPort = await freePort();
  const peerPort = await freePort();
  const endpoint = `http://127.0.0.1:${clientPort}`;
  let child: ChildProcess | undefined;
  let output = '';
  const launch = async (): Promise<void> => {
    child = spawn(
      'etcd',
      [
        '--name=private',
        `--data-dir=${dataDir}`,
        `--listen-client-urls=${endpoint}`,
        `--advertise-client-urls=${endpoint}`,
        `--listen-peer-urls=http://127.0.0.1:${peerPort}`,
        `--initial-advertise-peer-urls=http://127.0.0.1:${peerPort}`,
        `--initial-cluster=private=http://127.0.0.1:${peerPort}`,
        '--log-level=warn',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    child.stdout?.on('data', (d) => {
      output = (output + d).slice(-4000);
    });
    child.stderr?.on('data', (d) => {
      output = (output + d).slice(-4000);
    });
    const started = child;
    await waitFor(
      async () => {
        if (started.exitCode !== null) throw new UnavailableError(`etcd exited: ${output}`);
        const res = await fetch(`${endpoint}/health`);
        return res.ok;
      },
      { timeoutMs: 15_000, message: 'private etcd healthy' },
    );
  };
  const kill = async (): Promise<void> => {
    if (child && child.exitCode === null && child.signalCode === null) {
      const done = exited(child);
      child.kill('SIGKILL');
      await done;
    }
  };
  await launch();
  return {
    endpoint,
    dataDir,
    kill,
    restart: async () => {
      await kill();
      await launch();
    },
    destroy: async () => {
      await kill();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export type PrivateNats = {
  url: string;
  /** Kills nats-server (SIGKILL). */
  kill(): Promise<void>;
  /** Starts it again on the same port and JetStream data. */
  start(): Promise<void>;
  destroy(): Promise<void>;
};

/**
 * A private JetStream server (Debian's nats-server) on a free loopback port, for tests that take
 * NATS away; everything else shares the region's NATS, isolated by subject root.
 */
export async function startPrivateNats(): Promise<PrivateNats> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'berth-nats-'));
  let child: ChildProcess | undefined;
  const start = async () => {
    child = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], { stdio: 'ignore' });
    await waitFor(
      () =>
        new Promise<boolean>((resolve) => {
          const socket = netConnect(port, '127.0.0.1');
          socket.on('connect', () => {
            socket.destroy();
            resolve(true);
          });
          socket.on('error', () => resolve(false));
        }),
      { timeoutMs: 15_000, message: 'private nats-server listening' },
    );
  };
  const kill = async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      const done = exited(child);
      child.kill('SIGKILL');
      await done;
    }
  };
  await start();
  return {
    url: `nats://127.0.0.1:${port}`,
    kill,
    start,
    destroy: async () => {
      await kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
