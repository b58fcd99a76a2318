/**
 * An app's domains: bound to one LB group each, written where that group's lb-agents read them
 * (`/slb/{group}/domains/{domain}`), with an installation-wide claim so a domain belongs to one
 * app. Owner and Master bind, change and remove domains; raw nginx directives only admins set;
 * every member reads them and the nginx config they render to.
 */
import { ConflictError, ForbiddenError, InputError, NotFoundError } from '@berth/shared/errors';
import { type App, type Domain, type DomainClaim, domainSchema, type LbGroup } from '@berth/shared/model';
import { renderDomainConfig } from '@berth/shared/nginx';
import type { Op, Stored } from '@berth/shared/store';
import { z } from 'zod';
import type { Principal } from '../auth/principal.ts';
import { etag } from '../http/conditional.ts';
import { page } from '../http/paging.ts';
import { defineRoute } from '../http/routes.ts';
import { loadApp } from './app-access.ts';
import { AppLb } from './app-lb.ts';
import { type ApiContext, now } from './context.ts';
import {
  appParams,
  createDomainBody,
  domainParams,
  domainResponse,
  listOf,
  listQuery,
  patchDomainBody,
} from './schemas.ts';

/** Only platform admins write raw nginx directives (a typo there must fail `nginx -t`, not reach users). */
function requireAdminForRaw(p: Principal, sent: boolean): void {
  if (sent && !p.admin) {
    throw new ForbiddenError('only platform admins set raw nginx directives (options.raw)', {
      extensions: { errors: [{ path: '$.options.raw', message: 'admins only' }] },
    });
  }
}

function withLb(domain: Domain, group: LbGroup | undefined) {
  return { ...domain, lb: { vips: group?.vips ?? [], cname: group?.cname ?? null } };
}

/** The app port a domain routes to: named, or the app's first. */
function portOf(app: App, port: string | undefined): string {
  const name = port ?? app.ports[0]?.name ?? 'http';
  if (!app.ports.some((p) => p.name === name)) {
    throw new InputError(`app "${app.name}" has no port named "${name}"`, [
      { path: '$.port', message: `expected one of the app's ports: ${app.ports.map((p) => p.name).join(', ')}` },
    ]);
  }
  return name;
}

