/**
 * Every Berth service's HTTP server: `/healthz` (the process is alive and serving), `/readyz`
 * (every dependency answers right now, checked on each call with a deadline), Prometheus
 * `/metrics` (on a listener of its own, or behind a bearer token, or open: see MetricsAccess),
 * trace context taken from incoming headers, a deadline on every request that is not a stream
 * (503 problem+json when the handler has not answered in time), and the service's own routes
 * between them and the problem+json error handler. stop() drains: readiness turns false first,
 * in-flight requests finish, idle keep-alive connections close.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import express, { type Express, type Request, type RequestHandler, type Response } from 'express';
import { collectDefaultMetrics, Histogram, Registry } from 'prom-client';
import { UnauthorizedError, UnavailableError } from '../errors/index.ts';
import type { Logger } from '../logging/index.ts';
import { context, contextFromHeaders, SpanKind, SpanStatusCode, trace, tracer } from '../telemetry/index.ts';
import { notFoundHandler, problemFromError, problemMiddleware, sendProblem } from './problem.ts';

export type ReadinessCheck = () => Promise<void> | void;

type CheckResult = { name: string; ok: boolean; error?: string; ms: number };

/** Named readiness checks; /readyz is ready only when every one passes within its deadline. */
export class HealthRegistry {
  readonly #checks = new Map<string, { check: ReadinessCheck; timeoutMs: number }>();
  #draining = false;

  add(name: string, check: ReadinessCheck, timeoutMs = 2000): void {
    this.#checks.set(name, { check, timeoutMs });
  }

  /** Marks the process as shutting down: /readyz answers 503 from now on. */
  drain(): void {
    this.#draining = true;
  }

  async readiness(): Promise<{ ready: boolean; checks: CheckResult[] }> {
    const checks = await Promise.all(
      [...this.#checks].map(async ([name, { check, timeoutMs }]): Promise<CheckResult> => {
        const started = performance.now();
        let timer: NodeJS.Timeout | undefined;
        try {
          await Promise.race([
            Promise.resolve().then(check),
            new Promise((_, reject) => {
              timer = setTimeout(() => reject(new UnavailableError(`no answer in ${timeoutMs} ms`)), timeoutMs);
            }),
          ]);
          return { name, ok: true, ms: Math.round(performance.now() - started) };
        } catch (err) {
          return { name, ok: false, error: (err as Error).message, ms: Math.round(performance.now() - started) };
        } finally {
          clearTimeout(timer);
        }
      }),
    );
    if (this.#draining) checks.push({ name: 'shutdown', ok: false, error: 'shutting down', ms: 0 });
    return { ready: checks.every((c) => c.ok), checks };
  }
}

/** A Prometheus registry with process metrics and `service` on every series. */
export function createMetricsRegistry(service: string): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ service });
  collectDefaultMetrics({ register: registry });
  return registry;
}

/**
 * Who may read `/metrics` (series name apps, users and hosts). With `addr`, it is served on that
 * second listener only (give it a loopback address a scraper reaches) and the main listener
 * answers 404; with `token`, a request needs `Authorization: Bearer <token>` (401 otherwise),
 * wherever it is served. With neither, it is open on the main listener: for a service that
 * listens on loopback only.
 */
export type MetricsAccess = { addr?: { host: string; port: number } | undefined; token?: string | undefined };

const NO_DEADLINE = Symbol('berth.noDeadline');

/**
 * Exempts a request from the server's deadline: call it before answering a stream (Server-Sent
 * Events, a followed log) whose response stays open. Its headers go out first anyway, and a
 * deadline never cuts a response that has started; this also covers a stream that waits
 * before its first byte.
 */
export function withoutDeadline(res: Response): void {
  res.locals[NO_DEADLINE as unknown as string] = true;
}

export type HttpServerOptions = {
  host: string;
  port: number;
  logger: Logger;
  health: HealthRegistry;
  metrics: Registry;
  /** Mounts the service's own routes. */
  routes?: (app: Express) => void;
  /** How long stop() waits for in-flight requests. Default 10 s. */
  drainTimeoutMs?: number;
  /**
   * A handler that has not started its answer after this long gets a 503 problem+json in its
   * place (the work it started may still finish: a retry with an Idempotency-Key is safe).
   * Streams opt out with withoutDeadline(). Default 30 s; 0 turns it off.
   */
  requestTimeoutMs?: number;
  /** Who may read /metrics (MetricsAccess). Default: open on the main listener. */
  metricsAccess?: MetricsAccess;
};

