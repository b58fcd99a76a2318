/**
 * Every Berth service's HTTP server: `/healthz` (the process is alive and serving), `/readyz`
 * (every dependency answers right now, checked on each call with a deadline), Prometheus
 * `/metrics`, trace context taken from incoming headers, and the service's own routes between
 * them and the problem+json error handler. stop() drains: readiness turns false first, in-flight
 * requests finish, idle keep-alive connections close.
 */
import { once } from 'node:events';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express, { type Express, type RequestHandler } from 'express';
import { collectDefaultMetrics, Histogram, Registry } from 'prom-client';
import { UnavailableError } from '../errors/index.ts';
import type { Logger } from '../logging/index.ts';
import { context, contextFromHeaders, SpanKind, SpanStatusCode, trace, tracer } from '../telemetry/index.ts';
import { notFoundHandler, problemMiddleware } from './problem.ts';

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
};

export class HttpServer {
  readonly app: Express;
  readonly #options: HttpServerOptions;
  #server: Server | undefined;

  constructor(options: HttpServerOptions) {
    this.#options = options;
    this.app = buildApp(options);
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

  async start(): Promise<void> {
    if (this.#server) return;
    const server = this.app.listen(this.#options.port, this.#options.host);
    server.keepAliveTimeout = 65_000;
    server.headersTimeout = 66_000;
    server.requestTimeout = 0; // log and exec streams stay open; routes set their own limits
    await Promise.race([
      once(server, 'listening'),
      once(server, 'error').then(([err]) => {
        throw new UnavailableError(
          `cannot listen on ${this.#options.host}:${this.#options.port}: ${(err as Error).message}`,
        );
      }),
    ]);
    this.#server = server;
    this.#options.logger.info({ url: this.url }, 'http server listening');
  }

  async stop(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
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
  app.get('/metrics', async (_req, res) => {
    res.type(options.metrics.contentType).send(await options.metrics.metrics());
  });

  app.use(traceAndMeasure(duration));
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
