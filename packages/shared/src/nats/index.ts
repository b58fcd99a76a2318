/**
 * NATS plumbing: the connection factory (reconnects forever; its state feeds /readyz), the
 * JetStream streams Berth needs, and the event publisher and reader that validate every event
 * against the envelope schema in ../events.
 */
import { randomUUID } from 'node:crypto';
import {
  DiscardPolicy,
  JetStreamApiError,
  type JetStreamClient,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
} from '@nats-io/jetstream';
import { type NatsConnection, nanos, headers as natsHeaders } from '@nats-io/nats-core';
import { connect } from '@nats-io/transport-node';
import { inputErrorFromZod, UnavailableError } from '../errors/index.ts';
import {
  APP_SCOPED_KINDS,
  type BerthEvent,
  EVENT_SCHEMA_VERSION,
  type EventInput,
  EventSubjects,
  eventSchema,
} from '../events/index.ts';
import { type Logger, redactSecrets } from '../logging/index.ts';
import { currentTraceContext, injectIntoHeaderMap } from '../telemetry/index.ts';

export type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
export type { NatsConnection } from '@nats-io/nats-core';

export type NatsConfig = {
  servers: string[];
  token?: string | undefined;
  /** A NATS user and its password (the server's `authorization.users`). */
  user?: string | undefined;
  pass?: string | undefined;
  /** Connection name, shown in the server's monitoring. */
  name: string;
  logger?: Logger;
  /** Keep trying when no server answers at first, instead of failing. Default false. */
  waitOnFirstConnect?: boolean;
};

/** A connection that reconnects forever and tracks whether it is connected right now. */
export class NatsClient {
  readonly connection: NatsConnection;
  readonly js: JetStreamClient;
  #connected = true;
  #logger: Logger | undefined;

  private constructor(connection: NatsConnection, logger: Logger | undefined) {
    this.connection = connection;
    this.js = jetstream(connection);
    this.#logger = logger;
    void this.#watchStatus();
  }