/** What takes an upgraded connection (HttpServer.onUpgrade). */
export type UpgradeHandler = (req: IncomingMessage, socket: Duplex, head: Buffer) => void;

export class HttpServer {
  readonly app: Express;
  readonly #options: HttpServerOptions;
  /** The /metrics listener when `metricsAccess.addr` is set. */
  readonly #metricsApp: Express | undefined;
  #server: Server | undefined;
  #metricsServer: Server | undefined;
  #upgrade: UpgradeHandler | undefined;

  constructor(options: HttpServerOptions) {
    this.#options = options;
    this.app = buildApp(options);
    if (options.metricsAccess?.addr) {
      this.#metricsApp = express();
      this.#metricsApp.disable('x-powered-by');
      this.#metricsApp.get('/metrics', metricsHandler(options.metrics, options.metricsAccess.token));
      this.#metricsApp.use(notFoundHandler());
      this.#metricsApp.use(problemMiddleware(options.logger));
    }
  }

  /** The /metrics listener's URL when it has one of its own. */
  get metricsUrl(): string | undefined {
    const addr = this.#metricsServer?.address() as AddressInfo | null | undefined;
    if (!addr) return undefined;
    return `http://${addr.address.includes(':') ? `[${addr.address}]` : addr.address}:${addr.port}`;
  }

  /** The bound address (the real port when configured with port 0). */
  get address(): { host: string; port: number } {
    const addr = this.#server?.address() as AddressInfo | null | undefined;
    if (!addr) throw new UnavailableError('server not started');
    return { host: addr.address, port: addr.port };
  }

