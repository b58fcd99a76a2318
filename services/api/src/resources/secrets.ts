/**
 * App secrets (docs/secrets.md): write-only values an app's pods get as environment variables.
 *
 * - `PUT /apps/{app}/secrets/{name}` seals the value with the keyring of `BERTH_SECRETS_KEYS`
 *   (AES-256-GCM, the app and name as additional data) and stores an `AppSecretRecord`; the
 *   scheduler opens it to write the app namespace's Kubernetes Secret. Setting and deleting need
 *   Master (`manageSecrets`): a changed secret rolls the app's pods, as a deploy does.
 * - No route ever answers a value: members (Guest and up) see names, fingerprints and who set
 *   each one when. Events (`app-secret`, set / deleted) carry the same, never the value, and the
 *   value is never logged nor registered with the log scrubber (nothing holds it after the request).
 * - Without a keyring, setting answers 503; reading names and deleting need no key and still work.
 */
import { InputError, NotFoundError, PreconditionFailedError, UnavailableError } from '@berth/shared/errors';
import { dnsLabelSchema } from '@berth/shared/model';
import {
  type AppSecretRecord,
  appSecretRecordSchema,
  type SecretsKeyring,
  secretNameSchema,
  secretValueSchema,
} from '@berth/shared/secrets';
import type { Stored } from '@berth/shared/store';
import { z } from 'zod';
import { etag, ifMatchRevision } from '../http/conditional.ts';
import { page } from '../http/paging.ts';
import { defineRoute } from '../http/routes.ts';
import { loadApp } from './app-access.ts';
import { type ApiContext, now } from './context.ts';
import { appParams, listOf, listQuery } from './schemas.ts';

/** At most this many secrets per app, and this many bytes of values in all (one Kubernetes Secret holds at most 1 MiB). */
export const MAX_SECRETS_PER_APP = 100;
export const MAX_SECRET_BYTES_PER_APP = 512 * 1024;

export const secretParams = z.object({ app: dnsLabelSchema, name: secretNameSchema }).strict();
export const putSecretBody = z.object({ value: secretValueSchema }).strict();
/** What every answer shows of a secret: never its value, nor its sealed form. */
export const appSecretResponse = appSecretRecordSchema
  .omit({ sealed: true })
  .describe(
    'A secret: its name, the fingerprint of its value (an HMAC: equal values, equal fingerprints), who set it when',
  );

type SecretView = z.infer<typeof appSecretResponse>;

function shown(record: AppSecretRecord): SecretView {
  return {
    name: record.name,
    fingerprint: record.fingerprint,
    updatedAt: record.updatedAt,
    updatedBy: record.updatedBy,
  };
}

/** The byte length of a sealed value's plaintext: GCM's ciphertext is as long as the value. */
function sealedBytes(sealed: string): number {
  return Buffer.byteLength(sealed.split('.')[3] ?? '', 'base64url');
}

