/**
 * Who pushed each tag and when, from the registry's notifications (distribution 2.8
 * `notifications.endpoints`, docs/notifications.md@v2.8.2). The registry posts envelopes
 * `{"events":[…]}` to the API and retries each one until it gets a 2xx, in order, from a queue it
 * keeps in memory. A manifest pushed by tag is recorded per tag as `{pushedAt, pushedBy, digest}`
 * (the token's subject is the pusher); a manifest delete forgets the tags that named it. The
 * registry's timestamp orders them: an event no newer than what is stored (a redelivery, or one
 * that arrived late) changes nothing, so redeliveries are harmless.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { type BerthEvent, toSubjectToken } from '@berth/shared/events';
import type { BerthKeys } from '@berth/shared/keys';
import {
  dnsLabelSchema,
  type ImageTagPush,
  imageGroupSchema,
  imageTagPushSchema,
  imageTagSchema,
} from '@berth/shared/model';
import type { EventsComponent } from '@berth/shared/nats';
import { parseRobotName } from '@berth/shared/registry';
import { type Op, type Store, transact } from '@berth/shared/store';
import { z } from 'zod';

/** The media type of the registry's envelopes. */
export const REGISTRY_EVENTS_MEDIA_TYPE = 'application/vnd.docker.distribution.events.v1+json';

/** One path component of a repository name (distribution's grammar). */
export const repoComponentSchema = z
  .string()
  .max(128)
  .regex(/^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/, 'expected a repository name: lowercase letters, digits, . _ -');

/**
 * The envelope as the route accepts it: anything with an `events` array. Each event is read on
 * its own (registryEventSchema), so one the API does not understand is skipped, never refused:
 * the registry would retry a refused envelope forever, and every later one waits behind it.
 */
export const registryEnvelopeSchema = z.looseObject({
  events: z.array(z.unknown()).max(1000),
});

/** The fields of one event the API reads; the registry sends more (request, source). */
export const registryEventSchema = z.looseObject({
  id: z.string().max(256).optional(),
  timestamp: z.iso.datetime({ offset: true }),
  action: z.string().max(32),
  target: z.looseObject({
    mediaType: z.string().max(256).optional(),
    digest: z.string().max(256).optional(),
    repository: z.string().max(512),
    tag: z.string().max(256).optional(),
  }),
  actor: z.looseObject({ name: z.string().max(256).optional() }).optional(),
});

/** What one event means for the records, or why it means nothing. */
export type TagChange =
  | { kind: 'push'; group: string; repo: string; tag: string; record: ImageTagPush }
  | { kind: 'delete'; group: string; repo: string; digest: string; at: string }
  | { kind: 'ignored'; reason: string };

/** Blobs, pulls and mounts change no tag. */
const BLOB_TYPES = new Set(['application/octet-stream', 'application/x-gzip']);

/** One event of an envelope → the change of records it asks for (pure). */
export function tagChangeOf(raw: unknown): TagChange {
  const parsed = registryEventSchema.safeParse(raw);
  if (!parsed.success) return { kind: 'ignored', reason: 'not an event of the registry' };
  const { action, target, timestamp, actor } = parsed.data;
  if (action !== 'push' && action !== 'delete') return { kind: 'ignored', reason: `a ${action} changes no tag` };
  if (target.mediaType && BLOB_TYPES.has(target.mediaType)) return { kind: 'ignored', reason: 'a blob' };
  // Only `group/repo` is kept: a repository with no group has no record, a nested one none yet.
  const parts = target.repository.split('/');
  const group = dnsLabelSchema.safeParse(parts[0]);
  const repo = repoComponentSchema.safeParse(parts[1]);
  if (parts.length !== 2 || !group.success || !repo.success) {
    return { kind: 'ignored', reason: `repository "${target.repository.slice(0, 200)}" is not group/repo` };
  }
  const digest = imageTagPushSchema.shape.digest.safeParse(target.digest);
  if (!digest.success) return { kind: 'ignored', reason: 'no digest' };
  const at = new Date(Date.parse(timestamp)).toISOString();
  if (action === 'delete') return { kind: 'delete', group: group.data, repo: repo.data, digest: digest.data, at };
  const tag = imageTagSchema.safeParse(target.tag);
  // A manifest pushed by digest (an index's children) names no tag.
  if (!tag.success) return { kind: 'ignored', reason: 'a push by digest' };
  return {
    kind: 'push',
    group: group.data,
    repo: repo.data,
    tag: tag.data,
    record: { pushedAt: at, pushedBy: actor?.name ?? '', digest: digest.data },
  };
}

/** Whether `candidate` replaces `stored`: strictly newer by the registry's clock. */
export function replaces(candidate: ImageTagPush, stored: ImageTagPush | undefined): boolean {
  return !stored || Date.parse(candidate.pushedAt) > Date.parse(stored.pushedAt);
}

