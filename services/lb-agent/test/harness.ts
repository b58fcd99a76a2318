/**
 * What the lb-agent's tests (and test/bench/traffic.ts) share: a private Debian nginx with the
 * agent's main config on a free loopback port, an agent in this process, loopback backends that
 * answer their name, a client that records every answer, and writers of the keys the API and
 * discovery own.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { Agent, createServer, type IncomingHttpHeaders, type RequestListener, request, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { parseEnv } from '@berth/shared/config';
import type { Etcd3 } from '@berth/shared/etcd';
import { BerthKeys } from '@berth/shared/keys';
import { createLogger } from '@berth/shared/logging';
import type { Domain, Traffic, UpstreamEndpoint, Upstreams } from '@berth/shared/model';
import { exited, freePort, regionAuthEnv, regionEnv, waitFor } from '@berth/shared/testing';
import { lbAgentEnv } from '../src/env.ts';
import { ControlClient } from '../src/nginx/control-client.ts';
import { type MainConfOptions, paths, writeMainConfig } from '../src/nginx/main-conf.ts';
import { LbAgentService } from '../src/service.ts';

export type Reply = { status: number; headers: IncomingHttpHeaders; body: string };

export type TestNginx = {
  prefix: string;
  port: number;
  main: MainConfOptions;
  control: ControlClient;
  /** The master's pid and its workers' pids (a reload replaces the workers). */
  pids(): Promise<{ master: number; workers: number[] }>;
  /** SIGQUIT and wait; start() again brings it back on the same prefix and port (its shared dict empty). */
  stop(): Promise<void>;
  start(): Promise<void>;
  errorLog(): Promise<string>;
};

/** A private nginx with the lb-agent's main config, `workers` worker processes. */
export async function startNginx(
  options: { workers?: number; routesDictSize?: string; statsDictSize?: string } = {},
): Promise<TestNginx> {
  const prefix = await mkdtemp(join(tmpdir(), 'berth-lb-'));
  const port = await freePort();
  const main: MainConfOptions = {
    prefix,
    listen: `127.0.0.1:${port}`,
    pidFile: join(prefix, 'nginx.pid'),
    errorLog: join(prefix, 'error.log'),
    workerProcesses: options.workers ?? 2,
    ...(options.routesDictSize ? { routesDictSize: options.routesDictSize } : {}),
    ...(options.statsDictSize ? { statsDictSize: options.statsDictSize } : {}),
    ...(process.getuid?.() === 0 ? { user: 'root' } : {}),
  };
  await writeMainConfig(main);
  const control = new ControlClient(paths(prefix).controlSocket, 2000);
  let child: ChildProcess | undefined;
  const start = async () => {
    const c = spawn('nginx', ['-p', prefix, '-c', paths(prefix).conf], { stdio: ['ignore', 'ignore', 'pipe'] });
    child = c;
    let stderr = '';
    c.stderr?.on('data', (d) => {
      stderr += d;
    });
    await waitFor(
      async () => {
        if (c.exitCode !== null) throw new Error(`nginx exited: ${stderr}`);
        return (await get(`http://127.0.0.1:${port}/healthz`, 'localhost')).body === 'ok lua';
      },
      { timeoutMs: 10_000, message: 'nginx answering /healthz' },
    );
  };
  await start();
  return {
    prefix,
    port,
    main,
    control,
    start,
    async pids() {
      const master = Number((await readFile(main.pidFile, 'utf8')).trim());
      const children = await readFile(`/proc/${master}/task/${master}/children`, 'utf8').catch(() => '');
      return { master, workers: children.trim().split(/\s+/).filter(Boolean).map(Number).sort() };
    },
    async stop() {
      if (!child || child.exitCode !== null) return;
      const done = exited(child);
      child.kill('SIGQUIT');
      await done;
    },
    errorLog: () => readFile(main.errorLog, 'utf8').catch(() => ''),
  };
}

export async function removeNginx(n: TestNginx): Promise<void> {
  await n.stop();
  await rm(n.prefix, { recursive: true, force: true });
}

export type TestAgent = { service: LbAgentService; logs: () => string; stop(): Promise<void> };

/** An lb-agent in this process for `group`, driving `nginx`. */
export async function startAgent(o: {
  etcdEndpoints: string;
  prefix: string;
  group: string;
  host?: string;
  nginx: TestNginx;
  env?: Record<string, string>;
}): Promise<TestAgent> {
  let logs = '';
  const logger = createLogger({
    service: 'lb-agent',
    level: 'info',
    destination: new Writable({
      write(chunk, _e, done) {
        logs = (logs + chunk).slice(-100_000);
        done();
      },
    }),
  });
  const config = parseEnv(lbAgentEnv, {
    HTTP_ADDR: '127.0.0.1:0',
    ETCD_ENDPOINTS: o.etcdEndpoints,
    // The region's credentials for the region's etcd (a private one has no auth).
    ...(o.etcdEndpoints === regionEnv().ETCD_ENDPOINTS ? regionAuthEnv() : {}),
    ETCD_PREFIX: o.prefix,
    LB_GROUP: o.group,
    LB_HOST: o.host ?? 'lb-test',
    NGINX_PREFIX: o.nginx.prefix,
    NGINX_PID_FILE: o.nginx.main.pidFile,
    NGINX_ERROR_LOG: o.nginx.main.errorLog,
    NGINX_WORKERS: String(o.nginx.main.workerProcesses ?? 1),
    ...(o.nginx.main.user ? { NGINX_USER: o.nginx.main.user } : {}),
    LB_LISTEN: o.nginx.main.listen,
    LB_RELOAD_DEBOUNCE: '50ms',
    LB_DIGEST_INTERVAL: '500ms',
    LB_LEASE_TTL_SECONDS: '3',
    ...o.env,
  });
  const service = LbAgentService.create(config, logger);
  await service.start();
  return { service, logs: () => logs, stop: () => service.stop() };
}