export function secretRoutes(ctx: ApiContext, keyring: SecretsKeyring | undefined) {
  const { store, keys, mutations } = ctx;

  const list = (app: string) => store.list(keys.appSecrets(app), appSecretRecordSchema);
  const notFound = (app: string, name: string) => new NotFoundError(`app "${app}" has no secret ${name}`);

  return [
    defineRoute({
      method: 'get',
      path: '/apps/:app/secrets',
      operationId: 'listSecrets',
      summary: "An app's secrets by name: fingerprints, never values (members)",
      tags: ['secrets'],
      access: { kind: 'user', scope: 'read' },
      params: appParams,
      query: listQuery,
      responses: { 200: listOf(appSecretResponse) },
      handler: async ({ params, query, principal }) => {
        await loadApp(ctx, principal, params.app, 'read');
        const all = (await list(params.app)).map((s) => shown(s.value)).sort((a, b) => (a.name < b.name ? -1 : 1));
        return { status: 200, body: page(all, (s) => s.name, query.limit, query.cursor) };
      },
    }),

    defineRoute({
      method: 'get',
      path: '/apps/:app/secrets/:name',
      operationId: 'getSecret',
      summary: 'One secret: its fingerprint, never its value (members)',
      tags: ['secrets'],
      access: { kind: 'user', scope: 'read' },
      params: secretParams,
      responses: { 200: appSecretResponse },
      etag: true,
      handler: async ({ params, principal }) => {
        await loadApp(ctx, principal, params.app, 'read');
        const stored = await store.get(keys.appSecret(params.app, params.name), appSecretRecordSchema);
        if (!stored) throw notFound(params.app, params.name);
        return { status: 200, body: shown(stored.value), headers: { ETag: etag(stored.modRevision) } };
      },
    }),

    defineRoute({
      method: 'put',
      path: '/apps/:app/secrets/:name',
      operationId: 'putSecret',
      summary:
        "Set a secret: the app's pods get it as the environment variable {name}; the value is never shown again (Owner, Master)",
      tags: ['secrets'],
      access: { kind: 'user', scope: 'write' },
      params: secretParams,
      body: putSecretBody,
      responses: { 200: appSecretResponse, 201: appSecretResponse },
      errors: [403, 409, 412],
      etag: true,
      handler: async ({ req, params, body, principal: p }) => {
        const wanted = ifMatchRevision(req);
        return mutations.commit(
          p,
          async () => {
            const { app } = await loadApp(ctx, p, params.app, 'manageSecrets');
            if (!keyring) {
              throw new UnavailableError('secrets are not configured: the API has no BERTH_SECRETS_KEYS');
            }
            const all = await list(params.app);
            const current = all.find((s) => s.value.name === params.name);
            if (!current && wanted !== undefined)
              throw new PreconditionFailedError(`there is no secret ${params.name} yet`);
            const others = all.filter((s) => s !== current);
            if (!current && others.length >= MAX_SECRETS_PER_APP) {
              throw new InputError(`app "${params.app}" has ${others.length} secrets, the most an app can have`, [
                { path: 'path:name', message: `at most ${MAX_SECRETS_PER_APP} secrets per app` },
              ]);
            }
            const bytes = others.reduce((n, s) => n + sealedBytes(s.value.sealed), Buffer.byteLength(body.value));
            if (bytes > MAX_SECRET_BYTES_PER_APP) {
              throw new InputError(`the secrets of app "${params.app}" would hold ${bytes} bytes`, [
                {
                  path: '$.value',
                  message: `all of an app's secret values together hold at most ${MAX_SECRET_BYTES_PER_APP} bytes`,
                },
              ]);
            }
            const record: AppSecretRecord = {
              name: params.name,
              sealed: keyring.seal(params.app, params.name, body.value),
              fingerprint: keyring.fingerprint(params.app, params.name, body.value),
              updatedAt: now(),
              updatedBy: p.user,
            };
            return {
              ops: [
                current
                  ? { op: 'update', key: current.key, value: record, modRevision: current.modRevision }
                  : { op: 'create', key: keys.appSecret(params.app, params.name), value: record },
              ],
              pinned: current,
              events: [
                {
                  kind: 'app-secret',
                  resourceId: params.app,
                  incarnation: app.value.incarnation,
                  resourceName: params.name,
                  action: 'set',
                  ...(current ? { before: shown(current.value) } : {}),
                  after: shown(record),
                },
              ],
              result: (revision) => ({
                status: current ? 200 : 201,
                body: shown(record),
                headers: {
                  ETag: etag(revision),
                  ...(current ? {} : { Location: `/api/v1/apps/${params.app}/secrets/${params.name}` }),
                },
              }),
            };
          },
          { req, serializeOn: `app:${params.app}` },
        );
      },
    }),

    defineRoute({
      method: 'delete',
      path: '/apps/:app/secrets/:name',
      operationId: 'deleteSecret',
      summary: "Delete a secret: the app's pods stop getting it (Owner, Master)",
      tags: ['secrets'],
      access: { kind: 'user', scope: 'write' },
      params: secretParams,
      responses: { 204: undefined },
      errors: [403, 412],
      etag: true,
      handler: async ({ req, params, principal: p }) =>
        mutations.commit(
          p,
          async () => {
            const { app } = await loadApp(ctx, p, params.app, 'manageSecrets');
            const current: Stored<AppSecretRecord> | undefined = await store.get(
              keys.appSecret(params.app, params.name),
              appSecretRecordSchema,
            );
            if (!current) throw notFound(params.app, params.name);
            return {
              ops: [{ op: 'delete', key: current.key, modRevision: current.modRevision }],
              pinned: current,
              events: [
                {
                  kind: 'app-secret',
                  resourceId: params.app,
                  incarnation: app.value.incarnation,
                  resourceName: params.name,
                  action: 'deleted',
                  before: shown(current.value),
                },
              ],
              result: () => ({ status: 204 }),
            };
          },
          { req, serializeOn: `app:${params.app}` },
        ),
    }),
  ];
}