  static async connect(config: NatsConfig): Promise<NatsClient> {
    const logger = config.logger?.child({ component: 'nats' });
    try {
      const connection = await connect({
        servers: config.servers.map((s) => s.replace(/^nats:\/\//, '')),
        name: config.name,
        ...(config.token ? { token: config.token } : {}),
        ...(config.user ? { user: config.user, pass: config.pass ?? '' } : {}),
        maxReconnectAttempts: -1,
        reconnectTimeWait: 500,
        reconnectJitter: 250,
        pingInterval: 10_000,
        timeout: 5000,
        waitOnFirstConnect: config.waitOnFirstConnect ?? false,
      });
      return new NatsClient(connection, logger);
    } catch (err) {
      throw new UnavailableError(`cannot connect to NATS at ${config.servers.join(',')}`, { cause: err });
    }
  }

  /** True while connected (false while reconnecting or closed). */
  get connected(): boolean {
    return this.#connected && !this.connection.isClosed();
  }

  async jsm(): Promise<JetStreamManager> {
    return jetstreamManager(this.connection);
  }

  /** Flushes pending messages and closes. Safe to call twice. */
  async drain(): Promise<void> {
    if (this.connection.isClosed()) return;
    try {
      await this.connection.drain();
    } catch {
      await this.connection.close().catch(() => undefined);
    }
  }

  async #watchStatus(): Promise<void> {
    for await (const status of this.connection.status()) {
      switch (status.type) {
        case 'disconnect':
          this.#connected = false;
          this.#logger?.warn({ server: (status as { server?: string }).server }, 'nats disconnected');
          break;
        case 'reconnect':
          this.#connected = true;
          this.#logger?.info('nats reconnected');
          break;
        default:
          break;
      }
    }
  }
}

export type StreamLimits = {
  /** How long events are kept. Default 365 days. */
  eventsMaxAgeMs?: number;
  /** How long build logs are kept. Default 7 days. */
  buildLogsMaxAgeMs?: number;
};

const DAY_MS = 86_400_000;

/** The stream configs Berth needs, for one subject root. */
export function streamConfigs(
  subjects: EventSubjects,
  limits: StreamLimits = {},
): (Partial<StreamConfig> & { name: string })[] {
  return [
    {
      name: subjects.eventsStream,
      subjects: [subjects.allEvents()],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      discard: DiscardPolicy.Old,
      max_age: nanos(limits.eventsMaxAgeMs ?? 365 * DAY_MS),
      // An outbox entry is published again when its relay died between JetStream's ack and the
      // delete; the window must cover a relay's restart, so an hour.
      duplicate_window: nanos(60 * 60_000),
      allow_direct: true,
    },
    {
      name: subjects.buildLogsStream,
      subjects: [subjects.allBuildLogs()],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      discard: DiscardPolicy.Old,
      max_age: nanos(limits.buildLogsMaxAgeMs ?? 7 * DAY_MS),
      duplicate_window: nanos(60_000),
      allow_direct: true,
    },
  ];
}

/** Creates Berth's streams, or updates them to the current config. Idempotent. */
export async function ensureStreams(
  jsm: JetStreamManager,
  subjects: EventSubjects,
  limits: StreamLimits = {},
): Promise<void> {
  for (const config of streamConfigs(subjects, limits)) {
    const name = config.name;
    try {
      await jsm.streams.info(name);
      await jsm.streams.update(name, config);
    } catch (err) {
      if (err instanceof JetStreamApiError && err.code === 404) {
        await jsm.streams.add(config);
      } else if (err instanceof Error && /stream not found/i.test(err.message)) {
        await jsm.streams.add(config);
      } else {
        throw err;
      }
    }
  }
}

/**
 * Fills in id, time and the active trace context; redacts secrets in before/after/data; validates
 * the result and refuses (InputError) an event that does not match the schema.
 */
export function buildEvent(input: EventInput): BerthEvent {
  const trace = input.trace ?? currentTraceContext();
  const candidate = {
    ...input,
    v: EVENT_SCHEMA_VERSION,
    id: input.id ?? randomUUID(),
    time: input.time ?? new Date().toISOString(),
    ...(input.before !== undefined ? { before: redactSecrets(input.before) } : {}),
    ...(input.after !== undefined ? { after: redactSecrets(input.after) } : {}),
    ...(input.data !== undefined ? { data: redactSecrets(input.data) } : {}),
    ...(trace ? { trace } : {}),
  };
  const parsed = eventSchema.safeParse(candidate);
  if (!parsed.success) throw inputErrorFromZod(parsed.error, 'event');
  return parsed.data;
}

/**
 * Publishes events to JetStream. Fills in id, time and the active trace context; redacts secrets
 * in before/after/data; validates the result and refuses (InputError) an event that does not
 * match the schema. The event id is the message id, so a retried publish is stored once.
 */
export class EventPublisher {
  readonly #js: JetStreamClient;
  readonly #subjects: EventSubjects;

  constructor(js: JetStreamClient, subjects: EventSubjects = new EventSubjects()) {
    this.#js = js;
    this.#subjects = subjects;
  }

  /** Builds and validates an event without publishing it. */
  build(input: EventInput): BerthEvent {
    return buildEvent(input);
  }

  /** Publishes one event; resolves with its stream sequence once JetStream has stored it. */
  async publish(input: EventInput): Promise<{ event: BerthEvent; seq: number }> {
    return this.publishBuilt(this.build(input));
  }

