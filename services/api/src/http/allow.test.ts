import type { AddressInfo } from 'node:net';
import { notFoundHandler, problemMiddleware } from '@berth/shared/http';
import { createLogger } from '@berth/shared/logging';
import express from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appParams } from '../resources/schemas.ts';
import { type AnyRoute, defineRoute, mountRoutes } from './routes.ts';

function route(method: AnyRoute['method'], path: string): AnyRoute {
  return defineRoute({
    method,
    path,
    operationId: `${method}${path}`,
    summary: '',
    tags: [],
    access: { kind: 'public' },
    ...(path.includes(':app') ? { params: appParams } : {}),
    responses: { 200: undefined },
    handler: async () => ({ status: 200 }),
  });
}

let server: ReturnType<express.Express['listen']>;
let url: string;

beforeAll(async () => {
  const app = express();
  const router = express.Router();
  const routes = [
    route('get', '/apps'),
    route('post', '/apps'),
    route('get', '/apps/:app'),
    route('patch', '/apps/:app'),
    route('delete', '/apps/:app'),
    route('get', '/users/me'),
  ];
  mountRoutes(router, '/api/v1', routes, async () => undefined);
  app.use(router);
  app.use(notFoundHandler());
  app.use(problemMiddleware(createLogger({ service: 'test', level: 'silent' })));
  await new Promise<void>((resolve) => {
    server = app.listen(0, '127.0.0.1', () => resolve());
  });
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise((resolve) => server?.close(resolve));
});

describe('a method a known path does not serve', () => {
  it('answers 405 with the methods the path takes in Allow', async () => {
    const res = await fetch(`${url}/api/v1/apps`, { method: 'PUT' });
    expect(res.status).toBe(405);
    expect(res.headers.get('allow')).toBe('GET, HEAD, OPTIONS, POST');
    expect(res.headers.get('content-type')).toMatch(/application\/problem\+json/);
    expect(await res.json()).toMatchObject({ status: 405 });
  });

  it('matches a path with parameters, a trailing slash and any letter case, as express routes do', async () => {
    for (const path of ['/api/v1/apps/shop', '/api/v1/apps/shop/', '/api/v1/APPS/shop']) {
      const res = await fetch(`${url}${path}`, { method: 'POST' });
      expect(res.status, path).toBe(405);
      expect(res.headers.get('allow'), path).toBe('DELETE, GET, HEAD, OPTIONS, PATCH');
    }
  });

  it('answers OPTIONS with 204 and Allow', async () => {
    const res = await fetch(`${url}/api/v1/users/me`, { method: 'OPTIONS' });
    expect(res.status).toBe(204);
    expect(res.headers.get('allow')).toBe('GET, HEAD, OPTIONS');
  });

  it('leaves the methods a path serves alone, HEAD included', async () => {
    expect((await fetch(`${url}/api/v1/apps/shop`, { method: 'PATCH' })).status).toBe(200);
    expect((await fetch(`${url}/api/v1/apps`, { method: 'HEAD' })).status).toBe(200);
  });

  it('leaves an unknown path a 404', async () => {
    for (const path of ['/api/v1/nothing', '/api/v1/apps/shop/nothing', '/api/v1']) {
      const res = await fetch(`${url}${path}`, { method: 'PUT' });
      expect(res.status, path).toBe(404);
      expect(res.headers.get('allow'), path).toBeNull();
    }
  });
});