// ---- backends and the client -------------------------------------------------------------------

export type Backend = { name: string; port: number; server: Server; close(): Promise<void> };

/** A loopback HTTP server answering its name (or as `answer` says). */
export async function startBackend(
  name: string,
  answer: RequestListener = (_req, res) => {
    res.setHeader('content-type', 'text/plain');
    res.end(name);
  },
): Promise<Backend> {
  const server = createServer(answer);
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return {
    name,
    port,
    server,
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  };
}

/** A backend answering the status its path names (`/status/404` answers 404), its body its name. */
export function startStatusBackend(name: string): Promise<Backend> {
  return startBackend(name, (req, res) => {
    const status = Number(/^\/status\/(\d{3})/.exec(req.url ?? '')?.[1] ?? 200);
    if (status >= 300 && status < 400) res.setHeader('location', '/');
    res.statusCode = status;
    res.end(name);
  });
}

const keepAlive = new Agent({ keepAlive: true, maxSockets: 16 });

/** One GET with its own Host header (fetch does not let a caller set Host). */
export function get(url: string, host: string, headers: Record<string, string> = {}): Promise<Reply> {
  return new Promise((resolvePromise, reject) => {
    const req = request(url, { agent: keepAlive, headers: { host, ...headers }, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => {
        body += d;
      });
      res.on('end', () => resolvePromise({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    req.end();
  });
}

export type LoadSample = { at: number; status: number; body: string; error?: string };

/**
 * A closed-loop client: `concurrency` loops, each sending the next GET when the last answered,
 * recording every answer (or transport error) until stop().
 */
export function startLoad(url: string, host: string, concurrency = 4, headers: Record<string, string> = {}) {
  const samples: LoadSample[] = [];
  let running = true;
  const loops = Array.from({ length: concurrency }, async () => {
    while (running) {
      const at = performance.now();
      try {
        const r = await get(url, host, headers);
        samples.push({ at, status: r.status, body: r.body });
      } catch (err) {
        samples.push({ at, status: 0, body: '', error: (err as Error).message });
      }
    }
  });
  return {
    samples,
    failed: () => samples.filter((s) => s.status !== 200),
    async stop() {
      running = false;
      await Promise.all(loops);
      return samples;
    },
  };
}

// ---- the keys the API and discovery write --------------------------------------------------------

export function domainRecord(domain: string, app: string, group: string, extra: Partial<Domain> = {}): Domain {
  const now = new Date().toISOString();
  return {
    domain,
    app,
    group,
    port: 'http',
    paths: ['/'],
    options: { headers: {} },
    createdAt: now,
    createdBy: 'admin',
    updatedAt: now,
    ...extra,
  };
}

export function endpoint(b: Backend, extra: Partial<UpstreamEndpoint> = {}): UpstreamEndpoint {
  return {
    address: '127.0.0.1',
    ports: { http: b.port },
    ready: true,
    serving: true,
    terminating: false,
    node: null,
    pod: b.name,
    ...extra,
  };
}

/** Upstreams as discovery writes them: `versions` by version then cell. */
export function upstreamsRecord(
  app: string,
  versions: Record<string, Record<string, UpstreamEndpoint[]>>,
  staleCells: string[] = [],
): Upstreams {
  const cells: Upstreams['cells'] = {};
  for (const byCell of Object.values(versions)) {
    for (const cell of Object.keys(byCell)) {
      cells[cell] = { stale: staleCells.includes(cell), syncedAt: new Date().toISOString(), revision: '1' };
    }
  }
  return { app, cells, versions };
}

export function trafficRecord(
  app: string,
  weights: Traffic['weights'],
  stickiness: Traffic['stickiness'] = null,
): Traffic {
  return { app, weights, stickiness, updatedAt: new Date().toISOString(), updatedBy: 'admin' };
}

export class SlbWriter {
  readonly keys: BerthKeys;
  readonly #etcd: Etcd3;
  readonly #group: string;

  constructor(etcd: Etcd3, prefix: string, group: string) {
    this.#etcd = etcd;
    this.keys = new BerthKeys(prefix);
    this.#group = group;
  }

  /** Puts a value; returns the etcd revision of the write. */
  async #put(key: string, value: unknown): Promise<number> {
    const res = await this.#etcd.put(key).value(JSON.stringify(value)).exec();
    return Number(res.header.revision);
  }

  domain(d: Domain): Promise<number> {
    return this.#put(this.keys.templates.slbDomain.format({ group: this.#group, domain: d.domain }), d);
  }
  async deleteDomain(domain: string): Promise<void> {
    await this.#etcd
      .delete()
      .key(this.keys.templates.slbDomain.format({ group: this.#group, domain }))
      .exec();
  }
  upstreams(u: Upstreams): Promise<number> {
    return this.#put(this.keys.templates.slbUpstream.format({ group: this.#group, app: u.app }), u);
  }
  async deleteUpstreams(app: string): Promise<void> {
    await this.#etcd
      .delete()
      .key(this.keys.templates.slbUpstream.format({ group: this.#group, app }))
      .exec();
  }
  traffic(t: Traffic): Promise<number> {
    return this.#put(this.keys.templates.slbTraffic.format({ group: this.#group, app: t.app }), t);
  }
  async agentStatus(host: string): Promise<unknown> {
    return this.#etcd.get(this.keys.templates.lbAgent.format({ group: this.#group, host })).json();
  }
  async clear(): Promise<void> {
    await this.#etcd.delete().prefix(`${this.keys.prefix}/`).exec();
  }
}
