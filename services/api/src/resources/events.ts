/**
 * Activity feeds and operations statistics, read from the JetStream event stream.
 *
 * An app's feed, newest first: JetStream reads forward only, so a page is read backwards in
 * windows of stream sequence numbers: read [upper - w, upper) with the app's subject filter (the
 * server skips other subjects), prepend, and double w until the page is full or the stream's
 * start is reached. The cursor is the sequence of the last event of the page; a page costs about
 * the events it returns plus the filtered scan of its windows, whatever the feed's length.
 */
import type { BerthEvent } from '@berth/shared/events';
import { REDACTED } from '@berth/shared/logging';
import { type EventSubjects, type JetStreamClient, readEvents, type StoredEvent } from '@berth/shared/nats';
import { defineRoute } from '../http/routes.ts';
import { loadApp } from './app-access.ts';
import type { ApiContext } from './context.ts';
import { appParams, eventResponse, eventsQuery, listOf, statsQuery, statsResponse } from './schemas.ts';

export async function readFeedNewestFirst(
  js: JetStreamClient,
  subjects: EventSubjects,
  filter: string,
  limit: number,
  before: number | undefined,
  keep: (event: BerthEvent) => boolean = () => true,
): Promise<{ items: StoredEvent[]; next: string | null }> {
  const jsm = await js.jetstreamManager();
  const info = await jsm.streams.info(subjects.eventsStream);
  const first = info.state.first_seq;
  let upper = Math.min(before ?? info.state.last_seq + 1, info.state.last_seq + 1);
  let window = Math.max(256, limit * 16);
  let collected: StoredEvent[] = [];
  while (collected.length <= limit && upper > first && info.state.messages > 0) {
    const from = Math.max(first, upper - window);
    const batch = await readEvents(js, subjects, {
      filter,
      fromSeq: from,
      toSeq: upper,
      max: 100_000,
      appScopedOnly: true,
    });
    collected = batch.filter((e) => keep(e.event)).concat(collected);
    upper = from;
    window *= 2;
  }
  const newestFirst = collected.reverse();
  const items = newestFirst.slice(0, limit);
  const more = newestFirst.length > limit || upper > first;
  const last = items[items.length - 1];
  return { items, next: more && last && items.length === limit ? String(last.seq) : null };
}

function view(stored: StoredEvent) {
  const { trace: _trace, v: _v, ...event } = stored.event as BerthEvent;
  if (event.kind === 'version') {
    // Version events stored before env values were redacted at the source (./versions.ts) still
    // hold them: no feed shows them.
    return { seq: stored.seq, ...event, before: withoutEnvValues(event.before), after: withoutEnvValues(event.after) };
  }
  return { seq: stored.seq, ...event };
}

function withoutEnvValues(value: unknown): unknown {
  if (typeof value !== 'object' || value === null || !('env' in value)) return value;
  const env = (value as { env: unknown }).env;
  if (typeof env !== 'object' || env === null) return value;
  return { ...value, env: Object.fromEntries(Object.keys(env).map((name) => [name, REDACTED])) };
}

export function eventRoutes(ctx: ApiContext) {
  return [
    defineRoute({
      method: 'get',
      path: '/apps/:app/events',
      operationId: 'listAppEvents',
      summary:
        "An app's activity feed, newest first: every change to it, its versions and members, and its pods' Kubernetes events",
      tags: ['events'],
      access: { kind: 'user', scope: 'read' },
      params: appParams,
      query: eventsQuery,
      responses: { 200: listOf(eventResponse) },
      handler: async ({ params, query, principal }) => {
        const { app } = await loadApp(ctx, principal, params.app, 'read');
        const { js, subjects } = ctx.events;
        // Only this incarnation's events: a deleted app's history never reaches a new app of its name.
        const incarnation = app.value.incarnation;
        const feed = await readFeedNewestFirst(
          js,
          subjects,
          subjects.resource(params.app),
          query.limit,
          query.cursor ? Number(query.cursor) : undefined,
          (event) => event.incarnation === incarnation,
        );
        return { status: 200, body: { items: feed.items.map(view), next: feed.next } };
      },
    }),

    defineRoute({
      method: 'get',
      path: '/admin/stats',
      operationId: 'getStats',
      summary: 'Deploys, scales, rollbacks and logins per day (UTC), newest day first (admin)',
      tags: ['admin'],
      access: { kind: 'admin' },
      query: statsQuery,
      responses: { 200: statsResponse },
      handler: async ({ query }) => {
        const { js, subjects } = ctx.events;
        const dayMs = 86_400_000;
        const today = Math.floor(Date.now() / dayMs);
        const since = new Date((today - query.days + 1) * dayMs);
        const days = new Map<string, { deploys: number; scales: number; rollbacks: number; logins: number }>();
        for (let d = 0; d < query.days; d++) {
          days.set(new Date((today - d) * dayMs).toISOString().slice(0, 10), {
            deploys: 0,
            scales: 0,
            rollbacks: 0,
            logins: 0,
          });
        }
        const counted: [string, 'deploys' | 'scales' | 'rollbacks' | 'logins'][] = [
          [`${subjects.root}.events.version.*.created`, 'deploys'],
          [`${subjects.root}.events.version.*.scaled`, 'scales'],
          [`${subjects.root}.events.version.*.rolled-back`, 'rollbacks'],
          [`${subjects.root}.events.user.*.logged-in`, 'logins'],
        ];
        for (const [filter, field] of counted) {
          const events = await readEvents(js, subjects, { filter, max: 1_000_000, fromTime: since });
          for (const e of events) {
            const day = days.get(e.event.time.slice(0, 10));
            if (day) day[field]++;
          }
        }
        return { status: 200, body: { days: [...days].map(([date, counts]) => ({ date, ...counts })) } };
      },
    }),
  ];
}
