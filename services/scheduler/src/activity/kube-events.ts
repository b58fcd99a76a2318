/**
 * What the cells say about an app's pods, into the app's activity feed: Kubernetes Warning events
 * (image pull failures, back-offs, failed probes…) and OOM kills (seen in a pod's container
 * status). Nothing of this is written to etcd otherwise, so each event is committed as a
 * transaction of its outbox entry alone (fenced like every write of the scheduler: a deposed
 * leader records nothing), then published.
 *
 * Event ids are derived from what they record: the same Kubernetes event seen again (an informer
 * relist, a new leader) gets the same id, and JetStream stores it once.
 */
import { createHash } from 'node:crypto';
import { NotLeaderError } from '@berth/shared/errors';
import type { EventInput } from '@berth/shared/events';
import type { Logger } from '@berth/shared/logging';
import { type App, LABELS, MANAGED_BY } from '@berth/shared/model';
import type { Store } from '@berth/shared/store';
import type { CoreV1Event, V1Pod } from '@kubernetes/client-node';
import type { EventRecorder } from './recorder.ts';

export type KubeEventFeedOptions = {
  /** The scheduler's fenced store. */
  store: Store;
  events: EventRecorder;
  /** The app, when it exists in this region (events about anything else are ignored). */
  app: (name: string) => App | undefined;
  logger: Logger;
  /** Ids remembered as recorded, so a pod's every status update does not write its OOM kill again. */
  rememberIds?: number;
};

export class KubeEventFeed {
  readonly #o: KubeEventFeedOptions;
  readonly #logger: Logger;
  /** Ids recorded by this process, oldest first (a Map keeps insertion order). */
  readonly #recorded = new Map<string, true>();

  constructor(options: KubeEventFeedOptions) {
    this.#o = options;
    this.#logger = options.logger.child({ component: 'kube-events' });
  }

  /** A Warning event about an app's pod. */
  async warning(cell: string, e: CoreV1Event): Promise<void> {
    const name = e.metadata?.namespace;
    const app = name ? this.#o.app(name) : undefined;
    if (!app) return;
    const reason = e.reason ?? 'Warning';
    await this.#record({
      // Kubernetes counts repeats of one event; the feed gets it at 1, 2, 4, 8… repeats, not each time.
      id: uuidFrom(`k8s/${cell}/${e.metadata?.uid}/${Math.floor(Math.log2(e.count ?? 1))}`),
      actor: { type: 'system', name: `kubernetes/${cell}` },
      kind: 'pod',
      resourceId: app.name,
      ...incarnationOf(app),
      resourceName: e.involvedObject?.name ?? 'unknown',
      action: kebab(reason),
      data: {
        cell,
        reason,
        message: e.message ?? '',
        object: `${e.involvedObject?.kind ?? ''}/${e.involvedObject?.name ?? ''}`,
        count: e.count ?? 1,
      },
    });
  }

  /** A pod update: an OOM kill shows in its containers' last state. */
  async podUpdated(cell: string, pod: V1Pod): Promise<void> {
    if (pod.metadata?.labels?.[LABELS.managedBy] !== MANAGED_BY) return;
    const app = pod.metadata?.labels?.[LABELS.app];
    if (!app) return;
    for (const c of pod.status?.containerStatuses ?? []) {
      if (c.lastState?.terminated?.reason !== 'OOMKilled') continue;
      await this.#record({
        id: uuidFrom(`oom/${cell}/${pod.metadata?.uid}/${c.name}/${c.restartCount}`),
        actor: { type: 'system', name: `kubernetes/${cell}` },
        kind: 'pod',
        resourceId: app,
        ...incarnationOf(this.#o.app(app)),
        resourceName: pod.metadata?.name ?? 'unknown',
        action: 'oom-killed',
        data: { cell, container: c.name, restarts: c.restartCount, version: pod.metadata?.labels?.[LABELS.version] },
      });
    }
  }

  /** Commits the event's outbox entry, then publishes it. Never rejects: the feed is best effort. */
  async #record(input: EventInput & { id: string }): Promise<void> {
    if (this.#recorded.has(input.id)) return;
    try {
      const { op, event } = this.#o.events.record(input);
      await this.#o.store.commit([op]);
      this.#remember(input.id);
      this.#o.events.flush([event]);
    } catch (err) {
      if (err instanceof NotLeaderError) return; // the next leader sees the same events
      this.#logger.warn({ err, kind: input.kind, action: input.action }, 'could not record a cell event');
    }
  }

  #remember(id: string): void {
    this.#recorded.set(id, true);
    const max = this.#o.rememberIds ?? 10_000;
    for (const old of this.#recorded.keys()) {
      if (this.#recorded.size <= max) break;
      this.#recorded.delete(old);
    }
  }
}

/** The app's incarnation, for the events of an app-scoped kind (a later app of its name never sees them). */
function incarnationOf(app: App | undefined): { incarnation?: string } {
  return app?.incarnation ? { incarnation: app.incarnation } : {};
}

/** A UUID made from a string: the same input, the same id (JetStream de-duplicates by it). */
export function uuidFrom(text: string): string {
  const h = createHash('sha256').update(text).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-8${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

/** `BackOff` → `back-off`: a Kubernetes reason as an event action. */
export function kebab(reason: string): string {
  const k = reason
    .replace(/([a-z0-9])([A-Z])/g, '$1-$2')
    .replace(/[^A-Za-z0-9]+/g, '-')
    .toLowerCase()
    .replace(/^-+|-+$/g, '');
  return /^[a-z]/.test(k) ? k.slice(0, 63) : `event-${k}`.slice(0, 63);
}
