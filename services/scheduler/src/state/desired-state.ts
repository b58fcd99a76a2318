/**
 * What the scheduler reads from etcd, kept current by list-then-watch: apps and their versions,
 * the region's cells, and its own output (placements, status), so it never rewrites what is
 * already there.
 */
import type { Etcd3 } from '@berth/shared/etcd';
import { PrefixWatcher, type WatchChange } from '@berth/shared/etcd';
import type { BerthKeys } from '@berth/shared/keys';
import type { Logger } from '@berth/shared/logging';
import {
  type App,
  appSchema,
  type Cell,
  cellSchema,
  type Placement,
  placementSchema,
  type Version,
  type VersionCellStatus,
  versionCellStatusSchema,
  versionSchema,
} from '@berth/shared/model';

export type StoredValue<T> = { value: T; modRevision: number };

export type DesiredStateOptions = {
  etcd: Etcd3;
  keys: BerthKeys;
  region: string;
  logger: Logger;
  /** An app's desired state or our output for it changed. */
  onAppChange: (app: string) => void;
  /** The set or state of cells changed. */
  onCellsChange: () => void;
};

export class DesiredState {
  readonly #keys: BerthKeys;
  readonly #apps: PrefixWatcher<unknown>;
  readonly #cells: PrefixWatcher<unknown>;
  readonly #placements: PrefixWatcher<unknown>;
  readonly #statuses: PrefixWatcher<unknown>;
  readonly #logger: Logger;

  constructor(options: DesiredStateOptions) {
    const { etcd, keys, logger } = options;
    this.#keys = keys;
    this.#logger = logger.child({ component: 'desired-state' });
    const appOf = (change: WatchChange<unknown>, prefix: string) => change.key.slice(prefix.length).split('/')[0];
    const onApp = (prefix: string) => (change: WatchChange<unknown>) => {
      const app = appOf(change, prefix);
      if (app) options.onAppChange(app);
    };
    this.#apps = new PrefixWatcher({ client: etcd, prefix: keys.apps(), logger, onChange: onApp(keys.apps()) });
    this.#placements = new PrefixWatcher({
      client: etcd,
      prefix: keys.placements(),
      logger,
      onChange: onApp(keys.placements()),
    });
    this.#statuses = new PrefixWatcher({ client: etcd, prefix: keys.statuses(), logger });
    this.#cells = new PrefixWatcher({
      client: etcd,
      prefix: keys.cells(options.region),
      logger,
      onChange: () => options.onCellsChange(),
    });
  }

  async start(): Promise<void> {
    await Promise.all([this.#apps.start(), this.#cells.start(), this.#placements.start(), this.#statuses.start()]);
  }

  async stop(): Promise<void> {
    await Promise.all([this.#apps.stop(), this.#cells.stop(), this.#placements.stop(), this.#statuses.stop()]);
  }

  /** True while etcd cannot be reached: the views are the last known. */
  get stale(): boolean {
    return this.#apps.stale || this.#cells.stale;
  }

  appNames(): string[] {
    const names = new Set<string>();
    for (const key of this.#apps.view.keys()) {
      const name = key.slice(this.#keys.apps().length).split('/')[0];
      if (name) names.add(name);
    }
    for (const key of this.#placements.view.keys()) {
      const name = key.slice(this.#keys.placements().length).split('/')[0];
      if (name) names.add(name);
    }
    return [...names].sort();
  }

  app(name: string): App | undefined {
    return this.#parse(this.#apps.get(this.#keys.app(name))?.value, appSchema, name);
  }

  versions(app: string): Version[] {
    const prefix = this.#keys.versions(app);
    const out: Version[] = [];
    for (const [key, entry] of this.#apps.view) {
      if (!key.startsWith(prefix)) continue;
      const v = this.#parse(entry.value, versionSchema, key);
      if (v) out.push(v);
    }
    return out.sort((a, b) => a.number - b.number);
  }

  cells(): Cell[] {
    const out: Cell[] = [];
    for (const [key, entry] of this.#cells.view) {
      const c = this.#parse(entry.value, cellSchema, key);
      if (c) out.push(c);
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  placement(app: string, version: string): StoredValue<Placement> | undefined {
    const entry = this.#placements.get(this.#keys.placement(app, version));
    const value = this.#parse(entry?.value, placementSchema, `${app}/${version}`);
    return value && entry ? { value, modRevision: entry.modRevision } : undefined;
  }

  placements(): Placement[] {
    const out: Placement[] = [];
    for (const [key, entry] of this.#placements.view) {
      const p = this.#parse(entry.value, placementSchema, key);
      if (p) out.push(p);
    }
    return out;
  }

  placementKeysOf(app: string): string[] {
    return [...this.#placements.view.keys()].filter((k) => k.startsWith(this.#keys.appPlacements(app)));
  }

  status(app: string, version: string, cell: string): StoredValue<VersionCellStatus> | undefined {
    const entry = this.#statuses.get(this.#keys.status(app, version, cell));
    const value = this.#parse(entry?.value, versionCellStatusSchema, `${app}/${version}/${cell}`);
    return value && entry ? { value, modRevision: entry.modRevision } : undefined;
  }

  statusKeysOf(app: string): string[] {
    return [...this.#statuses.view.keys()].filter((k) => k.startsWith(this.#keys.appStatus(app)));
  }

  #parse<T>(
    raw: unknown,
    schema: { safeParse(v: unknown): { success: true; data: T } | { success: false } },
    what: string,
  ): T | undefined {
    if (raw === undefined) return undefined;
    const parsed = schema.safeParse(raw);
    if (!parsed.success) {
      this.#logger.warn({ what }, 'stored value does not match its schema; ignored');
      return undefined;
    }
    return parsed.data;
  }
}
