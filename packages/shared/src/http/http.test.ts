import { Writable } from 'node:stream';
import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace';
import express from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ConflictError, inputErrorFromZod } from '../errors/index.ts';
import { createLogger } from '../logging/index.ts';
import { startTelemetry, type Telemetry, traceHeaders, withSpan } from '../telemetry/index.ts';
import { createMetricsRegistry, HealthRegistry, HttpServer } from './index.ts';

const logLines: string[] = [];
const logger = createLogger({
  service: 'http-test',
  destination: new Writable({
    write(chunk, _e, done) {
      logLines.push(String(chunk));
      done();
    },
  }),
});
const spans = new InMemorySpanExporter();
let telemetry: Telemetry;
let server: HttpServer;
let dependencyUp = true;

const body = z.object({ name: z.string().min(1), healthCheck: z.object({ port: z.number().int() }) }).strict();

beforeAll(async () => {
  telemetry = startTelemetry({
    serviceName: 'http-test',
    spanProcessors: [new SimpleSpanProcessor({ exporter: spans })],
  });
  const health = new HealthRegistry();
  health.add('dependency', () => {
    if (!dependencyUp) throw new Error('dependency is down');
  });
  server = new HttpServer({
    host: '127.0.0.1',
    port: 0,
    logger,
    health,
    metrics: createMetricsRegistry('http-test'),
    routes: (app) => {
      app.use(express.json({ limit: '1kb' }));
      app.post('/apps', (req, res) => {
        const parsed = body.safeParse(req.body);
        if (!parsed.success) throw inputErrorFromZod(parsed.error);
        res.status(201).json(parsed.data);
      });
      app.get('/conflict', () => {
        throw new ConflictError('app "shop" already exists');
      });
      app.get('/boom', () => {
        throw new Error('database password is wrong');
      });
    },
  });
  await server.start();
});

afterAll(async () => {
  await server.stop();
  await telemetry.shutdown();
});

const post = (path: string, payload: string, type = 'application/json') =>
  fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': type }, body: payload });

describe('problem+json', () => {
  it('a bad body gets 400 with the JSON path of every bad field, including unknown ones', async () => {
    const res = await post('/apps', JSON.stringify({ name: '', healthCheck: { port: 'x' }, colour: 'red' }));
    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toContain('application/problem+json');
    const problem = (await res.json()) as { errors: { path: string }[]; status: number; type: string };
    expect(problem.status).toBe(400);
    expect(problem.type).toMatch(/invalid-input$/);
    expect(problem.errors.map((e) => e.path).sort()).toEqual(['$.colour', '$.healthCheck.port', '$.name']);
  });

  it('malformed JSON is 400, an oversized body 413, and typed errors keep their status', async () => {
    expect((await post('/apps', '{"name":')).status).toBe(400);
    expect((await post('/apps', JSON.stringify({ name: 'x'.repeat(5000) }))).status).toBe(413);
    const conflict = await fetch(`${server.url}/conflict`);
    expect(conflict.status).toBe(409);
    expect(((await conflict.json()) as { detail: string }).detail).toBe('app "shop" already exists');
    const missing = await fetch(`${server.url}/nowhere`);
    expect(missing.status).toBe(404);
    expect(missing.headers.get('content-type')).toContain('application/problem+json');
  });

  it('an unexpected error is a 500 that hides its message from the caller and logs it', async () => {
    logLines.length = 0;
    const res = await fetch(`${server.url}/boom`);
    expect(res.status).toBe(500);
    expect(await res.text()).not.toContain('password');
    expect(logLines.join('')).toContain('database password is wrong');
    // 4xx are not logged.
    logLines.length = 0;
    await fetch(`${server.url}/conflict`);
    expect(logLines.join('')).not.toContain('request failed');
  });
});

describe('health, readiness, metrics, traces', () => {
  it('readyz follows the dependency while healthz stays up', async () => {
    expect((await fetch(`${server.url}/readyz`)).status).toBe(200);
    dependencyUp = false;
    const down = await fetch(`${server.url}/readyz`);
    expect(down.status).toBe(503);
    expect(JSON.stringify(await down.json())).toContain('dependency is down');
    expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
    dependencyUp = true;
    expect((await fetch(`${server.url}/readyz`)).status).toBe(200);
  });

  it('metrics are Prometheus text with request durations per route', async () => {
    await fetch(`${server.url}/conflict`);
    const text = await (await fetch(`${server.url}/metrics`)).text();
    expect(text).toMatch(/berth_http_request_duration_seconds_count\{[^}]*route="\/conflict"[^}]*status="409"/);
    expect(text).toContain('process_cpu_user_seconds_total');
  });

  it('a request continues the caller trace carried in its headers', async () => {
    const traceId = await withSpan('cli call', async (span) => {
      await fetch(`${server.url}/conflict`, { headers: traceHeaders() });
      return span.spanContext().traceId;
    });
    const serverSpan = spans
      .getFinishedSpans()
      .find((s) => s.name === 'GET /conflict' && s.spanContext().traceId === traceId);
    expect(serverSpan).toBeDefined();
  });
});
