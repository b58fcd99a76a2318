/** What every route module needs: the store, keys, auth, events, quotas. */
import { PreconditionFailedError } from '@berth/shared/errors';
import { type EventInput, toSubjectToken } from '@berth/shared/events';
import type { BerthKeys } from '@berth/shared/keys';
import type { Logger } from '@berth/shared/logging';
import type { EventPublisher, EventSubjects, JetStreamClient } from '@berth/shared/nats';
import type { Request } from 'express';
import type { Counter } from 'prom-client';
import type { Principal } from '../auth/principal.ts';
import type { AuthService } from '../auth/service.ts';
import type { EtcdStore } from '../store/etcd-store.ts';

export type ApiContext = {
  store: EtcdStore;
  keys: BerthKeys;
  auth: AuthService;
  logger: Logger;
  region: string;
  /** The event publisher and reader; undefined until NATS is connected. */
  events: () => { publisher: EventPublisher; js: JetStreamClient; subjects: EventSubjects };
  eventsFailed: Counter;
};

/**
 * Publishes an event after a committed change. A failure is logged and counted, never thrown.
 * The resource id goes into the subject, so it is encoded as one subject token (a user name may
 * hold a ".": `john.doe` → `john%2Edoe`; app, region and cell names are unchanged).
 */
export async function recordEvent(
  ctx: ApiContext,
  principal: Principal | string,
  input: Omit<EventInput, 'actor'>,
): Promise<void> {
  const actor = typeof principal === 'string' ? principal : principal.user;
  try {
    await ctx.events().publisher.publish({
      ...input,
      resourceId: toSubjectToken(input.resourceId),
      actor: { type: 'user', name: actor },
    } as EventInput);
  } catch (err) {
    ctx.eventsFailed.inc();
    ctx.logger.error(
      { err, kind: input.kind, resourceId: input.resourceId, action: input.action },
      'event not published',
    );
  }
}

/** `"<revision>"` */
export function etag(modRevision: number): string {
  return `"${modRevision}"`;
}

/** The revision an If-Match header names, or undefined when there is none. Throws 412 on `*` mismatch forms. */
export function ifMatchRevision(req: Request): number | undefined {
  const header = req.headers['if-match'];
  if (!header || header === '*') return undefined;
  const m = /^(?:W\/)?"([0-9]+)"$/.exec(header.trim());
  if (!m?.[1]) throw new PreconditionFailedError(`If-Match must be an ETag from this API, like "42" (got ${header})`);
  return Number(m[1]);
}

/** Throws 412 when If-Match names another revision than the current one. */
export function checkIfMatch(req: Request, currentRevision: number): void {
  const wanted = ifMatchRevision(req);
  if (wanted !== undefined && wanted !== currentRevision) {
    throw new PreconditionFailedError(`the resource changed (now ${etag(currentRevision)}); read it again`, {
      extensions: { currentETag: etag(currentRevision) },
    });
  }
}

/** Paging over a sorted list of names: `cursor` is the last name of the previous page. */
export function page<T>(
  items: T[],
  nameOf: (t: T) => string,
  limit: number,
  cursor: string | undefined,
): { items: T[]; next: string | null } {
  const start = cursor ? items.findIndex((i) => nameOf(i) > cursor) : 0;
  const from = start < 0 ? items.length : start;
  const slice = items.slice(from, from + limit);
  const last = slice[slice.length - 1];
  return { items: slice, next: from + limit < items.length && last ? nameOf(last) : null };
}

export function now(): string {
  return new Date().toISOString();
}
