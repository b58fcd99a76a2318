import { describe, expect, it } from 'vitest';
import { BerthApiError, BerthConnectionError, call, createBerthClient } from './index.ts';

const problem = (status: number, body: unknown) =>
  new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/problem+json' } });

describe('BerthApiError', () => {
  it('carries the problem: status, title, detail and the bad fields by path, in one line', async () => {
    const err = await BerthApiError.fromResponse(
      problem(400, {
        type: 'about:blank',
        title: 'Bad Request',
        status: 400,
        detail: 'the body is invalid',
        errors: [{ path: '$.image', message: 'expected an image repository' }],
      }),
    );
    expect(err).toMatchObject({ status: 400, title: 'Bad Request', detail: 'the body is invalid' });
    expect(err.fields).toEqual([{ path: '$.image', message: 'expected an image repository' }]);
    expect(err.message).toBe('Bad Request: the body is invalid ($.image: expected an image repository) [400]');
    expect(err.message).not.toContain('\n');
  });

  it('does not repeat a field the detail already names', async () => {
    const err = await BerthApiError.fromResponse(
      problem(400, {
        title: 'Bad Request',
        status: 400,
        detail: 'no region "x" at $.region',
        errors: [{ path: '$.region', message: 'no such region' }],
      }),
    );
    expect(err.message).toBe('Bad Request: no region "x" at $.region [400]');
  });

  it('reads a body that is not problem+json: its first line, or the status text', async () => {
    const text = await BerthApiError.fromResponse(
      new Response('upstream timed out\nmore', { status: 502, statusText: 'Bad Gateway' }),
    );
    expect(text.message).toBe('Bad Gateway: upstream timed out [502]');
    const empty = await BerthApiError.fromResponse(
      new Response(null, { status: 503, statusText: 'Service Unavailable' }),
    );
    expect(empty.message).toBe('Service Unavailable [503]');
  });
});

describe('createBerthClient', () => {
  it('sends the token and turns a problem into a BerthApiError through call()', async () => {
    const seen: string[] = [];
    const api = createBerthClient({
      baseUrl: 'http://berth.test/api/v1/',
      token: 't0k',
      fetch: async (input) => {
        const req = input as Request;
        seen.push(`${req.method} ${req.url} ${req.headers.get('authorization')}`);
        return problem(404, { title: 'Not Found', status: 404, detail: 'no app "shop"' });
      },
    });
    const err = await call(api.GET('/api/v1/apps/{app}', { params: { path: { app: 'shop' } } })).catch((e) => e);
    expect(err).toBeInstanceOf(BerthApiError);
    expect(err.message).toBe('Not Found: no app "shop" [404]');
    expect(seen).toEqual(['GET http://berth.test/api/v1/apps/shop Bearer t0k']);
  });

  it('names the address it could not reach', async () => {
    const api = createBerthClient({ baseUrl: 'http://127.0.0.1:1' });
    const err = await call(api.GET('/api/v1/users/me')).catch((e) => e);
    expect(err).toBeInstanceOf(BerthConnectionError);
    expect(err.message).toMatch(/^cannot reach the API at http:\/\/127\.0\.0\.1:1: /);
  });
});