/**
 * `Authorization: Bearer <secret>` checked against `secret` in constant time (both sides hashed
 * first, so neither the length nor a prefix leaks).
 */
export function bearerMatches(secret: string): (authorization: string | undefined) => boolean {
  const want = createHash('sha256').update(secret).digest();
  return (authorization) => {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
    const got = createHash('sha256')
      .update(m?.[1] ?? '')
      .digest();
    return timingSafeEqual(want, got) && m !== null;
  };
}

export type TagPushesOptions = {
  store: Store;
  keys: BerthKeys;
  /** Where `pushed` events go: recorded in the write's transaction, published after it. */
  events: Pick<EventsComponent, 'record' | 'flush'>;
};

/** What applying one change did. */
export type Applied = 'recorded' | 'stale' | 'no-group' | 'forgotten' | 'ignored';

/** The tag records in etcd (`imageTag` keys): written from notifications, read by the tags route. */
export class TagPushes {
  readonly #o: TagPushesOptions;

  constructor(options: TagPushesOptions) {
    this.#o = options;
  }

  /** Applies one event's change; the `image` event `pushed` goes out with a recorded push. */
  async apply(change: TagChange): Promise<{ applied: Applied; count: number }> {
    if (change.kind === 'ignored') return { applied: 'ignored', count: 0 };
    if (change.kind === 'push') return { applied: await this.#recordPush(change), count: 1 };
    const count = await this.#forgetDigest(change);
    return { applied: 'forgotten', count };
  }

  async #recordPush(change: Extract<TagChange, { kind: 'push' }>): Promise<Applied> {
    const { store, keys, events } = this.#o;
    const key = keys.imageTag(change.group, change.repo, change.tag);
    const name = `${change.group}/${change.repo}`;
    const event = await transact<BerthEvent | Applied>(
      store,
      async () => {
        const [group, current] = await Promise.all([
          store.get(keys.imageGroup(change.group), imageGroupSchema),
          store.get(key, imageTagPushSchema),
        ]);
        if (!group) return { done: 'no-group' as const };
        if (!replaces(change.record, current?.value)) return { done: 'stale' as const };
        const { pushedBy } = change.record;
        const robot = pushedBy ? parseRobotName(pushedBy) : undefined;
        const recorded = events.record({
          kind: 'image',
          resourceId: toSubjectToken(name),
          resourceName: change.tag,
          action: 'pushed',
          actor: pushedBy
            ? { type: robot ? 'service' : 'user', name: pushedBy }
            : { type: 'system', name: 'anonymous' },
          data: { repository: name, tag: change.tag, digest: change.record.digest, pushedAt: change.record.pushedAt },
        });
        const ops: Op[] = [
          // A group deleted meanwhile takes its records with it: write none for it.
          { op: 'expect', key: group.key, modRevision: group.modRevision },
          current
            ? { op: 'update', key, value: change.record, modRevision: current.modRevision }
            : { op: 'create', key, value: change.record },
          recorded.op,
        ];
        return { ops, result: () => recorded.event };
      },
      { what: `the record of ${name}:${change.tag}` },
    );
    if (typeof event === 'string') return event;
    events.flush([event]);
    return 'recorded';
  }

  /** A manifest delete: the tags that named it, pushed before the delete, are forgotten. */
  async #forgetDigest(change: Extract<TagChange, { kind: 'delete' }>): Promise<number> {
    const { store, keys } = this.#o;
    return transact<number>(
      store,
      async () => {
        const stale = (await store.list(keys.imageTags(change.group, change.repo), imageTagPushSchema)).filter(
          (r) => r.value.digest === change.digest && Date.parse(r.value.pushedAt) <= Date.parse(change.at),
        );
        if (stale.length === 0) return { done: 0 };
        return {
          ops: stale.map((r): Op => ({ op: 'delete', key: r.key, modRevision: r.modRevision })),
          result: () => stale.length,
        };
      },
      { what: `the records of ${change.group}/${change.repo}` },
    );
  }

  /** The records of a repository's tags, by tag. */
  async ofRepository(group: string, repo: string): Promise<Map<string, ImageTagPush>> {
    const { store, keys } = this.#o;
    const out = new Map<string, ImageTagPush>();
    for (const r of await store.list(keys.imageTags(group, repo), imageTagPushSchema)) {
      const tag = keys.parse('imageTag', r.key)?.tag;
      if (tag) out.set(tag, r.value);
    }
    return out;
  }

  /** The op that forgets one tag's record (a tag deleted through the API). */
  forgetTagOp(group: string, repo: string, tag: string): Op {
    return { op: 'delete', key: this.#o.keys.imageTag(group, repo, tag) };
  }
}
