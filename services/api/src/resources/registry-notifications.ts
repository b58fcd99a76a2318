/**
 * `POST /registry/notifications`: the registry's notification endpoint (docs/registry.md, "Who
 * pushed a tag"). The caller is no user: the registry shows the shared secret
 * (REGISTRY_NOTIFY_TOKEN) as a bearer token. Each event is applied on its own (../registry/
 * notifications.ts); one the API does not understand is skipped and the envelope still answers
 * 200, since the registry retries a refused one forever. A failure to write (etcd away) is a 5xx,
 * which the registry retries: nothing is lost while its queue lives.
 */
import { z } from 'zod';
import { defineRoute } from '../http/routes.ts';
import {
  type Applied,
  bearerMatches,
  registryEnvelopeSchema,
  type TagPushes,
  tagChangeOf,
} from '../registry/notifications.ts';
import type { ApiContext } from './context.ts';

export const registryNotificationsResponse = z.object({
  /** Events in the envelope. */
  events: z.number().int(),
  /** Tag pushes recorded (newer than what was stored). */
  recorded: z.number().int(),
  /** Tag records forgotten by manifest deletes. */
  forgotten: z.number().int(),
});

export function registryNotificationRoutes(ctx: ApiContext, pushes: TagPushes, notifyToken: string) {
  const logger = ctx.logger.child({ component: 'registry-notifications' });
  return [
    defineRoute({
      method: 'post',
      path: '/registry/notifications',
      operationId: 'receiveRegistryNotifications',
      summary:
        "The registry's notifications (distribution `notifications.endpoints`), with REGISTRY_NOTIFY_TOKEN as the bearer: records who pushed each tag and when",
      tags: ['images'],
      access: { kind: 'secret', verify: bearerMatches(notifyToken) },
      body: registryEnvelopeSchema,
      responses: { 200: registryNotificationsResponse },
      idempotent: false,
      handler: async ({ body }) => {
        const counts: Record<Applied, number> = { recorded: 0, stale: 0, 'no-group': 0, forgotten: 0, ignored: 0 };
        for (const raw of body.events) {
          const change = tagChangeOf(raw);
          const { applied, count } = await pushes.apply(change);
          counts[applied] += count;
          logger.debug(
            change.kind === 'ignored'
              ? { applied, reason: change.reason }
              : { applied, change: change.kind, repository: `${change.group}/${change.repo}` },
            'registry event',
          );
        }
        return {
          status: 200,
          body: { events: body.events.length, recorded: counts.recorded, forgotten: counts.forgotten },
        };
      },
    }),
  ];
}
