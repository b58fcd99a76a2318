/** Sign-in, the caller's own user, and personal access tokens. */

import { InputError, NotFoundError } from '@berth/shared/errors';
import { publicUser } from '../auth/records.ts';
import { etag } from '../http/conditional.ts';
import { defineRoute } from '../http/routes.ts';
import type { ApiContext } from './context.ts';
import {
  createTokenBody,
  listOf,
  loginBody,
  loginResponse,
  tokenCreatedResponse,
  tokenParams,
  tokenResponse,
  userResponse,
} from './schemas.ts';

const DEFAULT_TOKEN_DAYS = 90;
const MAX_TOKEN_DAYS = 366;

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
      errors: [401, 429],
      // A session token is a new secret each time: a repeat signs in again.
      idempotent: false,
      handler: async ({ req, body }) => {
        const session = await auth.login(body.username, body.password, req.ip ?? 'unknown');
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
      summary: 'Create a personal access token; the token is in this response only',
      tags: ['tokens'],
      access: { kind: 'user', scope: 'read' },
      body: createTokenBody,
      responses: { 201: tokenCreatedResponse },
      errors: [403],
      etag: true,
      handler: async ({ body, principal: p, idempotency }) => {
        const dayMs = 86_400_000;
        // Default: 90 days, or when the calling personal token expires if that is sooner.
        const defaultExpiry = Math.min(
          Date.now() + DEFAULT_TOKEN_DAYS * dayMs,
          p.tokenKind === 'personal' ? Date.parse(p.tokenExpiresAt) : Number.POSITIVE_INFINITY,
        );
        const expiresAt = body.expiresAt ?? new Date(defaultExpiry).toISOString();
        if (Date.parse(expiresAt) > Date.now() + MAX_TOKEN_DAYS * dayMs) {
          throw new InputError('a token lives at most one year', [
            { path: '$.expiresAt', message: 'at most one year from now' },
          ]);
        }
        const { token, record, modRevision } = await auth.createPersonalToken(
          p,
          { name: body.name, scopes: body.scopes, expiresAt },
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
      summary: 'Revoke one of your tokens',
      tags: ['tokens'],
      access: { kind: 'user', scope: 'read' },
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
