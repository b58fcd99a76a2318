/**
 * What a new user tripped on (issue 9): an app needs only a name, a region and an image; a missing
 * field says it is required and what to send; a method a path does not serve is a 405 with Allow.
 */
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureRegion, startApi, type TestApi } from './harness.ts';

type Schema = { required?: string[]; properties: Record<string, { default?: unknown; description?: string }> };

let api: TestApi;
let alice: string;

beforeAll(async () => {
  api = await startApi();
  await ensureRegion(api);
  alice = await api.user('alice');
});

afterAll(async () => {
  await api?.stop();
});

/** fetch refuses TRACE (a forbidden method in the Fetch standard), so this goes through node:http. */
function raw(method: string, path: string, token?: string): Promise<{ status: number; allow: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = request(
      `${api.url}/api/v1${path}`,
      { method, headers: token ? { authorization: `Bearer ${token}` } : {} },
      (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode ?? 0, allow: res.headers.allow }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

describe('creating an app', () => {
  it('takes only name, region and image: one HTTP port 8080, checked by a TCP connect', async () => {
    const res = await api.call('POST', '/apps', {
      token: alice,
      body: { name: 'first-app', region: 'local', image: 'team/shop' },
    });
    expect(res.status, JSON.stringify(res.json)).toBe(201);
    expect(res.json.ports).toEqual([{ name: 'http', port: 8080, protocol: 'TCP' }]);
    expect(res.json.healthCheck).toEqual({
      port: 8080,
      initialDelaySeconds: 5,
      periodSeconds: 10,
      timeoutSeconds: 2,
      failureThreshold: 3,
    });
    const read = await api.call('GET', '/apps/first-app', { token: alice });
    expect(read.json).toMatchObject({ ports: res.json.ports, healthCheck: res.json.healthCheck });
  });

  it('without an image answers 400 saying that $.image is required and what to send', async () => {
    const res = await api.call('POST', '/apps', { token: alice, body: { name: 'no-image', region: 'local' } });
    expect(res.status).toBe(400);
    expect(res.json.errors).toEqual([{ path: '$.image', message: expect.stringMatching(/required.*send a string/) }]);
    expect(res.json.detail ?? res.json.title).toMatch(/\$\.image: required/);
  });

  it('documents both defaults in the OpenAPI document', async () => {
    const doc = (await (await fetch(`${api.url}/api/v1/openapi.json`)).json()) as {
      paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: Schema }> } }>>;
    };
    const schema = doc.paths['/api/v1/apps']?.post?.requestBody?.content['application/json']?.schema;
    expect(schema?.required).toEqual(['name', 'region', 'image']);
    expect(schema?.properties.ports?.default).toEqual([{ name: 'http', port: 8080 }]);
    expect(schema?.properties.healthCheck).toMatchObject({ default: {}, description: expect.stringMatching(/TCP/) });
  });
});

describe('a method a known path does not serve', () => {
  it('TRACE and PUT on /apps answer 405 with the methods /apps takes', async () => {
    for (const method of ['TRACE', 'PUT']) {
      const res = await raw(method, '/apps', alice);
      expect(res.status, method).toBe(405);
      expect(res.allow?.split(', '), method).toEqual(['GET', 'HEAD', 'OPTIONS', 'POST']);
    }
  });

  it('OPTIONS answers 204 with Allow; an unknown path stays 404', async () => {
    const options = await raw('OPTIONS', '/apps/first-app');
    expect(options.status).toBe(204);
    expect(options.allow).toMatch(/\bGET\b.*\bPATCH\b/);
    const unknown = await raw('TRACE', '/nothing-here', alice);
    expect(unknown).toEqual({ status: 404, allow: undefined });
  });
});
