/**
 * One declaration per route: method, path, who may call it, the zod schemas of its parameters,
 * query, body and responses, and the handler. The same declaration mounts the express route,
 * validates the request (unknown fields refused, each bad field named by its JSON path) and
 * becomes the route's entry in the OpenAPI document, so the document cannot drift from the code.
 */
import { InputError, inputErrorFromZod, UnsupportedMediaTypeError } from '@berth/shared/errors';
import { withoutDeadline } from '@berth/shared/http';
import type { NextFunction, Request, Response, Router } from 'express';
import type { z } from 'zod';
import type { Principal, Scope } from '../auth/principal.ts';
import { methodNotAllowed } from './allow.ts';
import type { IdempotencyRequest } from './idempotency.ts';

export type HttpMethod = 'get' | 'post' | 'put' | 'patch' | 'delete';

/**
 * Who may call a route: anyone, any signed-in caller (with a scope), an admin, or a machine that
 * is no user and shows a shared secret (`verify` gets the Authorization header; false → 401).
 */
export type Access =
  | { kind: 'public' }
  | { kind: 'user'; scope: Scope }
  | { kind: 'admin' }
  | { kind: 'secret'; verify: (authorization: string | undefined) => boolean };

/** The caller a route of this access sees: always signed in, except on public and secret routes. */
export type PrincipalOf<A extends Access> = A extends { kind: 'public' }
  ? Principal | undefined
  : A extends { kind: 'secret' }
    ? undefined
    : Principal;

export type RouteContext<P, Q, B, A extends Access = Access> = {
  req: Request;
  res: Response;
  params: P;
  query: Q;
  body: B;
  principal: PrincipalOf<A>;
  /** A POST's `Idempotency-Key`, hashed with the request it came with (./idempotency.ts). */
  idempotency: IdempotencyRequest | undefined;
};

/** What a handler returns: a status, a body, optional headers (ETag, Location). */
export type RouteResult = {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
};

export type RouteDef<
  P extends z.ZodObject = z.ZodObject,
  Q extends z.ZodObject = z.ZodObject,
  B extends z.ZodType = z.ZodType,
  A extends Access = Access,
> = {
  method: HttpMethod;
  /** Express-style path under /api/v1, e.g. `/apps/:app/versions`. */
  path: string;
  operationId: string;
  summary: string;
  tags: string[];
  access: A;
  params?: P;
  query?: Q;
  body?: B;
  /** Success responses: status → schema (undefined for no body). */
  responses: Record<number, z.ZodType | undefined>;
  /** The success responses' media type when it is not JSON (`text/plain`): the handler's body is a string. */
  contentType?: string;
  /** Error statuses this route can answer besides the common ones (401, 403 for admin, 404 …). */
  errors?: number[];
  /** Responses carry an ETag; PATCH/PUT/DELETE honour If-Match. */
  etag?: boolean;
  /** POST only: `Idempotency-Key` is not honoured (login; the answer holds a secret that is never stored). */
  idempotent?: false;
  handler: (ctx: RouteContext<z.output<P>, z.output<Q>, z.output<B>, A>) => Promise<RouteResult>;
};

// biome-ignore lint/suspicious/noExplicitAny: a list of routes of any parameter types
export type AnyRoute = RouteDef<any, any, any, any>;

export function defineRoute<P extends z.ZodObject, Q extends z.ZodObject, B extends z.ZodType, const A extends Access>(
  route: RouteDef<P, Q, B, A>,
): RouteDef<P, Q, B, A> {
  return route;
}

export type Authenticator = (req: Request, access: Access) => Promise<Principal | undefined>;

/** Answers a POST again from its stored record, or undefined when the key is new (./idempotency.ts). */
export type IdempotencyGate = {
  request(req: Request, principal: Principal | undefined, body: unknown): IdempotencyRequest | undefined;
  replay(request: IdempotencyRequest): Promise<RouteResult | undefined>;
};

const BODY_METHODS = new Set<HttpMethod>(['post', 'put', 'patch']);

/** Mounts routes on an express app under `base`. */
export function mountRoutes(
  app: Router,
  base: string,
  routes: AnyRoute[],
  authenticate: Authenticator,
  idempotency?: IdempotencyGate,
): void {
  for (const route of routes) {
    app[route.method](`${base}${route.path}`, async (req: Request, res: Response, next: NextFunction) => {
      // A stream stays open: the server's request deadline is not for it.
      if (route.contentType === 'text/event-stream') withoutDeadline(res);
      try {
        const principal = await authenticate(req, route.access);
        const params = parseWith(route.params, req.params, 'path parameters');
        const query = parseWith(route.query, req.query, 'query');
        let body: unknown;
        if (route.body) {
          if (BODY_METHODS.has(route.method) && !req.is(['application/json', 'application/*+json'])) {
            throw new UnsupportedMediaTypeError('send the request body as application/json');
          }
          body = parseWith(route.body, req.body ?? {}, 'request body');
        }
        const keyed =
          route.method === 'post' && route.idempotent !== false
            ? idempotency?.request(req, principal, body)
            : undefined;
        const replayed = keyed ? await idempotency?.replay(keyed) : undefined;
        const result =
          replayed ?? (await route.handler({ req, res, params, query, body, principal, idempotency: keyed }));
        if (res.headersSent) return;
        for (const [k, v] of Object.entries(result.headers ?? {})) res.setHeader(k, v);
        if (result.body === undefined) res.status(result.status).end();
        else if (route.contentType && typeof result.body === 'string') {
          res.status(result.status).type(route.contentType).send(result.body);
        } else res.status(result.status).json(result.body);
      } catch (err) {
        // Answered already (the server's deadline sent a 503): nothing left to tell the client.
        if (res.writableEnded) return;
        next(err);
      }
    });
  }
  // After every route: a known path with a method it does not serve gets 405 with Allow.
  app.use(methodNotAllowed(base, routes));
}

function parseWith(schema: z.ZodType | undefined, value: unknown, what: string): unknown {
  if (!schema) return {};
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const err = inputErrorFromZod(parsed.error, what);
    // Path and query errors are named by parameter, not by JSON path of a body.
    if (what !== 'request body') {
      return throwParamError(err, what);
    }
    throw err;
  }
  return parsed.data;
}

function throwParamError(err: InputError, what: string): never {
  throw new InputError(
    err.message,
    err.issues.map((i) => ({ ...i, path: i.path.replace(/^\$\.?/, `${what === 'query' ? 'query' : 'path'}:`) })),
  );
}
