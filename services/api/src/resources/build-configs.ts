/**
 * Build configs: how an app's image is built (git repository and branch, Dockerfile, an optional
 * compile step, the cache, the tag template, the target repository in the region's registry,
 * autoDeploy, webhook triggers). Members read them; Owner and Master write them. The target must
 * be a repository of an image group the app's owner may push to. Creating one answers with its
 * webhook URL and secret; the secret is shown once (only its sha256 is kept) and can be rotated.
 */
import { randomBytes } from 'node:crypto';
import { type BuildConfig, buildConfigSchema, gitUrlSchema, imageTargetSchema } from '@berth/shared/builds';
import { ConflictError, InputError, NotFoundError } from '@berth/shared/errors';
import { type App, dnsLabelSchema, imageGroupMemberSchema, imageGroupSchema, roleAtLeast } from '@berth/shared/model';
import type { Stored } from '@berth/shared/store';
import type { Request } from 'express';
import { z } from 'zod';
import { userRecordSchema } from '../auth/records.ts';
import type { WebhookSecrets } from '../builds/webhook-secrets.ts';
import { etag } from '../http/conditional.ts';
import type { ChangeEvent } from '../http/mutation.ts';
import { page } from '../http/paging.ts';
import { defineRoute } from '../http/routes.ts';
import { groupOfRepository } from '../registry/scope.ts';
import { loadApp } from './app-access.ts';
import { type ApiContext, now } from './context.ts';
import { appParams, listOf, listQuery } from './schemas.ts';

// ---- Request and response bodies --------------------------------------------------------------

export const WEBHOOK_PROVIDERS = ['github', 'gitlab', 'gitea'] as const;
export type WebhookProvider = (typeof WEBHOOK_PROVIDERS)[number];

const refPattern = z.string().min(1).max(255);

export const createBuildConfigBody = z
  .object({
    name: dnsLabelSchema.describe("The config's name within its app"),
    git: z
      .object({
        url: gitUrlSchema.describe('https, ssh, git or file URL, user@host:path, or an absolute path'),
        branch: z.string().min(1).max(255).optional().describe('Default main'),
        credentialsRef: z.string().min(1).max(128).optional(),
      })
      .strict(),
    dockerfile: z.string().min(1).max(1024).optional(),
    context: z.string().min(1).max(1024).optional(),
    compile: z
      .object({ image: z.string().min(1).max(512), script: z.string().min(1).max(65_536) })
      .strict()
      .optional(),
    cache: z.boolean().optional(),
    tag: z
      .string()
      .min(1)
      .max(128)
      .optional()
      .describe('Image tag template: {branch}, {sha7}, {sha}, {tag}, {run}; default {branch}-{sha7}'),
    target: imageTargetSchema.describe('group/repo in the region registry; the app owner must be able to push to it'),
    autoDeploy: z.boolean().optional().describe("A successful run creates the app's next version with the new tag"),
    triggers: z
      .object({ branches: z.array(refPattern).max(32).optional(), tags: z.array(refPattern).max(32).optional() })
      .strict()
      .optional()
      .describe(
        'Globs (`release/*`, `v*`) of the branches and tags whose pushes start a run; default the config branch',
      ),
    provider: z.enum(WEBHOOK_PROVIDERS).optional().describe('The git host that calls the webhook (default github)'),
  })
  .strict();
export const patchBuildConfigBody = createBuildConfigBody.omit({ name: true }).partial();

export const buildConfigParams = z.object({ app: dnsLabelSchema, config: dnsLabelSchema }).strict();

export const buildConfigResponse = buildConfigSchema
  .omit({ webhookSecretHash: true, webhookSecretNonce: true })
  .extend({
    webhook: z.object({ url: z.string() }),
  });
export const webhookResponse = z.object({ url: z.string(), secret: z.string() });
export const createdBuildConfigResponse = buildConfigResponse.extend({ webhook: webhookResponse });

/** The index `build-configs/{id}` → the config's app and name (webhooks, dispatch). */
export const buildConfigIndexSchema = z.object({ app: dnsLabelSchema, config: dnsLabelSchema });

// ---- Helpers ----------------------------------------------------------------------------------

const ID_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';

/** 16 characters of [a-z0-9]: a config's installation-wide id. */
export function newConfigId(): string {
  return [...randomBytes(16)].map((b) => ID_ALPHABET[b % 36]).join('');
}

export function webhookUrl(req: Request, config: Pick<BuildConfig, 'id' | 'provider'>): string {
  return `${req.protocol}://${req.get('host') ?? 'localhost'}/api/v1/hooks/${config.provider ?? 'github'}/${config.id}`;
}

export function publicConfig(req: Request, config: BuildConfig): z.infer<typeof buildConfigResponse> {
  return { ...shown(config), webhook: { url: webhookUrl(req, config) } };
}