export function domainRoutes(ctx: ApiContext) {
  const { store, keys, mutations } = ctx;
  const lb = new AppLb(ctx);

  async function requireGroupForBody(name: string): Promise<Stored<LbGroup>> {
    const group = await lb.group(name);
    if (!group) throw new InputError(`no LB group "${name}"`, [{ path: '$.group', message: 'no such LB group' }]);
    return group;
  }

  /** The app's domain (its claim and its record), or 404. */
  async function requireDomain(app: string, domain: string) {
    const state = await lb.read(app);
    const claim = state.claims.find((c) => c.value.domain === domain);
    const stored = claim ? await store.get(keys.slbDomain(claim.value.group, domain), domainSchema) : undefined;
    if (!claim || !stored) throw new NotFoundError(`app "${app}" has no domain ${domain}`);
    return { state, claim, stored };
  }

  /**
   * A domain enters a group: the group record is rewritten as it is, so a group delete that read
   * no domains fails its compare instead of leaving this one without a group.
   */
  function enterGroupOp(group: Stored<LbGroup>): Op {
    return { op: 'update', key: group.key, value: group.value, modRevision: group.modRevision };
  }

  return [
    defineRoute({
      method: 'get',
      path: '/apps/:app/domains',
      operationId: 'listDomains',
      summary: "An app's domains, by name, each with its LB group's addresses",
      tags: ['domains'],
      access: { kind: 'user', scope: 'read' },
      params: appParams,
      query: listQuery,
      responses: { 200: listOf(domainResponse) },
      handler: async ({ params, query, principal }) => {
        await loadApp(ctx, principal, params.app, 'read');
        const state = await lb.read(params.app);
        const claims = page(
          state.claims.map((c) => c.value),
          (c) => c.domain,
          query.limit,
          query.cursor,
        );
        const groups = new Map<string, LbGroup | undefined>();
        for (const g of AppLb.groups(claims.items)) groups.set(g, (await lb.group(g))?.value);
        const items = (
          await Promise.all(claims.items.map((c) => store.get(keys.slbDomain(c.group, c.domain), domainSchema)))
        )
          .filter((d): d is Stored<Domain> => d !== undefined)
          .map((d) => withLb(d.value, groups.get(d.value.group)));
        return { status: 200, body: { items, next: claims.next } };
      },
    }),

    defineRoute({
      method: 'post',
      path: '/apps/:app/domains',
      operationId: 'createDomain',
      summary: 'Bind a domain to the app in an LB group (Owner, Master; options.raw: admins)',
      tags: ['domains'],
      access: { kind: 'user', scope: 'write' },
      params: appParams,
      body: createDomainBody,
      responses: { 201: domainResponse },
      errors: [403, 409],
      etag: true,
      handler: async ({ params, body, principal: p, idempotency }) => {
        requireAdminForRaw(p, body.options?.raw !== undefined);
        return mutations.answer(
          p,
          async () => {
            const { app } = await loadApp(ctx, p, params.app, 'deploy');
            const group = await requireGroupForBody(body.group);
            const port = portOf(app.value, body.port);
            const state = await lb.read(params.app);
            const taken = await store.get(keys.domainClaim(body.domain), z.object({ app: z.string() }));
            if (taken) {
              throw new ConflictError(
                taken.value.app === params.app
                  ? `${body.domain} is already bound to app "${params.app}"`
                  : `${body.domain} is bound to another app`,
              );
            }
            const at = now();
            const domain: Domain = {
              domain: body.domain,
              app: params.app,
              group: body.group,
              port,
              paths: body.paths ?? ['/'],
              options: {
                headers: body.options?.headers ?? {},
                ...(body.options?.clientMaxBodySize !== undefined
                  ? { clientMaxBodySize: body.options.clientMaxBodySize }
                  : {}),
                ...(body.options?.readTimeout !== undefined ? { readTimeout: body.options.readTimeout } : {}),
                ...(body.options?.raw !== undefined ? { raw: body.options.raw } : {}),
              },
              createdAt: at,
              createdBy: p.user,
              updatedAt: at,
            };
            const claim: DomainClaim = { domain: domain.domain, app: params.app, group: body.group };
            const before = AppLb.groups(state.claims.map((c) => c.value));
            const after = new Set([...before, body.group]);
            const claimKey = keys.domainClaim(domain.domain);
            return {
              ops: [
                { op: 'expect', key: app.key, modRevision: app.modRevision },
                enterGroupOp(group),
                { op: 'create', key: claimKey, value: claim },
                { op: 'create', key: keys.slbDomain(domain.group, domain.domain), value: domain },
                lb.guardOp(state),
                ...lb.trafficCopyOps(params.app, state.traffic?.value, before, after, false),
              ],
              events: [
                {
                  kind: 'domain',
                  resourceId: params.app,
                  incarnation: app.value.incarnation,
                  resourceName: domain.domain,
                  action: 'created',
                  after: domain,
                },
              ],
              onFailed: (failed) =>
                failed.includes(claimKey) ? new ConflictError(`${domain.domain} was bound meanwhile`) : undefined,
              result: (revision) => ({
                status: 201,
                body: withLb(domain, group.value),
                headers: {
                  ETag: etag(revision),
                  Location: `/api/v1/apps/${params.app}/domains/${domain.domain}`,
                },
              }),
            };
          },
          { serializeOn: `app:${params.app}`, idempotency },
        );
      },
    }),

    defineRoute({
      method: 'get',
      path: '/apps/:app/domains/:domain',
      operationId: 'getDomain',
      summary: 'One domain of the app, with its LB group addresses',
      tags: ['domains'],
      access: { kind: 'user', scope: 'read' },
      params: domainParams,
      responses: { 200: domainResponse },
      etag: true,
      handler: async ({ params, principal }) => {
        await loadApp(ctx, principal, params.app, 'read');
        const { stored } = await requireDomain(params.app, params.domain);
        const group = await lb.group(stored.value.group);
        return { status: 200, body: withLb(stored.value, group?.value), headers: { ETag: etag(stored.modRevision) } };
      },
    }),

    defineRoute({
      method: 'patch',
      path: '/apps/:app/domains/:domain',
      operationId: 'updateDomain',
      summary:
        "Change a domain's group, port, paths or options (Owner, Master; options.raw: admins). In options, null removes a field.",
      tags: ['domains'],
      access: { kind: 'user', scope: 'write' },
      params: domainParams,
      body: patchDomainBody,
      responses: { 200: domainResponse },
      errors: [403, 409, 412],
      etag: true,
      handler: async ({ req, params, body, principal: p }) => {
        requireAdminForRaw(p, body.options !== undefined && 'raw' in body.options);
        return mutations.commit(
          p,
          async () => {
            const { app } = await loadApp(ctx, p, params.app, 'deploy');
            const { state, claim, stored } = await requireDomain(params.app, params.domain);
            const current = stored.value;
            const groupName = body.group ?? current.group;
            const group = await requireGroupForBody(groupName);
            const options = { ...current.options };
            const o = body.options ?? {};
            if (o.headers !== undefined) options.headers = o.headers;
            if (o.clientMaxBodySize !== undefined) {
              if (o.clientMaxBodySize === null) delete options.clientMaxBodySize;
              else options.clientMaxBodySize = o.clientMaxBodySize;
            }
            if (o.readTimeout !== undefined) {
              if (o.readTimeout === null) delete options.readTimeout;
              else options.readTimeout = o.readTimeout;
            }
            if (o.raw !== undefined) {
              if (o.raw === null) delete options.raw;
              else options.raw = o.raw;
            }
            const next: Domain = {
              ...current,
              group: groupName,
              port: body.port !== undefined ? portOf(app.value, body.port) : current.port,
              paths: body.paths ?? current.paths,
              options,
              updatedAt: now(),
            };
            const ops: Op[] = [{ op: 'expect', key: app.key, modRevision: app.modRevision }, lb.guardOp(state)];
            if (groupName === current.group) {
              ops.push({ op: 'update', key: stored.key, value: next, modRevision: stored.modRevision });
            } else {
              // Moving to another group: out of the old group's tree, into the new one's, in one step.
              const others = state.claims.filter((c) => c.value.domain !== params.domain).map((c) => c.value);
              const before = AppLb.groups(state.claims.map((c) => c.value));
              const after = AppLb.groups([...others, { ...claim.value, group: groupName }]);
              ops.push(
                { op: 'delete', key: stored.key, modRevision: stored.modRevision },
                { op: 'create', key: keys.slbDomain(groupName, params.domain), value: next },
                {
                  op: 'update',
                  key: claim.key,
                  value: { ...claim.value, group: groupName },
                  modRevision: claim.modRevision,
                },
                enterGroupOp(group),
                ...lb.trafficCopyOps(params.app, state.traffic?.value, before, after, false),
              );
            }
            return {
              ops,
              pinned: stored,
              events: [
                {
                  kind: 'domain',
                  resourceId: params.app,
                  incarnation: app.value.incarnation,
                  resourceName: params.domain,
                  action: 'updated',
                  before: current,
                  after: next,
                },
              ],
              result: (revision) => ({
                status: 200,
                body: withLb(next, group.value),
                headers: { ETag: etag(revision) },
              }),
            };
          },
          { req, serializeOn: `app:${params.app}` },
        );
      },
    }),

    defineRoute({
      method: 'delete',
      path: '/apps/:app/domains/:domain',
      operationId: 'deleteDomain',
      summary: 'Remove a domain from the app and its LB group (Owner, Master)',
      tags: ['domains'],
      access: { kind: 'user', scope: 'write' },
      params: domainParams,
      responses: { 204: undefined },
      errors: [403, 412],
      etag: true,
      handler: async ({ req, params, principal: p }) =>
        mutations.commit(
          p,
          async () => {
            const { app } = await loadApp(ctx, p, params.app, 'deploy');
            const { state, claim, stored } = await requireDomain(params.app, params.domain);
            const before = AppLb.groups(state.claims.map((c) => c.value));
            const after = AppLb.groups(state.claims.filter((c) => c.key !== claim.key).map((c) => c.value));
            return {
              ops: [
                { op: 'delete', key: claim.key, modRevision: claim.modRevision },
                { op: 'delete', key: stored.key, modRevision: stored.modRevision },
                lb.guardOp(state),
                ...lb.trafficCopyOps(params.app, state.traffic?.value, before, after, false),
              ],
              pinned: stored,
              events: [
                {
                  kind: 'domain',
                  resourceId: params.app,
                  incarnation: app.value.incarnation,
                  resourceName: params.domain,
                  action: 'deleted',
                  before: stored.value,
                },
              ],
              result: () => ({ status: 204 }),
            };
          },
          { req, serializeOn: `app:${params.app}` },
        ),
    }),

    defineRoute({
      method: 'get',
      path: '/apps/:app/domains/:domain/config',
      operationId: 'getDomainConfig',
      summary: "The nginx config the domain renders to: its app port's upstream, then its server block",
      tags: ['domains'],
      access: { kind: 'user', scope: 'read' },
      params: domainParams,
      contentType: 'text/plain',
      responses: { 200: z.string() },
      etag: true,
      handler: async ({ params, principal }) => {
        await loadApp(ctx, principal, params.app, 'read');
        const { stored } = await requireDomain(params.app, params.domain);
        return { status: 200, body: renderDomainConfig(stored.value), headers: { ETag: etag(stored.modRevision) } };
      },
    }),
  ];
}
