/** Sign-in, the caller's own user, and personal access tokens. */

import { InputError, NotFoundError } from '@berth/shared/errors';
import type { Request } from 'express';
import { publicUser } from '../auth/records.ts';
import type { Client } from '../auth/service.ts';
import { etag } from '../http/conditional.ts';
import { defineRoute } from '../http/routes.ts';
import type { ApiContext } from './context.ts';
import {
  changePasswordBody,
  createTokenBody,
  endSessionsQuery,
  endSessionsResponse,
  listOf,
  loginBody,
  loginResponse,
  sessionResponse,
  tokenCreatedResponse,
  tokenParams,
  tokenResponse,
  userResponse,
} from './schemas.ts';

const DEFAULT_TOKEN_DAYS = 90;
const MAX_TOKEN_DAYS = 366;

/** The caller's address as express sees it (X-Forwarded-For only from TRUSTED_PROXIES). */
function clientOf(req: Request): Client {
  return { address: req.ip ?? req.socket.remoteAddress ?? 'unknown', userAgent: req.get('user-agent') };
}

export function authRoutes(ctx: ApiContext) {
  const { auth } = ctx;
  return [
    defineRoute({
      method: 'post',
      path: '/auth/login',
      operationId: 'login',
      summary: 'Sign in with a user name and password (local or LDAP); returns a session token',
      tags: ['auth'],
      access: { kind: 'public' },
      body: loginBody,
      responses: { 200: loginResponse },
      errors: [401, 403, 429, 503],
      // A session token is a new secret each time: a repeat signs in again.
      idempotent: false,
      handler: async ({ req, body }) => {
        const session = await auth.login(body.username, body.password, clientOf(req));
        return { status: 200, body: { token: session.token, expiresAt: session.expiresAt } };
      },
    }),

    defineRoute({
      method: 'get',
      path: '/users/me',
      operationId: 'getMe',
      summary: 'The signed-in user',
      tags: ['users'],
      access: { kind: 'user', scope: 'read' },
      responses: { 200: userResponse },
      etag: true,
      handler: async ({ principal }) => {
        const found = await auth.getUser(principal.user);
        if (!found) throw new NotFoundError('your user no longer exists');
        return { status: 200, body: publicUser(found.user), headers: { ETag: etag(found.modRevision) } };
      },
    }),

    defineRoute({
      method: 'post',
      path: '/users/me/password',
      operationId: 'changePassword',
      summary: 'Change your password (local users): ends every other session; personal access tokens stay',
      tags: ['users'],
      access: { kind: 'user', scope: 'write' },
      body: changePasswordBody,
      responses: { 204: undefined },
      errors: [409, 429, 503],
      // A repeat checks the current password again, which is then the new one: no replay.
      idempotent: false,
      handler: async ({ req, body, principal }) => {
        await auth.changePassword(principal, body.currentPassword, body.newPassword, clientOf(req));
        return { status: 204 };
      },
    }),

    defineRoute({
      method: 'get',
      path: '/users/me/sessions',
      operationId: 'listSessions',
      summary: 'Your sessions (logins): when they began and end, and where from',
      tags: ['users'],
      access: { kind: 'user', scope: 'read' },
      responses: { 200: listOf(sessionResponse) },
      handler: async ({ principal }) => {
        const sessions = await auth.listTokens(principal.user, 'session');
        const items = sessions
          .sort((a, b) => a.createdAt.localeCompare(b.createdAt))
          .map(({ id, createdAt, expiresAt, address, userAgent }) => ({
            id,
            createdAt,
            expiresAt,
            ...(address ? { address } : {}),
            ...(userAgent ? { userAgent } : {}),
            current: id === principal.tokenId,
          }));
        return { status: 200, body: { items, next: null } };
      },
    }),

    defineRoute({
      method: 'delete',
      path: '/users/me/sessions',
      operationId: 'endSessions',
      summary: 'Sign out everywhere: every session but this one (all of them with ?all=true)',
      tags: ['users'],
      access: { kind: 'user', scope: 'write' },
      query: endSessionsQuery,
      responses: { 200: endSessionsResponse },
      handler: async ({ query, principal }) => {
        const ended = await auth.endSessions(principal, { all: query.all === 'true' });
        return { status: 200, body: { ended } };
      },
    }),

    defineRoute({
      method: 'delete',
      path: '/users/me/sessions/:id',
      operationId: 'endSession',
      summary: 'End one of your sessions',
      tags: ['users'],
      access: { kind: 'user', scope: 'write' },
      params: tokenParams,
      responses: { 204: undefined },
      handler: async ({ params, principal }) => {
        await auth.deleteToken(
          principal,
          params.id,
          (removed) => [{ kind: 'token', resourceId: removed.user, resourceName: removed.id, action: 'revoked' }],
          { user: principal.user, kind: 'session' },
        );
        return { status: 204 };
      },
    }),

    defineRoute({
      method: 'get',
      path: '/tokens',
      operationId: 'listTokens',
      summary: "The caller's personal access tokens (never their secrets)",
      tags: ['tokens'],
      access: { kind: 'user', scope: 'read' },
      responses: { 200: listOf(tokenResponse) },
      handler: async ({ principal }) => {
        const tokens = await auth.listPersonalTokens(principal.user);
        const items = tokens.map(({ id, name, scopes, createdAt, expiresAt }) => ({
          id,
          name,
          scopes,
          createdAt,
          expiresAt,
        }));
        return { status: 200, body: { items, next: null } };
      },
    }),

    defineRoute({
      method: 'post',
      path: '/tokens',
      operationId: 'createToken',
      summary:
        'Create a personal access token (needs the write scope); the token is in this response only. From a session, one that outlives the session needs `password`.',
      tags: ['tokens'],
      access: { kind: 'user', scope: 'write' },
      body: createTokenBody,
      responses: { 201: tokenCreatedResponse },
      errors: [403, 409, 429, 503],
      etag: true,
      handler: async ({ req, body, principal: p, idempotency }) => {
        const dayMs = 86_400_000;
        // Default: 90 days, or when the calling token expires if that is sooner (unless a session
        // sends the password again, which lets it make a token that outlives it).
        const defaultExpiry = Math.min(
          Date.now() + DEFAULT_TOKEN_DAYS * dayMs,
          p.tokenKind === 'personal' || body.password === undefined
            ? Date.parse(p.tokenExpiresAt)
            : Number.POSITIVE_INFINITY,
        );
        const expiresAt = body.expiresAt ?? new Date(defaultExpiry).toISOString();
        if (Date.parse(expiresAt) > Date.now() + MAX_TOKEN_DAYS * dayMs) {
          throw new InputError('a token lives at most one year', [
            { path: '$.expiresAt', message: 'at most one year from now' },
          ]);
        }
        const { token, record, modRevision } = await auth.createPersonalToken(
          p,
          { name: body.name, scopes: body.scopes, expiresAt, password: body.password },
          clientOf(req),
          (r) => [
            {
              kind: 'token',
              resourceId: p.user,
              resourceName: r.id,
              action: 'created',
              data: { name: r.name, scopes: r.scopes, expiresAt: r.expiresAt },
            },
          ],
          idempotency,
        );
        const { id, name, scopes, createdAt } = record;
        return {
          status: 201,
          body: { id, name, scopes, createdAt, expiresAt: record.expiresAt, token },
          headers: { ETag: etag(modRevision) },
        };
      },
    }),

    defineRoute({
      method: 'delete',
      path: '/tokens/:id',
      operationId: 'deleteToken',
      summary: 'Revoke one of your tokens (needs the write scope)',
      tags: ['tokens'],
      access: { kind: 'user', scope: 'write' },
      params: tokenParams,
      responses: { 204: undefined },
      handler: async ({ params, principal }) => {
        await auth.deleteToken(principal, params.id, (removed) => [
          { kind: 'token', resourceId: removed.user, resourceName: removed.id, action: 'revoked' },
        ]);
        return { status: 204 };
      },
    }),
  ];
}