/** A config as answers and events show it: never the secret's hash or nonce. */
function shown(config: BuildConfig): Omit<BuildConfig, 'webhookSecretHash' | 'webhookSecretNonce'> {
  const { webhookSecretHash: _hash, webhookSecretNonce: _nonce, ...rest } = config;
  return rest;
}

export function configEvent(app: App, config: string, action: string, extra: Partial<ChangeEvent> = {}): ChangeEvent {
  return {
    kind: 'build',
    resourceId: app.name,
    ...(app.incarnation ? { incarnation: app.incarnation } : {}),
    resourceName: `config:${config}`,
    action,
    ...extra,
  };
}

export async function loadBuildConfig(ctx: ApiContext, app: string, name: string): Promise<Stored<BuildConfig>> {
  const config = await ctx.store.get(ctx.keys.buildConfig(app, name), buildConfigSchema);
  if (!config) throw new NotFoundError(`app "${app}" has no build config "${name}"`);
  return config;
}

// ---- Routes -----------------------------------------------------------------------------------

export function buildConfigRoutes(ctx: ApiContext, secrets: WebhookSecrets) {
  const { store, keys, mutations } = ctx;

  /** The app's owner may push to the target's image group (its role there, or an admin). */
  async function checkTarget(owner: string, target: string): Promise<void> {
    const group = groupOfRepository(target) ?? '';
    const refuse = (message: string) => new InputError(message, [{ path: '$.target', message }]);
    const [groupRecord, membership, user] = await Promise.all([
      store.get(keys.imageGroup(group), imageGroupSchema),
      store.get(keys.imageGroupMember(group, owner), imageGroupMemberSchema),
      store.get(keys.user(owner), userRecordSchema),
    ]);
    if (!groupRecord) throw refuse(`no image group "${group}"`);
    if (user?.value.admin) return;
    const role = membership?.value.role;
    if (!role || !roleAtLeast(role, 'Developer')) {
      throw refuse(`the app's owner "${owner}" may not push to image group "${group}" (Developer or higher needed)`);
    }
  }

  return [
    defineRoute({
      method: 'get',
      path: '/apps/:app/build-configs',
      operationId: 'listBuildConfigs',
      summary: "An app's build configs, by name (members)",
      tags: ['builds'],
      access: { kind: 'user', scope: 'read' },
      params: appParams,
      query: listQuery,
      responses: { 200: listOf(buildConfigResponse) },
      handler: async ({ req, params, query, principal }) => {
        await loadApp(ctx, principal, params.app, 'read');
        const all = (
          await store.list(keys.buildConfigs(params.app), buildConfigSchema, { directChildrenOnly: true })
        ).map((c) => publicConfig(req, c.value));
        return { status: 200, body: page(all, (c) => c.name, query.limit, query.cursor) };
      },
    }),

    defineRoute({
      method: 'post',
      path: '/apps/:app/build-configs',
      operationId: 'createBuildConfig',
      summary: 'Add a build config (Owner, Master); the answer holds the webhook secret, shown only once',
      tags: ['builds'],
      access: { kind: 'user', scope: 'write' },
      params: appParams,
      body: createBuildConfigBody,
      responses: { 201: createdBuildConfigResponse },
      errors: [409],
      etag: true,
      // The answer holds a secret that is never stored: a repeat must not replay it.
      idempotent: false,
      handler: async ({ req, params, body, principal: p }) => {
        const id = newConfigId();
        const { secret, hash, nonce } = await secrets.create(id);
        return mutations.commit(
          p,
          async () => {
            const { app } = await loadApp(ctx, p, params.app, 'deploy');
            await checkTarget(app.value.owner, body.target);
            const at = now();
            const config: BuildConfig = buildConfigSchema.parse({
              ...body,
              app: params.app,
              id,
              webhookSecretNonce: nonce,
              git: { ...body.git, branch: body.git.branch ?? 'main' },
              webhookSecretHash: hash,
              lastRun: 0,
              createdAt: at,
              createdBy: p.user,
              updatedAt: at,
            });
            return {
              ops: [
                { op: 'create', key: keys.buildConfig(params.app, config.name), value: config },
                { op: 'create', key: keys.buildConfigId(config.id), value: { app: params.app, config: config.name } },
                { op: 'expect', key: app.key, modRevision: app.modRevision },
              ],
              events: [configEvent(app.value, config.name, 'config-created', { after: shown(config) })],
              onFailed: (failed) =>
                failed.includes(keys.buildConfig(params.app, config.name))
                  ? new ConflictError(`app "${params.app}" already has a build config "${config.name}"`)
                  : undefined,
              result: (revision) => ({
                status: 201,
                body: { ...publicConfig(req, config), webhook: { url: webhookUrl(req, config), secret } },
                headers: {
                  ETag: etag(revision),
                  Location: `/api/v1/apps/${params.app}/build-configs/${config.name}`,
                },
              }),
            };
          },
          { serializeOn: `app:${params.app}`, what: 'the build config' },
        );
      },
    }),

    defineRoute({
      method: 'get',
      path: '/apps/:app/build-configs/:config',
      operationId: 'getBuildConfig',
      summary: 'One build config (members)',
      tags: ['builds'],
      access: { kind: 'user', scope: 'read' },
      params: buildConfigParams,
      responses: { 200: buildConfigResponse },
      etag: true,
      handler: async ({ req, params, principal }) => {
        await loadApp(ctx, principal, params.app, 'read');
        const config = await loadBuildConfig(ctx, params.app, params.config);
        return { status: 200, body: publicConfig(req, config.value), headers: { ETag: etag(config.modRevision) } };
      },
    }),

    defineRoute({
      method: 'patch',
      path: '/apps/:app/build-configs/:config',
      operationId: 'updateBuildConfig',
      summary: 'Change a build config (Owner, Master)',
      tags: ['builds'],
      access: { kind: 'user', scope: 'write' },
      params: buildConfigParams,
      body: patchBuildConfigBody,
      responses: { 200: buildConfigResponse },
      errors: [412],
      etag: true,
      handler: async ({ req, params, body, principal: p }) =>
        mutations.commit(
          p,
          async () => {
            const { app } = await loadApp(ctx, p, params.app, 'deploy');
            const config = await loadBuildConfig(ctx, params.app, params.config);
            if (body.target !== undefined) await checkTarget(app.value.owner, body.target);
            const next: BuildConfig = buildConfigSchema.parse({
              ...config.value,
              ...body,
              git: body.git ? { ...body.git, branch: body.git.branch ?? config.value.git.branch } : config.value.git,
              updatedAt: now(),
            });
            return {
              ops: [{ op: 'update', key: config.key, value: next, modRevision: config.modRevision }],
              pinned: config,
              events: [
                configEvent(app.value, params.config, 'config-updated', {
                  before: shown(config.value),
                  after: shown(next),
                }),
              ],
              result: (revision) => ({ status: 200, body: publicConfig(req, next), headers: { ETag: etag(revision) } }),
            };
          },
          { req, serializeOn: `app:${params.app}`, what: 'the build config' },
        ),
    }),

    defineRoute({
      method: 'delete',
      path: '/apps/:app/build-configs/:config',
      operationId: 'deleteBuildConfig',
      summary: 'Remove a build config (Owner, Master); its runs stay readable',
      tags: ['builds'],
      access: { kind: 'user', scope: 'write' },
      params: buildConfigParams,
      responses: { 204: undefined },
      errors: [412],
      etag: true,
      handler: async ({ req, params, principal: p }) =>
        mutations.commit(
          p,
          async () => {
            const { app } = await loadApp(ctx, p, params.app, 'deploy');
            const config = await loadBuildConfig(ctx, params.app, params.config);
            return {
              ops: [
                { op: 'delete', key: config.key, modRevision: config.modRevision },
                { op: 'delete', key: keys.buildConfigId(config.value.id) },
              ],
              pinned: config,
              events: [configEvent(app.value, params.config, 'config-deleted', { before: shown(config.value) })],
              result: () => ({ status: 204 }),
            };
          },
          { req, serializeOn: `app:${params.app}`, what: 'the build config' },
        ),
    }),

    defineRoute({
      method: 'post',
      path: '/apps/:app/build-configs/:config/webhook-secret',
      operationId: 'rotateBuildWebhookSecret',
      summary: "Replace the config's webhook secret (Owner, Master); the new one is shown only in this answer",
      tags: ['builds'],
      access: { kind: 'user', scope: 'write' },
      params: buildConfigParams,
      responses: { 200: z.object({ webhook: webhookResponse }) },
      idempotent: false,
      handler: async ({ req, params, principal: p }) =>
        mutations.commit(
          p,
          async () => {
            const { app } = await loadApp(ctx, p, params.app, 'deploy');
            const config = await loadBuildConfig(ctx, params.app, params.config);
            const { secret, hash, nonce } = await secrets.create(config.value.id);
            const next: BuildConfig = {
              ...config.value,
              webhookSecretHash: hash,
              webhookSecretNonce: nonce,
              updatedAt: now(),
            };
            return {
              ops: [{ op: 'update', key: config.key, value: next, modRevision: config.modRevision }],
              events: [configEvent(app.value, params.config, 'webhook-secret-rotated')],
              result: () => ({ status: 200, body: { webhook: { url: webhookUrl(req, next), secret } } }),
            };
          },
          { serializeOn: `app:${params.app}`, what: 'the build config' },
        ),
    }),
  ];
}