  get url(): string {
    const { host, port } = this.address;
    return `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  }

  /**
   * Takes the main listener's WebSocket upgrades, which never reach the express app; without a
   * handler they are ordinary requests. The handler owns the socket and its lifetime: stop()
   * neither waits for nor closes upgraded connections.
   */
  onUpgrade(handler: UpgradeHandler): void {
    this.#upgrade = handler;
  }

  async start(): Promise<void> {
    if (this.#server) return;
    // Only WebSocket upgrades, and only with a handler: any other (`Upgrade: h2c` from curl
    // --http2) stays an ordinary request for express.
    const server = await listen(this.app, this.#options.host, this.#options.port, (req) =>
      Boolean(this.#upgrade && req.headers.upgrade?.toLowerCase() === 'websocket'),
    );
    this.#server = server;
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      if (this.#upgrade) this.#upgrade(req, socket, head);
      else socket.destroy();
    });
    const metricsAddr = this.#options.metricsAccess?.addr;
    if (this.#metricsApp && metricsAddr) {
      try {
        this.#metricsServer = await listen(this.#metricsApp, metricsAddr.host, metricsAddr.port);
      } catch (err) {
        this.#server = undefined;
        server.close();
        throw err;
      }
    }
    this.#options.logger.info({ url: this.url, metricsUrl: this.metricsUrl }, 'http server listening');
  }

  async stop(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
    const metricsServer = this.#metricsServer;
    this.#metricsServer = undefined;
    if (metricsServer) {
      metricsServer.closeAllConnections();
      metricsServer.close();
    }
    this.#options.health.drain();
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    const timeoutMs = this.#options.drainTimeoutMs ?? 10_000;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs);
    });
    if ((await Promise.race([closed, timedOut])) === 'timeout') {
      this.#options.logger.warn({ timeoutMs }, 'requests still open at shutdown; closing them');
      server.closeAllConnections();
      await closed;
    }
    clearTimeout(timer);
  }
}

/**
 * Listens with Node's own limits on the request (not the answer): its headers within 66 s (longer
 * than a keep-alive's 65 s idle), all of it within 2 min: a client that sends slowly cannot hold a
 * connection. Streams answer for as long as they like; upgraded connections are not counted.
 */
async function listen(
  app: Express,
  host: string,
  port: number,
  shouldUpgradeCallback: (req: IncomingMessage) => boolean = () => false,
): Promise<Server> {
  const server = createServer({ shouldUpgradeCallback }, app).listen(port, host);
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  server.requestTimeout = 120_000;
  await Promise.race([
    once(server, 'listening'),
    once(server, 'error').then(([err]) => {
      throw new UnavailableError(`cannot listen on ${host}:${port}: ${(err as Error).message}`);
    }),
  ]);
  return server;
}

/**
 * Lets a request through only with `Authorization: Bearer <token>` (compared in constant time),
 * else 401 problem+json; with no token, everything passes. `/metrics` uses it, and so does any
 * other read of a service that must be protected as its metrics are (the lb-agent's
 * `/stats/requests`).
 */
export function requireBearer(token: string | undefined, what: string): RequestHandler {
  const digest = (s: string) => createHash('sha256').update(s).digest();
  const want = token ? digest(token) : undefined;
  return (req, res, next) => {
    if (want) {
      const m = /^Bearer (.+)$/.exec(req.get('authorization') ?? '');
      if (!m?.[1] || !timingSafeEqual(digest(m[1]), want)) {
        res.setHeader('WWW-Authenticate', 'Bearer realm="metrics"');
        sendProblem(res, problemFromError(new UnauthorizedError(`${what} needs its bearer token`), req.originalUrl));
        return;
      }
    }
    next();
  };
}

/** /metrics, behind `token` when there is one. */
function metricsHandler(metrics: Registry, token: string | undefined): RequestHandler[] {
  return [
    requireBearer(token, '/metrics'),
    async (_req, res) => {
      res.type(metrics.contentType).send(await metrics.metrics());
    },
  ];
}

/** A 503 problem in place of an answer that has not started within `ms` (see withoutDeadline). */
function deadline(ms: number, logger: Logger): RequestHandler {
  return (req: Request, res: Response, next) => {
    const timer = setTimeout(() => {
      if (res.headersSent || res.writableEnded || res.locals[NO_DEADLINE as unknown as string]) return;
      logger.warn({ method: req.method, url: req.originalUrl, timeoutMs: ms }, 'request took too long; answered 503');
      res.setHeader('Retry-After', '1');
      res.setHeader('Connection', 'close');
      sendProblem(
        res,
        problemFromError(new UnavailableError(`the server did not answer within ${ms} ms`), req.originalUrl),
      );
    }, ms);
    const clear = () => clearTimeout(timer);
    res.once('finish', clear);
    res.once('close', clear);
    next();
  };
}

function buildApp(options: HttpServerOptions): Express {
  const app = express();
  app.disable('x-powered-by');
  // ETags are the API's own (etcd mod revisions); express's body hashes would be mistaken for them.
  app.set('etag', false);
  app.set('trust proxy', 'loopback');
  const duration = new Histogram({
    name: 'berth_http_request_duration_seconds',
    help: 'HTTP request duration by method, route and status',
    labelNames: ['method', 'route', 'status'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [options.metrics],
  });

  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  app.get('/readyz', async (_req, res) => {
    const result = await options.health.readiness();
    res.status(result.ready ? 200 : 503).json({ status: result.ready ? 'ready' : 'not ready', checks: result.checks });
  });
  if (!options.metricsAccess?.addr) app.get('/metrics', metricsHandler(options.metrics, options.metricsAccess?.token));

  app.use(traceAndMeasure(duration));
  const timeoutMs = options.requestTimeoutMs ?? 30_000;
  if (timeoutMs > 0) app.use(deadline(timeoutMs, options.logger));
  options.routes?.(app);
  app.use(notFoundHandler());
  app.use(problemMiddleware(options.logger));
  return app;
}

/** Each request runs in a server span that continues the caller's trace, and is timed. */
function traceAndMeasure(duration: Histogram<'method' | 'route' | 'status'>): RequestHandler {
  return (req, res, next) => {
    const parent = contextFromHeaders(req.headers);
    const span = tracer('http').startSpan(
      `${req.method} ${req.path}`,
      { kind: SpanKind.SERVER, attributes: { 'http.request.method': req.method, 'url.path': req.path } },
      parent,
    );
    const stop = duration.startTimer();
    res.on('finish', () => {
      const route = (req.route?.path as string | undefined) ?? 'unmatched';
      const labels = { method: req.method, route: `${req.baseUrl}${route}`, status: String(res.statusCode) };
      stop(labels);
      span.setAttribute('http.response.status_code', res.statusCode);
      span.updateName(`${req.method} ${labels.route}`);
      if (res.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
    });
    const { traceId, spanId, traceFlags } = span.spanContext();
    res.setHeader('traceparent', `00-${traceId}-${spanId}-${traceFlags.toString(16).padStart(2, '0')}`);
    context.with(trace.setSpan(parent, span), next);
  };
}