  /** Publishes an event already built (an outbox entry); its id is the message id. */
  async publishBuilt(event: BerthEvent): Promise<{ event: BerthEvent; seq: number }> {
    const hdrs = natsHeaders();
    injectIntoHeaderMap(hdrs);
    const subject = this.#subjects.event(event.kind, event.resourceId, event.action);
    const ack = await this.#js.publish(subject, JSON.stringify(event), { msgID: event.id, headers: hdrs });
    return { event, seq: ack.seq };
  }
}

export type StoredEvent = { seq: number; subject: string; event: BerthEvent };

export type ReadEventsOptions = {
  /** Subject filter, e.g. `subjects.resource('shop')`. */
  filter: string;
  /** First stream sequence to read (inclusive). Default: the start of the stream. */
  fromSeq?: number;
  /** Read events stored at or after this time instead (ignored when fromSeq is set). */
  fromTime?: Date;
  /** Stop before this stream sequence (exclusive). Default: read to the end. */
  toSeq?: number;
  /** Stop after this many valid events. Default 1000. */
  max?: number;
  /** Keep only events of app-scoped kinds (for an app's activity feed). */
  appScopedOnly?: boolean;
  /** Called for each stored message that fails the schema (it is skipped). */
  onInvalid?: (seq: number, subject: string, err: unknown) => void;
};

/**
 * Reads stored events oldest first by subject filter, validating each one. Uses JetStream's direct
 * get with `next_by_subj` (the server finds the next matching message after a sequence), so a read
 * costs one round trip per event returned, never waits for an idle timeout, and needs no consumer.
 * Reading needs no publisher alive: the stream is the source of truth.
 */
export async function readEvents(
  js: JetStreamClient,
  subjects: EventSubjects,
  options: ReadEventsOptions,
): Promise<StoredEvent[]> {
  const max = options.max ?? 1000;
  const jsm = await js.jetstreamManager();
  const info = await jsm.streams.info(subjects.eventsStream);
  const lastSeq = Math.min(info.state.last_seq, (options.toSeq ?? Number.POSITIVE_INFINITY) - 1);
  let seq = Math.max(options.fromSeq ?? 1, info.state.first_seq);
  if (!options.fromSeq && options.fromTime) {
    // Binary search for the first message stored at or after fromTime (nats-server 2.9 has no
    // direct get by time): times grow with sequence numbers.
    let lo = seq;
    let hi = lastSeq + 1;
    while (lo < hi) {
      const mid = Math.floor((lo + hi) / 2);
      const msg = await jsm.direct.getMessage(subjects.eventsStream, { seq: mid, next_by_subj: subjects.allEvents() });
      if (!msg || msg.seq > lastSeq || new Date(msg.time) >= options.fromTime) hi = mid;
      else lo = msg.seq + 1;
    }
    seq = lo;
  }
  const out: StoredEvent[] = [];
  while (out.length < max && seq <= lastSeq) {
    const msg = await jsm.direct.getMessage(subjects.eventsStream, { seq, next_by_subj: options.filter });
    if (!msg || msg.seq > lastSeq) break;
    const parsed = parseStoredEvent(msg.data);
    if (!parsed.ok) {
      options.onInvalid?.(msg.seq, msg.subject, parsed.error);
    } else if (!options.appScopedOnly || APP_SCOPED_KINDS.includes(parsed.event.kind)) {
      out.push({ seq: msg.seq, subject: msg.subject, event: parsed.event });
    }
    seq = msg.seq + 1;
  }
  return out;
}

/** Parses and validates one stored event. */
export function parseStoredEvent(data: Uint8Array): { ok: true; event: BerthEvent } | { ok: false; error: unknown } {
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder().decode(data));
  } catch (error) {
    return { ok: false, error };
  }
  const parsed = eventSchema.safeParse(raw);
  if (!parsed.success) return { ok: false, error: inputErrorFromZod(parsed.error, 'stored event') };
  return { ok: true, event: parsed.data };
}

export { EventSubjects } from '../events/index.ts';

/**
 * NATS as a lifecycle component: start() connects (waiting for a server that is not up yet),
 * stop() drains. `client` is available once started; `ready` is the readiness check.
 */
export class NatsComponent {
  readonly name = 'nats';
  readonly #config: NatsConfig;
  #client: NatsClient | undefined;

  constructor(config: NatsConfig) {
    this.#config = config;
  }

  get client(): NatsClient {
    if (!this.#client) throw new UnavailableError('not connected to NATS yet');
    return this.#client;
  }

  async start(): Promise<void> {
    this.#client ??= await NatsClient.connect({ ...this.#config, waitOnFirstConnect: true });
  }

  async stop(): Promise<void> {
    await this.#client?.drain();
  }

  readonly ready = (): void => {
    if (!this.#client?.connected) throw new UnavailableError('not connected to NATS');
  };
}
export { EventsComponent, type EventsComponentOptions } from './events.ts';
