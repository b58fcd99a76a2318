/**
 * Events that ride the change they record. `record()` builds and validates an event and returns
 * the op that writes it into the outbox (`/berth/outbox/{id}`) in the change's own transaction:
 * a committed change always has its event stored, and a failed one never does. After the commit,
 * `flush()` publishes at once (the common case: one round trip later the event is in the feed).
 * Whatever was not published then (NATS down, the process killed between commit and publish) is
 * published by the relay that runs in every instance: it lists the outbox in key order (time
 * order), publishes each entry with the event id as the JetStream message id (JetStream drops a
 * duplicate within the stream's duplicate window, so two relays or a flush racing a relay store
 * one message), and deletes the entries after JetStream's ack, a batch per transaction.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import { type BerthEvent, type EventInput, EventSubjects, eventSchema } from '../events/index.ts';
import type { BerthKeys } from '../keys/index.ts';
import type { Logger } from '../logging/index.ts';
import type { Op, Store } from '../store/store.ts';
import {
  buildEvent,
  EventPublisher,
  ensureStreams,
  type JetStreamClient,
  type NatsComponent,
  type StreamLimits,
} from './index.ts';

export type EventsComponentOptions = {
  nats: NatsComponent;
  store: Store;
  keys: BerthKeys;
  subjects: EventSubjects;
  logger: Logger;
  metrics?: Registry | undefined;
  /** Prefix of this service's metric names, e.g. `berth_api`. */
  metricPrefix?: string;
  /** How often the relay looks for entries nobody published. Default 1000 ms. */
  relayIntervalMs?: number;
  /** Create or update the streams at start (the API does; other services rely on it). Default true. */
  ensureStreams?: boolean;
  streamLimits?: StreamLimits;
};

let sequence = 0;

/**
 * Outbox ids sort in time order: a zero-padded millisecond clock, this process's counter (two
 * changes in one millisecond keep their commit order), then the event id.
 */
function outboxId(event: BerthEvent): string {
  sequence = (sequence + 1) % 1e9;
  return `${String(Date.now()).padStart(15, '0')}-${String(sequence).padStart(9, '0')}-${event.id}`;
}

export class EventsComponent {
  readonly name = 'events';
  readonly subjects: EventSubjects;
  readonly #o: EventsComponentOptions;
  #publisher: EventPublisher | undefined;
  #timer: NodeJS.Timeout | undefined;
  #relaying: Promise<void> | undefined;
  #stopped = false;
  /** Outbox keys published and waiting to be deleted in the next batch. */
  #published = new Set<string>();
  #deleteTimer: NodeJS.Timeout | undefined;
  /** The outbox key each recorded event was written under. */
  readonly #keyOf = new WeakMap<BerthEvent, string>();
  readonly #relayed: Counter | undefined;
  readonly #failed: Counter | undefined;
  readonly #pending: Gauge | undefined;

