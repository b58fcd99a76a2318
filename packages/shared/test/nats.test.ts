import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../src/errors/index.ts';
import { EventSubjects } from '../src/events/index.ts';
import { EventPublisher, ensureStreams, NatsClient, readEvents } from '../src/nats/index.ts';
import { startTelemetry, type Telemetry, withSpan } from '../src/telemetry/index.ts';
import { regionCredentials, regionEnv, uniqueId } from '../src/testing/index.ts';

const servers = (regionEnv().NATS_URL as string).split(',');
/** The tests identity, once make up turned the region's auth on. */
const auth = regionCredentials().nats;
// Each run gets its own subject root and streams: isolated from the region's and other tests'.
const subjects = new EventSubjects(`t${uniqueId()}`);
const spans = new InMemorySpanExporter();
let telemetry: Telemetry;

beforeAll(async () => {
  telemetry = startTelemetry({
    serviceName: 'nats-test',
    spanProcessors: [new SimpleSpanProcessor({ exporter: spans })],
  });
  const admin = await NatsClient.connect({ servers, name: 'test-admin', ...auth });
  await ensureStreams(await admin.jsm(), subjects);
  await ensureStreams(await admin.jsm(), subjects); // idempotent
  await admin.drain();
});

afterAll(async () => {
  const admin = await NatsClient.connect({ servers, name: 'test-admin', ...auth });
  const jsm = await admin.jsm();
  await jsm.streams.delete(subjects.eventsStream).catch(() => undefined);
  await jsm.streams.delete(subjects.buildLogsStream).catch(() => undefined);
  await admin.drain();
  await telemetry.shutdown();
});

describe('events on JetStream', () => {
  it('an event is read back by subject filter after its publisher is gone', async () => {
    const publisher = await NatsClient.connect({ servers, name: 'test-publisher', ...auth });
    const events = new EventPublisher(publisher.js, subjects);
    const { event } = await events.publish({
      actor: { type: 'user', name: 'alice' },
      kind: 'version',
      resourceId: 'shop',
      resourceName: 'v3',
      action: 'created',
      after: { imageTag: 'main-1a2b3c4', replicas: 4, env: { DB_PASSWORD: 'hunter22' } },
    });
    await events.publish({ actor: { type: 'user', name: 'bob' }, kind: 'app', resourceId: 'blog', action: 'created' });
    await publisher.drain();

    const reader = await NatsClient.connect({ servers, name: 'test-reader', ...auth });
    try {
      const stored = await readEvents(reader.js, subjects, { filter: subjects.resource('shop') });
      expect(stored.map((s) => s.event.id)).toEqual([event.id]);
      const [first] = stored;
      expect(first?.subject).toBe(subjects.event('version', 'shop', 'created'));
      expect(first?.event).toMatchObject({ kind: 'version', resourceName: 'v3', actor: { name: 'alice' } });
      // Secrets in before/after are redacted before they are stored.
      expect(JSON.stringify(first?.event)).not.toContain('hunter22');
    } finally {
      await reader.drain();
    }
  });

  it('an event that fails its schema is refused on publish and nothing is stored', async () => {
    const nats = await NatsClient.connect({ servers, name: 'test-bad', ...auth });
    try {
      const events = new EventPublisher(nats.js, subjects);
      const attempt = events.publish({
        actor: { type: 'user', name: 'mallory' },
        kind: 'app',
        resourceId: 'evil.app',
        action: 'Created!',
      });
      await expect(attempt).rejects.toBeInstanceOf(InputError);
      const err = (await attempt.catch((e: unknown) => e)) as InputError;
      expect(err.issues.map((i) => i.path).sort()).toEqual(['$.action', '$.resourceId']);
      expect(await readEvents(nats.js, subjects, { filter: subjects.kind('app') })).toEqual(
        expect.not.arrayContaining([expect.objectContaining({ subject: expect.stringContaining('evil') })]),
      );
      expect(
        (await readEvents(nats.js, subjects, { filter: subjects.allEvents() })).filter(
          (s) => s.event.actor.name === 'mallory',
        ),
      ).toEqual([]);
    } finally {
      await nats.drain();
    }
  });

  it('a retried publish of the same event is stored once', async () => {
    const nats = await NatsClient.connect({ servers, name: 'test-dup', ...auth });
    try {
      const events = new EventPublisher(nats.js, subjects);
      const input = {
        id: crypto.randomUUID(),
        actor: { type: 'service' as const, name: 'scheduler' },
        kind: 'version' as const,
        resourceId: 'dup',
        resourceName: 'v1',
        action: 'available',
      };
      await events.publish(input);
      await events.publish(input);
      expect(await readEvents(nats.js, subjects, { filter: subjects.resource('dup') })).toHaveLength(1);
    } finally {
      await nats.drain();
    }
  });

  it('an event carries the trace context of the span that published it', async () => {
    const nats = await NatsClient.connect({ servers, name: 'test-trace', ...auth });
    try {
      const events = new EventPublisher(nats.js, subjects);
      const traceId = await withSpan('deploy', async (span) => {
        await events.publish({
          actor: { type: 'user', name: 'carol' },
          kind: 'app',
          resourceId: 'traced',
          action: 'updated',
        });
        return span.spanContext().traceId;
      });
      const [stored] = await readEvents(nats.js, subjects, { filter: subjects.resource('traced') });
      expect(stored?.event.trace?.traceparent).toContain(traceId);
      expect(spans.getFinishedSpans().some((s) => s.spanContext().traceId === traceId)).toBe(true);
    } finally {
      await nats.drain();
    }
  });
});
