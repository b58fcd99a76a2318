/**
 * The registry's token server: `GET /registry/token`, as the distribution token spec has it
 * (docs/spec/auth/token.md@v2.8.2; see docs/registry.md). The registry answers an unauthorized
 * request with a Bearer challenge naming this realm, its service and the scope it needs; the
 * client (docker, containerd, a test) asks here with Basic credentials (a password, or a personal
 * access token as the password), or none for anonymous pulls, and gets a JWT whose `access` is
 * what it asked for that its role in each image group allows. Wrong credentials are a 401; asking
 * for more than one may do is not an error: the token just grants less, possibly nothing.
 *
 * Two kinds of robots sign in too, with credentials no store holds (`@berth/shared/registry`):
 * a cell (`cell@{region}/{cell}`) pulls from every image group and pushes nothing; a build's attempt
 * (`build@{runId}.{attempt}`) pushes to its run's repository only, while that attempt is placed
 * on the agent whose key made the password and has not finished.
 */

import { buildConfigSchema, buildRunSchema, FINAL_BUILD_STATES } from '@berth/shared/builds';
import { InputError, UnauthorizedError } from '@berth/shared/errors';
import { cellSchema, imageGroupMemberSchema, imageGroupSchema, roleAtLeast } from '@berth/shared/model';
import {
  cellPullCredential,
  deriveAgentKey,
  deriveCellsKey,
  parseRobotName,
  type RobotCredential,
  robotPasswordMatches,
  runPushCredential,
} from '@berth/shared/registry';
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

/**
 * What a caller of the token endpoint is: a user with what their credentials allow, a robot
 * (`user` is its name, the token's subject), or nobody.
 */
type Caller =
  | (BasicIdentity & { robot?: undefined })
  | { user: string; admin: false; robot: 'cell' }
  | { user: string; admin: false; robot: 'build'; repository: string }
  | undefined;

export function registryTokenRoutes(ctx: ApiContext, issuer: RegistryTokenIssuer, robotKey?: Buffer) {
  const { store, keys, auth } = ctx;
  const logger = ctx.logger.child({ component: 'registry-token' });
  const cellsKey = robotKey && deriveCellsKey(robotKey);

  /** A robot's Basic credentials → the robot; a 401 when they are not right now. */
  async function checkRobot(username: string, password: string): Promise<Caller> {
    const robot = parseRobotName(username);
    const refused = new UnauthorizedError('wrong user name or password');
    if (!robot || !robotKey || !cellsKey) throw refused;
    let expected: RobotCredential | undefined;
    let caller: Caller;
    if (robot.kind === 'cell') {
      const cell =
        robot.region === ctx.region ? await store.get(keys.cell(robot.region, robot.cell), cellSchema) : undefined;
      if (cell) expected = cellPullCredential(cellsKey, robot.region, robot.cell);
      caller = { user: username, admin: false, robot: 'cell' };
    } else {
      const run = await store.get(keys.buildRun(robot.runId), buildRunSchema);
      const live =
        run && run.value.attempt === robot.attempt && !FINAL_BUILD_STATES.includes(run.value.state)
          ? run.value
          : undefined;
      // The repository is known once the run is placed: the image it pins, or its config's target.
      const config =
        live && !live.image ? await store.get(keys.buildConfig(live.app, live.config), buildConfigSchema) : undefined;
      const repository = live?.image?.repository ?? config?.value.target;
      if (live?.placement && repository) {
        expected = runPushCredential(deriveAgentKey(robotKey, live.placement.agentId), robot.runId, robot.attempt);
        caller = { user: username, admin: false, robot: 'build', repository };
      }
    }
    // The same answer for an unknown cell, a finished run and a wrong password.
    if (!expected || !robotPasswordMatches(password, expected)) throw refused;
    return caller;
  }

  /** The actions `caller` may take on one asked resource. */
  async function allowedActions(caller: Caller, scope: RequestedScope): Promise<ReadonlySet<string>> {
    if (scope.type === 'registry') return caller?.admin && scope.name === 'catalog' ? new Set(['*']) : new Set();
    if (scope.type !== 'repository') return new Set();
    const name = groupOfRepository(scope.name);
    if (!name) return new Set();
    const [group, membership] = await Promise.all([
      store.get(keys.imageGroup(name), imageGroupSchema),
      caller && !caller.robot ? store.get(keys.imageGroupMember(name, caller.user), imageGroupMemberSchema) : undefined,
    ]);
    if (!group) return new Set();
    if (caller?.admin) return new Set(['*']);
    // A cell runs any app's image; a build reads public base images and writes its own repository.
    if (caller?.robot === 'cell') return new Set(['pull']);
    if (caller?.robot === 'build') {
      if (scope.name === caller.repository) return new Set(['pull', 'push']);
      return new Set(group.value.public ? ['pull'] : []);
    }
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
              caller = basic.user.includes('@')
                ? await checkRobot(basic.user, basic.password)
                : await auth.checkBasic(basic.user, basic.password, req.ip ?? 'unknown');
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