  constructor(options: EventsComponentOptions) {
    this.#o = options;
    this.subjects = options.subjects ?? new EventSubjects();
    const prefix = options.metricPrefix ?? 'berth';
    if (options.metrics) {
      this.#relayed = new Counter({
        name: `${prefix}_events_relayed_total`,
        help: 'Outbox events published by the relay (not right after their commit)',
        registers: [options.metrics],
      });
      this.#failed = new Counter({
        name: `${prefix}_events_publish_failed_total`,
        help: 'Attempts to publish an outbox event that failed (it stays in the outbox)',
        registers: [options.metrics],
      });
      this.#pending = new Gauge({
        name: `${prefix}_events_outbox_pending`,
        help: 'Outbox entries the relay saw waiting at its last pass',
        registers: [options.metrics],
      });
    }
  }

  /** The connected publisher; throws UnavailableError while NATS is not connected. */
  get publisher(): EventPublisher {
    this.#publisher ??= new EventPublisher(this.#o.nats.client.js, this.subjects);
    return this.#publisher;
  }

  get js(): JetStreamClient {
    return this.#o.nats.client.js;
  }

  /**
   * The event as it will be stored, and the op that puts it into the outbox. Include the op in
   * the transaction of the change; after the commit, pass the event to flush().
   */
  record(input: EventInput): { op: Op; event: BerthEvent } {
    const event = buildEvent(input);
    const key = this.#o.keys.outbox(outboxId(event));
    this.#keyOf.set(event, key);
    return { op: { op: 'put', key, value: event }, event };
  }

  /**
   * An event that records no change of its own (a service reporting what it saw): written to the
   * outbox alone, then published. While NATS is down it reaches the feed through the relay.
   */
  async emit(input: EventInput): Promise<BerthEvent> {
    const { op, event } = this.record(input);
    await this.#o.store.commit([op]);
    this.flush([event]);
    return event;
  }

  /** Publishes committed events now; never throws (what fails stays for the relay). */
  flush(events: readonly BerthEvent[]): void {
    if (events.length === 0) return;
    void (async () => {
      for (const event of events) {
        const key = this.#keyOf.get(event);
        if (!key || !(await this.#publish(event, key))) {
          this.#wake();
          return;
        }
      }
    })();
  }

  async start(): Promise<void> {
    if (this.#o.ensureStreams !== false) {
      await ensureStreams(await this.#o.nats.client.jsm(), this.subjects, this.#o.streamLimits);
    }
    this.#stopped = false;
    this.#schedule(0);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#relaying;
    clearTimeout(this.#deleteTimer);
    await this.#deletePublished();
  }

  /** Publishes every outbox entry now (tests, and the relay's own pass). */
  async relayOnce(): Promise<number> {
    let relayed = 0;
    const entries = await this.#o.store.backend.range(this.#o.keys.outboxes());
    this.#pending?.set(entries.length);
    for (const kv of entries) {
      if (this.#published.has(kv.key)) continue;
      let event: BerthEvent;
      try {
        event = eventSchema.parse(JSON.parse(kv.value));
      } catch (err) {
        // Never written by record(): nothing could ever publish it; drop it loudly.
        this.#o.logger.error({ err, key: kv.key }, 'outbox entry is not an event; deleted');
        this.#published.add(kv.key);
        continue;
      }
      // In order: a later event is not published before an earlier one that failed.
      if (!(await this.#publish(event, kv.key))) break;
      relayed++;
      this.#relayed?.inc();
    }
    await this.#deletePublished();
    return relayed;
  }

  async #publish(event: BerthEvent, key: string): Promise<boolean> {
    try {
      await this.publisher.publishBuilt(event);
    } catch (err) {
      this.#failed?.inc();
      this.#o.logger.warn(
        { err: (err as Error).message, eventId: event.id },
        'event not published yet; the relay retries',
      );
      return false;
    }
    this.#published.add(key);
    this.#deleteTimer ??= setTimeout(() => {
      this.#deleteTimer = undefined;
      void this.#deletePublished();
    }, 20);
    return true;
  }

  /** Deletes published entries, one transaction per batch (a delete of an absent key is harmless). */
  async #deletePublished(): Promise<void> {
    const keys = [...this.#published];
    if (keys.length === 0) return;
    for (let i = 0; i < keys.length; i += 100) {
      const batch = keys.slice(i, i + 100);
      try {
        await this.#o.store.backend.txn(
          [],
          batch.map((del) => ({ del })),
        );
        for (const k of batch) this.#published.delete(k);
      } catch (err) {
        // Kept in #published: the next pass deletes them (JetStream already has the events).
        this.#o.logger.warn({ err: (err as Error).message }, 'published outbox entries not deleted yet');
        return;
      }
    }
  }

  #wake(): void {
    if (!this.#stopped && !this.#relaying) this.#schedule(0);
  }

  #schedule(ms: number): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#relaying = this.relayOnce()
        .catch((err: unknown) => this.#o.logger.warn({ err: (err as Error).message }, 'outbox relay pass failed'))
        .then(() => undefined)
        .finally(() => {
          this.#relaying = undefined;
          if (!this.#stopped) this.#schedule(this.#o.relayIntervalMs ?? 1000);
        });
    }, ms);
    this.#timer.unref?.();
  }
}
