/**
 * The event envelope: every change to a Berth resource is recorded as one of these, published to
 * JetStream on `berth.events.{kind}.{resourceId}.{action}`, and read back as activity feeds.
 * Validated with zod on publish (a bad event is refused, not stored) and on read (a bad stored
 * event is skipped and reported, not passed on).
 *
 * Versioned: `v` is the envelope's schema version. A reader accepts the versions it knows; a
 * change that an old reader could misread gets a new version.
 */
import { z } from 'zod';
import { InputError } from '../errors/index.ts';

export const EVENT_SCHEMA_VERSION = 1 as const;

/** What kind of thing changed. Adding a kind is compatible; renaming one is not. */
export const EVENT_KINDS = [
  'region',
  'cell',
  'user',
  'token',
  'quota',
  'app',
  'version',
  'member',
  'placement',
  'pod',
  'build',
  'image',
  'builder',
  'domain',
  'traffic',
  'lb-group',
  'lb-agent',
  'ipam',
  'image-group',
  'image-group-member',
  /** An app's write-only secret (docs/secrets.md): events carry its name and fingerprint only. */
  'app-secret',
] as const;
export type EventKind = (typeof EVENT_KINDS)[number];

/**
 * Kinds whose events belong to one app: their `resourceId` is the app's name (the sub-resource,
 * e.g. the version `v3`, is in `resourceName`), so one app's activity feed is one subject filter,
 * `berth.events.*.{app}.*`.
 */
export const APP_SCOPED_KINDS: readonly EventKind[] = [
  'app',
  'version',
  'member',
  'placement',
  'pod',
  'domain',
  'traffic',
  'build',
  'app-secret',
];

/** A subject token: no `.`, `*`, `>` or whitespace. */
const TOKEN = /^[^.*>\s]+$/;

export const actorSchema = z
  .object({
    type: z.enum(['user', 'service', 'system']),
    name: z.string().min(1).max(256),
  })
  .strict();
export type Actor = z.infer<typeof actorSchema>;

export const traceContextSchema = z
  .object({
    traceparent: z.string().regex(/^[\da-f]{2}-[\da-f]{32}-[\da-f]{16}-[\da-f]{2}$/, 'expected a W3C traceparent'),
    tracestate: z.string().optional(),
  })
  .strict();
export type TraceContext = z.infer<typeof traceContextSchema>;

export const eventSchema = z
  .object({
    v: z.literal(EVENT_SCHEMA_VERSION),
    /** Unique id of this event; also the JetStream message id, so a retried publish is stored once. */
    id: z.uuid(),
    time: z.iso.datetime({ offset: true }),
    actor: actorSchema,
    kind: z.enum(EVENT_KINDS),
    /** The id in the subject: the resource's name, or its app's name for app-scoped kinds. */
    resourceId: z.string().min(1).max(253).regex(TOKEN, 'must not contain ".", "*", ">" or whitespace'),
    /** For app-scoped kinds: the app's incarnation (a deleted app's events never reach a new app of its name). */
    incarnation: z.string().min(1).max(64).optional(),
    /** The name of the sub-resource inside an app (a version, a member), when there is one. */
    resourceName: z.string().min(1).max(253).optional(),
    action: z.string().regex(/^[a-z][a-z0-9-]{0,62}$/, 'expected a lowercase word like created, scaled, rolled-back'),
    /** The resource before and after the change, secrets redacted. */
    before: z.unknown().optional(),
    after: z.unknown().optional(),
    /** Anything else a reader needs: reasons, numbers, messages. */
    data: z.record(z.string(), z.unknown()).optional(),
    trace: traceContextSchema.optional(),
  })
  .strict();
export type BerthEvent = z.infer<typeof eventSchema>;

/** What a publisher supplies; the publisher fills in v, id, time and trace. */
export type EventInput = Omit<BerthEvent, 'v' | 'id' | 'time' | 'trace'> &
  Partial<Pick<BerthEvent, 'id' | 'time' | 'trace'>>;

/** Subjects and stream names of one installation; tests use their own root to stay apart. */
export class EventSubjects {
  readonly root: string;

  constructor(root = 'berth') {
    if (!/^[a-z][a-z0-9_-]*$/.test(root)) throw new InputError(`bad subject root "${root}"`);
    this.root = root;
  }

  /** `berth.events.{kind}.{resourceId}.{action}` */
  event(kind: EventKind, resourceId: string, action: string): string {
    return `${this.root}.events.${kind}.${resourceId}.${action}`;
  }
  /** Every event. */
  allEvents(): string {
    return `${this.root}.events.>`;
  }
  /** Every event of one kind. */
  kind(kind: EventKind): string {
    return `${this.root}.events.${kind}.>`;
  }
  /** Every event whose resourceId is `id`, whatever its kind (filter app-scoped kinds on read). */
  resource(resourceId: string): string {
    return `${this.root}.events.*.${resourceId}.*`;
  }
  /** `berth.builds.{runId}.log` */
  buildLog(runId: string): string {
    return `${this.root}.builds.${runId}.log`;
  }
  allBuildLogs(): string {
    return `${this.root}.builds.*.log`;
  }
  get eventsStream(): string {
    return `${this.root.toUpperCase().replace(/-/g, '_')}_EVENTS`;
  }
  get buildLogsStream(): string {
    return `${this.root.toUpperCase().replace(/-/g, '_')}_BUILD_LOGS`;
  }
}

/** Encodes an arbitrary id (a domain name, say) into one subject token, reversibly. */
export function toSubjectToken(id: string): string {
  return id.replace(/[%.*>\s]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`);
}

export function fromSubjectToken(token: string): string {
  return token.replace(/%([0-9A-F]{2})/g, (_, hex: string) => String.fromCharCode(Number.parseInt(hex, 16)));
}
