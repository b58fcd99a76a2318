import { inputErrorFromZod } from '@berth/shared/errors';
import { describe, expect, it } from 'vitest';
import { buildOpenApi } from '../http/openapi.ts';
import { defineRoute } from '../http/routes.ts';
import { appResponse, createAppBody, createUserBody, createVersionBody } from './schemas.ts';

type Schema = {
  required?: string[];
  default?: unknown;
  description?: string;
  properties: Record<string, Schema>;
};

const minimal = { name: 'shop', region: 'local', image: 'team/shop' };

function issuesOf(schema: typeof createAppBody | typeof createVersionBody, body: unknown) {
  const parsed = schema.safeParse(body);
  if (parsed.success) throw new Error('expected the body to be refused');
  return inputErrorFromZod(parsed.error).issues;
}

describe('createAppBody', () => {
  it('needs only name, region and image: one HTTP port 8080 and a TCP check on it', () => {
    const body = createAppBody.parse(minimal);
    expect(body.ports).toEqual([{ name: 'http', port: 8080, protocol: 'TCP' }]);
    expect(body.healthCheck).toEqual({
      port: 8080,
      initialDelaySeconds: 5,
      periodSeconds: 10,
      timeoutSeconds: 2,
      failureThreshold: 3,
    });
    expect(body.healthCheck.path).toBeUndefined();
  });

  it('checks the first of the ports it was given', () => {
    const body = createAppBody.parse({
      ...minimal,
      ports: [
        { name: 'web', port: 3000 },
        { name: 'admin', port: 9000 },
      ],
    });
    expect(body.healthCheck).toMatchObject({ port: 3000 });
    expect(body.healthCheck.path).toBeUndefined();
  });

  it('keeps a check that was sent, filling in its port from the ports', () => {
    const body = createAppBody.parse({
      ...minimal,
      ports: [{ name: 'web', port: 3000 }],
      healthCheck: { path: '/ok' },
    });
    expect(body.healthCheck).toMatchObject({ path: '/ok', port: 3000 });
    const explicit = createAppBody.parse({ ...minimal, healthCheck: { path: '/ok', port: 9090, periodSeconds: 30 } });
    expect(explicit.healthCheck).toMatchObject({ path: '/ok', port: 9090, periodSeconds: 30 });
  });

  it('produces what the stored app schema accepts', () => {
    const body = createAppBody.parse(minimal);
    const at = new Date(0).toISOString();
    const stored = appResponse.safeParse({ ...body, owner: 'ann', createdAt: at, updatedAt: at });
    expect(stored.success).toBe(true);
  });

  it('says a missing field is required and what to send, at its JSON path', () => {
    const issues = issuesOf(createAppBody, { name: 'shop', region: 'local' });
    expect(issues).toEqual([{ path: '$.image', message: 'required: send a string' }]);
  });

  it('names every missing field, nested ones included', () => {
    const issues = issuesOf(createAppBody, { ports: [{}] });
    expect(issues).toEqual(
      expect.arrayContaining([
        { path: '$.name', message: 'required: send a string' },
        { path: '$.region', message: 'required: send a string' },
        { path: '$.image', message: 'required: send a string' },
        { path: '$.ports[0].name', message: 'required: send a string' },
        { path: '$.ports[0].port', message: 'required: send a number' },
      ]),
    );
  });

  it('still reports a wrong value as wrong, not as missing', () => {
    const issues = issuesOf(createAppBody, { ...minimal, ports: 'http' });
    expect(issues).toHaveLength(1);
    expect(issues[0]?.path).toBe('$.ports');
    expect(issues[0]?.message).not.toMatch(/required/);
  });

  it('refuses an empty ports list rather than defaulting it', () => {
    const issues = issuesOf(createAppBody, { ...minimal, ports: [] });
    expect(issues.map((i) => i.path)).toEqual(['$.ports']);
  });
});

describe('createVersionBody', () => {
  it('takes a TCP check (no path) like the default one', () => {
    const body = createVersionBody.parse({ healthCheck: { port: 8080 } });
    expect(body.healthCheck).toMatchObject({ port: 8080 });
    expect(body.healthCheck?.path).toBeUndefined();
  });
});

describe('createUserBody', () => {
  it('refuses an e-mail address longer than RFC 5321 allows, as the document says', () => {
    const user = { username: 'ann', password: 'long-enough' };
    const ok = (email: string) => createUserBody.safeParse({ ...user, email }).success;
    expect(ok(`${'a'.repeat(64)}@example.org`)).toBe(true);
    expect(ok(`${'a'.repeat(65)}@example.org`)).toBe(false);
    expect(ok(`ann@${'b'.repeat(64)}.org`)).toBe(false);
  });
});

describe('the OpenAPI document', () => {
  it('shows the defaults of ports and healthCheck, and requires only name, region and image', () => {
    const route = defineRoute({
      method: 'post',
      path: '/apps',
      operationId: 'createApp',
      summary: 'Create an app',
      tags: ['apps'],
      access: { kind: 'user', scope: 'write' },
      body: createAppBody,
      responses: { 201: appResponse },
      handler: async () => ({ status: 201 }),
    });
    const doc = buildOpenApi([route], '/api/v1', 'test') as {
      paths: Record<string, { post: { requestBody: { content: Record<string, { schema: Schema }> } } }>;
    };
    const schema = doc.paths['/api/v1/apps']?.post.requestBody.content['application/json']?.schema;
    expect(schema?.required).toEqual(['name', 'region', 'image']);
    expect(schema?.properties.ports?.default).toEqual([{ name: 'http', port: 8080 }]);
    expect(schema?.properties.healthCheck?.default).toEqual({});
    expect(schema?.properties.healthCheck?.description).toMatch(/TCP/);
    expect(schema?.properties.healthCheck?.required ?? []).toEqual([]);
    expect(schema?.properties.healthCheck?.properties.port?.description).toMatch(/first of `ports`/);
  });
});
