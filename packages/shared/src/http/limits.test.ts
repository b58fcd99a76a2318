import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../logging/index.ts';
import { createMetricsRegistry, HealthRegistry, HttpServer, type HttpServerOptions, withoutDeadline } from './index.ts';

const logger = createLogger({ service: 'http-limits-test', level: 'silent' });
const servers: HttpServer[] = [];

async function start(options: Partial<HttpServerOptions>): Promise<HttpServer> {
  const server = new HttpServer({
    host: '127.0.0.1',
    port: 0,
    logger,
    health: new HealthRegistry(),
    metrics: createMetricsRegistry('http-limits-test'),
    ...options,
  });
  servers.push(server);
  await server.start();
  return server;
}

afterAll(async () => {
  await Promise.all(servers.map((s) => s.stop()));
});

describe('the request deadline', () => {
  let server: HttpServer;
  let slowFinished = false;
  beforeAll(async () => {
    server = await start({
      requestTimeoutMs: 300,
      routes: (app) => {
        app.get('/slow', async (_req, res) => {
          await sleep(1500);
          slowFinished = true;
          if (!res.headersSent) res.json({ late: true });
        });
        app.get('/quick', (_req, res) => {
          res.json({ ok: true });
        });
        // A stream that waits before its first byte, then sends past the deadline.
        app.get('/stream', async (_req, res) => {
          withoutDeadline(res);
          await sleep(500);
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          for (let i = 0; i < 4; i++) {
            res.write(`data: ${i}\n\n`);
            await sleep(200);
          }
          res.end();
        });
      },
    });
  });

  it('answers 503 problem+json for a handler that runs too long, and quick ones normally', async () => {
    const started = performance.now();
    const res = await fetch(`${server.url}/slow`);
    expect(res.status).toBe(503);
    expect(res.headers.get('content-type')).toContain('application/problem+json');
    expect(res.headers.get('retry-after')).toBe('1');
    expect(((await res.json()) as { detail: string }).detail).toContain('300 ms');
    expect(performance.now() - started).toBeLessThan(1400);
    expect(slowFinished).toBe(false);
    expect((await fetch(`${server.url}/quick`)).status).toBe(200);
  });

  it('does not cut a stream', async () => {
    const res = await fetch(`${server.url}/stream`);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n');
  });
});

describe('/metrics access', () => {
  const TOKEN = 'metrics-token-0123456789';

  it('is open on the main listener by default', async () => {
    const server = await start({});
    expect((await fetch(`${server.url}/metrics`)).status).toBe(200);
  });

  it('needs the bearer token when one is set; health stays open', async () => {
    const server = await start({ metricsAccess: { token: TOKEN } });
    const anonymous = await fetch(`${server.url}/metrics`);
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get('content-type')).toContain('application/problem+json');
    expect(await anonymous.text()).not.toContain('process_cpu');
    expect((await fetch(`${server.url}/metrics`, { headers: { authorization: 'Bearer wrong' } })).status).toBe(401);
    const scraped = await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(scraped.status).toBe(200);
    expect(await scraped.text()).toContain('service="http-limits-test"');
    expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
    expect((await fetch(`${server.url}/readyz`)).status).toBe(200);
  });

  it('with a listener of its own, is served there only', async () => {
    const server = await start({ metricsAccess: { addr: { host: '127.0.0.1', port: 0 } } });
    expect(server.metricsUrl).toBeDefined();
    expect(server.metricsUrl).not.toBe(server.url);
    expect((await fetch(`${server.url}/metrics`)).status).toBe(404);
    expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
    const scraped = await fetch(`${server.metricsUrl}/metrics`);
    expect(scraped.status).toBe(200);
    expect(await scraped.text()).toContain('process_cpu_user_seconds_total');
    expect((await fetch(`${server.metricsUrl}/healthz`)).status).toBe(404);
  });
});
