/**
 * The OpenAPI 3.1 document, generated from the route declarations and the very zod schemas that
 * validate requests (z.toJSONSchema, JSON Schema 2020-12 — what OpenAPI 3.1 uses). Weighed:
 * zod-openapi / @asteasolutions/zod-to-openapi; our routes already carry everything a document
 * needs, and zod 4 converts schemas itself, so the generator is this one small file.
 */
import { z } from 'zod';
import { problemSchema } from '../resources/schemas.ts';
import type { AnyRoute } from './routes.ts';

const STATUS_TEXT: Record<number, string> = {
  200: 'OK',
  201: 'Created',
  204: 'No Content',
  400: 'Bad request: the problem names each bad field by JSON path',
  401: 'No valid bearer token',
  403: 'Not allowed: role, scope or quota (the problem says which, with numbers)',
  404: 'Not found, or not visible to the caller',
  409: 'Conflict with the current state',
  412: 'If-Match names an older revision',
  413: 'Body too large',
  415: 'Body is not application/json',
  429: 'Too many requests',
  503: 'A dependency is unavailable',
};

function jsonSchema(schema: z.ZodType, io: 'input' | 'output'): Record<string, unknown> {
  const out = z.toJSONSchema(schema, { target: 'draft-2020-12', io, unrepresentable: 'any' }) as Record<
    string,
    unknown
  >;
  delete out.$schema;
  return out;
}

/** `/apps/:app/versions` → `/apps/{app}/versions` */
function openApiPath(path: string): string {
  return path.replace(/:([A-Za-z_]+)/g, '{$1}');
}

export function buildOpenApi(routes: AnyRoute[], base: string, version: string): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  const problem = jsonSchema(problemSchema, 'output');
  for (const route of routes) {
    const path = `${base}${openApiPath(route.path)}`;
    paths[path] ??= {};
    const parameters: unknown[] = [];
    if (route.params) {
      for (const [name, schema] of Object.entries(route.params.shape)) {
        parameters.push({ name, in: 'path', required: true, schema: jsonSchema(schema as z.ZodType, 'input') });
      }
    }
    if (route.query) {
      for (const [name, schema] of Object.entries(route.query.shape)) {
        const s = schema as z.ZodType;
        parameters.push({
          name,
          in: 'query',
          required: !s.safeParse(undefined).success,
          schema: jsonSchema(s, 'input'),
        });
      }
    }
    if (route.etag && ['patch', 'put', 'delete'].includes(route.method)) {
      parameters.push({
        name: 'If-Match',
        in: 'header',
        required: false,
        description: 'An ETag from an earlier response: the change is refused with 412 if the resource changed since',
        schema: { type: 'string' },
      });
    }
    const responses: Record<string, unknown> = {};
    for (const [status, schema] of Object.entries(route.responses)) {
      const headers = route.etag
        ? { ETag: { description: "The resource's etcd mod revision", schema: { type: 'string' } } }
        : undefined;
      responses[status] = {
        description: STATUS_TEXT[Number(status)] ?? 'OK',
        ...(headers ? { headers } : {}),
        ...(schema
          ? { content: { [route.contentType ?? 'application/json']: { schema: jsonSchema(schema, 'output') } } }
          : {}),
      };
    }
    const errors = new Set<number>([400, 503, ...(route.errors ?? [])]);
    if (route.access.kind === 'secret') errors.add(401);
    else if (route.access.kind !== 'public') errors.add(401).add(403);
    if (route.params) errors.add(404);
    if (route.body) errors.add(413).add(415);
    for (const status of [...errors].sort()) {
      responses[String(status)] = {
        description: STATUS_TEXT[status] ?? 'Error',
        content: { 'application/problem+json': { schema: problem } },
      };
    }
    paths[path][route.method] = {
      operationId: route.operationId,
      summary: route.summary,
      tags: route.tags,
      ...(route.access.kind === 'public' ? { security: [] } : {}),
      ...(parameters.length ? { parameters } : {}),
      ...(route.body
        ? {
            requestBody: {
              required: true,
              content: { 'application/json': { schema: jsonSchema(route.body, 'input') } },
            },
          }
        : {}),
      responses,
    };
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'Berth API',
      version,
      description:
        'Apps, versions, members and roles, domains and traffic, regions, cells and LB groups, quotas and activity of a Berth installation. Errors are RFC 9457 problem+json.',
    },
    servers: [{ url: '/' }],
    security: [{ bearer: [] }],
    components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
    paths,
  };
}
