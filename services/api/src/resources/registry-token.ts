/**
 * The registry's token server: `GET /registry/token`, as the distribution token spec has it
 * (docs/spec/auth/token.md@v2.8.2; see docs/registry.md). The registry answers an unauthorized
 * request with a Bearer challenge naming this realm, its service and the scope it needs; the
 * client (docker, containerd, a test) asks here with Basic credentials (a password, or a personal
 * access token as the password), or none for anonymous pulls, and gets a JWT whose `access` is
 * what it asked for that its role in each image group allows. Wrong credentials are a 401; asking
 * for more than one may do is not an error: the token just grants less, possibly nothing.
 */
import { InputError, UnauthorizedError } from '@berth/shared/errors';
import { imageGroupMemberSchema, imageGroupSchema, roleAtLeast } from '@berth/shared/model';
import { z } from 'zod';
import { scopeCovers } from '../auth/principal.ts';
import type { BasicIdentity } from '../auth/service.ts';
import { defineRoute } from '../http/routes.ts';
import { grant, groupOfRepository, parseScopes, type RequestedScope } from '../registry/scope.ts';
import type { RegistryTokenIssuer } from '../registry/token-issuer.ts';
import type { ApiContext } from './context.ts';

/** Not strict: registry clients add parameters of their own (`client_id`, OAuth2 fields). */
export const registryTokenQuery = z.object({
  service: z.string().max(255).optional().describe("The registry's service name: the token's audience"),
  scope: z
    .union([z.string().max(2048), z.array(z.string().max(2048)).max(64)])
    .optional()
    .describe('Repeated: `repository:team/shop:pull,push`; none for `docker login`'),
  account: z.string().max(256).optional().describe('The account the client acts as: the Basic user name'),
  offline_token: z.enum(['true', 'false']).optional().describe('Sent by `docker login`; no refresh token is issued'),
  client_id: z.string().max(256).optional(),
});

export const registryTokenResponse = z.object({
  token: z.string(),
  /** The same token, under OAuth2's name. */
  access_token: z.string(),
  expires_in: z.number().int(),
  issued_at: z.iso.datetime(),
});

/** What a caller of the token endpoint is: a user with what their credentials allow, or nobody. */
type Caller = BasicIdentity | undefined;

export function registryTokenRoutes(ctx: ApiContext, issuer: RegistryTokenIssuer) {
  const { store, keys, auth } = ctx;
  const logger = ctx.logger.child({ component: 'registry-token' });

  /** The actions `caller` may take on one asked resource. */
  async function allowedActions(caller: Caller, scope: RequestedScope): Promise<ReadonlySet<string>> {
    if (scope.type === 'registry') return caller?.admin && scope.name === 'catalog' ? new Set(['*']) : new Set();
    if (scope.type !== 'repository') return new Set();
    const name = groupOfRepository(scope.name);
    if (!name) return new Set();
    const [group, membership] = await Promise.all([
      store.get(keys.imageGroup(name), imageGroupSchema),
      caller ? store.get(keys.imageGroupMember(name, caller.user), imageGroupMemberSchema) : undefined,
    ]);
    if (!group) return new Set();
    if (caller?.admin) return new Set(['*']);
    const actions = new Set<string>();
    const role = membership?.value.role;
    if (group.value.public || role) actions.add('pull');
    // A read-only token pulls and nothing more, whatever the role.
    if (role && caller && scopeCovers(caller.scopes, 'write')) {
      if (roleAtLeast(role, 'Developer')) actions.add('push');
      if (roleAtLeast(role, 'Master')) actions.add('delete');
    }
    return actions;
  }

  return [
    defineRoute({
      method: 'get',
      path: '/registry/token',
      operationId: 'getRegistryToken',
      summary:
        "The registry's token server (distribution token spec): Basic credentials (password or access token) or none; the token grants what was asked that the caller's role allows",
      tags: ['images'],
      access: { kind: 'public' },
      query: registryTokenQuery,
      responses: { 200: registryTokenResponse },
      errors: [400, 401, 429],
      handler: async ({ req, res, query, principal }) => {
        let caller: Caller;
        if (principal) {
          caller = { user: principal.user, admin: principal.admin, scopes: principal.scopes };
        } else {
          const header = req.headers.authorization;
          const basic = parseBasic(header);
          if (header && !basic) throw new UnauthorizedError('the Basic credentials are malformed');
          if (basic) {
            try {
              caller = await auth.checkBasic(basic.user, basic.password, req.ip ?? 'unknown');
            } catch (err) {
              if (err instanceof UnauthorizedError) res.setHeader('WWW-Authenticate', 'Basic realm="Berth registry"');
              throw err;
            }
          }
        }
        if (query.service !== undefined && query.service !== issuer.service) {
          throw new InputError(`this token server serves "${issuer.service}"`, [
            { path: 'query:service', message: `expected "${issuer.service}"` },
          ]);
        }
        if (query.account !== undefined && caller && query.account !== caller.user) {
          throw new InputError('account is not the signed-in user', [
            { path: 'query:account', message: `expected "${caller.user}"` },
          ]);
        }
        const asked = query.scope === undefined ? [] : Array.isArray(query.scope) ? query.scope : [query.scope];
        const { scopes, bad } = parseScopes(asked);
        if (bad.length > 0) {
          throw new InputError(
            'a scope is type:name:actions, like repository:team/shop:pull,push',
            bad.map((b) => ({ path: 'query:scope', message: `not a scope: ${b.slice(0, 200)}` })),
          );
        }
        const access = await grant(scopes, (s) => allowedActions(caller, s));
        const issued = await issuer.issue(caller?.user ?? '', access);
        logger.debug({ user: caller?.user ?? '(anonymous)', asked: scopes, granted: access }, 'registry token issued');
        return {
          status: 200,
          body: {
            token: issued.token,
            access_token: issued.token,
            expires_in: issued.expiresIn,
            issued_at: issued.issuedAt,
          },
          headers: { 'Cache-Control': 'no-store' },
        };
      },
    }),
  ];
}

/** `Authorization: Basic base64(user:password)` → its parts; undefined for anything else. */
export function parseBasic(header: string | undefined): { user: string; password: string } | undefined {
  const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header ?? '');
  if (!m?.[1]) return undefined;
  const text = Buffer.from(m[1], 'base64').toString('utf8');
  const colon = text.indexOf(':');
  if (colon <= 0) return undefined;
  return { user: text.slice(0, colon), password: text.slice(colon + 1) };
}
