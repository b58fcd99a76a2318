/**
 * `POST /hooks/{provider}/{configId}`: a git host's push webhook. Authenticated by the config's
 * secret (../builds/webhooks.ts) over the raw body; a push to a branch or tag the config triggers
 * on starts a run pinned to the pushed commit (a tag push tags the image with the git tag);
 * deletes, other refs and other events answer 202 with the reason; a redelivery (same delivery
 * id, kept for a day under an etcd lease) starts nothing.
 */
import { buildConfigSchema, buildRunSchema } from '@berth/shared/builds';
import { NotFoundError, UnauthorizedError } from '@berth/shared/errors';
import type { Etcd3 } from '@berth/shared/etcd';
import type { Request } from 'express';
import { z } from 'zod';
import type { BuildRuns } from '../builds/runs.ts';
import { renderTag } from '../builds/tag.ts';
import { sha256Hex, type WebhookSecrets } from '../builds/webhook-secrets.ts';
import { deliveryOf, eventOf, matchTrigger, parsePush, verifyDelivery } from '../builds/webhooks.ts';
import { defineRoute } from '../http/routes.ts';
import { buildConfigIndexSchema, WEBHOOK_PROVIDERS } from './build-configs.ts';
import type { ApiContext } from './context.ts';

export const hookParams = z
  .object({ provider: z.enum(WEBHOOK_PROVIDERS), configId: z.string().regex(/^[a-z0-9]{16,32}$/) })
  .strict();
export const hookResponse = z.object({
  started: z.boolean(),
  /** Why nothing started: a delete, a ref no trigger matches, a redelivery, another event. */
  reason: z.string().optional(),
  build: buildRunSchema.optional(),
});

/** How long a delivery id is remembered. */
const DELIVERY_TTL_SECONDS = 86_400;

/** The raw request body, kept by the JSON parser (../service.ts) for signatures. */
export function rawBodyOf(req: Request): Buffer {
  return (req as Request & { rawBody?: Buffer }).rawBody ?? Buffer.alloc(0);
}

class Redelivery extends Error {}

export function buildHookRoutes(ctx: ApiContext, runs: BuildRuns, secrets: WebhookSecrets, etcd: Etcd3) {
  const { store, keys } = ctx;

  return [
    defineRoute({
      method: 'post',
      path: '/hooks/:provider/:configId',
      operationId: 'buildWebhook',
      summary:
        "A git host's push webhook for a build config: GitHub (X-Hub-Signature-256), Gitea (X-Gitea-Signature), GitLab (X-Gitlab-Token)",
      tags: ['builds'],
      access: { kind: 'public' },
      params: hookParams,
      body: z.record(z.string(), z.unknown()),
      responses: { 200: hookResponse, 202: hookResponse },
      errors: [401],
      idempotent: false,
      handler: async ({ req, params, body }) => {
        const notFound = () => new NotFoundError(`no build config ${params.configId}`);
        const index = (await store.get(keys.buildConfigId(params.configId), buildConfigIndexSchema))?.value;
        if (!index) throw notFound();
        const config = await store.get(keys.buildConfig(index.app, index.config), buildConfigSchema);
        if (!config || config.value.id !== params.configId) throw notFound();
        const header = (name: string) => req.get(name);
        const nonce = config.value.webhookSecretNonce;
        const plain = nonce ? await secrets.derive(config.value.id, nonce) : undefined;
        if (!verifyDelivery(params.provider, header, rawBodyOf(req), { plain, hash: config.value.webhookSecretHash })) {
          throw new UnauthorizedError('the delivery is not signed with this build config’s webhook secret');
        }
        const event = eventOf(params.provider, header);
        if (event === 'ping') return { status: 200, body: { started: false, reason: 'ping' } };
        if (event !== 'push')
          return { status: 202, body: { started: false, reason: `event "${event}" starts nothing` } };
        const push = parsePush(params.provider, body);
        if (!push) return { status: 202, body: { started: false, reason: 'not a push payload (no ref and after)' } };
        if (push.deleted) return { status: 202, body: { started: false, reason: `${push.ref} was deleted` } };
        const decision = matchTrigger(config.value, push.ref);
        if (!decision.start) return { status: 202, body: { started: false, reason: decision.reason } };

        const delivery = (deliveryOf(params.provider, header) ?? `body-${sha256Hex(rawBodyOf(req).toString('latin1'))}`)
          .replace(/[^A-Za-z0-9._-]/g, '_')
          .slice(0, 128);
        const deliveryKey = keys.buildDelivery(config.value.id, delivery);
        if (await store.get(deliveryKey, z.unknown())) {
          return { status: 200, body: { started: false, reason: `delivery ${delivery} was seen before` } };
        }
        const lease = etcd.lease(DELIVERY_TTL_SECONDS, { autoKeepAlive: false });
        const leaseId = await lease.grant();
        lease.release();
        const gitTag = decision.kind === 'tag' ? decision.name : undefined;
        const branch = decision.kind === 'branch' ? decision.name : config.value.git.branch;
        try {
          const run = await runs.start(`webhook:${params.provider}`, index.app, index.config, {
            ref: push.ref,
            commit: push.after,
            gitTag,
            trigger: { type: 'webhook', by: push.pusher ?? params.provider, delivery },
            image: (run) => ({
              repository: config.value.target,
              tag: renderTag({ template: config.value.tag, branch, gitTag, commit: push.after, run }),
              digest: null,
            }),
            extraOps: [{ op: 'create', key: deliveryKey, value: { at: new Date().toISOString() }, lease: leaseId }],
            onFailed: (failed) => (failed.includes(deliveryKey) ? new Redelivery() : undefined),
          });
          return { status: 202, body: { started: true, build: run } };
        } catch (err) {
          if (err instanceof Redelivery) {
            return { status: 200, body: { started: false, reason: `delivery ${delivery} was seen before` } };
          }
          throw err;
        }
      },
    }),
  ];
}
