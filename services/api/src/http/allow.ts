/**
 * What a known path answers to a method it does not serve: 405 with `Allow` (RFC 9110 §15.5.6),
 * not the 404 express falls through to, so a client learns that the path exists and what it takes.
 * `OPTIONS` answers 204 with `Allow` alone. An unknown path still falls through to the 404.
 */
import { MethodNotAllowedError } from '@berth/shared/errors';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import type { AnyRoute } from './routes.ts';

/**
 * Express-style path → a regex matching it as express does: case-insensitive, an optional
 * trailing slash, a parameter is one non-empty segment.
 */
function pathRegex(path: string): RegExp {
  const source = path
    .split(/(:[A-Za-z_][A-Za-z0-9_]*)/)
    .map((part) => (part.startsWith(':') ? '[^/]+' : part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
    .join('');
  return new RegExp(`^${source}/?$`, 'i');
}

/** Mounted after every route: only requests no route answered reach it. */
export function methodNotAllowed(base: string, routes: AnyRoute[]): RequestHandler {
  const byPath = new Map<string, { regex: RegExp; methods: Set<string> }>();
  for (const route of routes) {
    const entry = byPath.get(route.path) ?? { regex: pathRegex(`${base}${route.path}`), methods: new Set() };
    entry.methods.add(route.method.toUpperCase());
    byPath.set(route.path, entry);
  }
  return (req: Request, res: Response, next: NextFunction) => {
    // A path can match more than one pattern (`/users/me`, `/users/:user`): Allow is their union.
    const methods = new Set<string>();
    for (const { regex, methods: m } of byPath.values()) {
      if (regex.test(req.path)) for (const method of m) methods.add(method);
    }
    if (methods.size === 0) return next();
    if (methods.has('GET')) methods.add('HEAD');
    methods.add('OPTIONS');
    const allow = [...methods].sort();
    if (req.method === 'OPTIONS') {
      res.setHeader('Allow', allow.join(', '));
      res.status(204).end();
      return;
    }
    next(new MethodNotAllowedError(`${req.method} is not supported here; use ${allow.join(', ')}`, allow));
  };
}
