/**
 * What the scheduler reads from etcd, kept current by list-then-watch: the region's apps, their
 * versions and their sealed secrets, the region's cells, and its own output (placements, status), so it never rewrites
 * what is already there.
 *
 * Values are validated once, when they arrive (a value that does not match its schema is left out
 * and logged once), and indexed by app, so a reconcile reads its inputs in O(its app) rather than
 * re-parsing the whole region: with a thousand versions that is the difference between
 * milliseconds and minutes.
 */
import type { Codec, Etcd3 } from '@berth/shared/etcd';
import { PrefixWatcher, type WatchChange } from '@berth/shared/etcd';
import type { BerthKeys } from '@berth/shared/keys';
import type { Logger } from '@berth/shared/logging';
import {
  type App,
  type Availability,
  appSchema,
  availabilitySchema,
  type Cell,
  cellSchema,
  type Placement,
  placementSchema,
  type Version,
  type VersionCellStatus,
  versionCellStatusSchema,
  versionSchema,
} from '@berth/shared/model';
import { type AppSecretRecord, appSecretRecordSchema } from '@berth/shared/secrets';
import type { z } from 'zod';

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
  /**
   * True for a change this scheduler wrote itself (the key at the revision its own commit made):
   * its own placement coming back through the watch triggers no second pass.
   */
  isOwnWrite?: (key: string, modRevision: number) => boolean;
};

/** Under `/apps/`: an app, one of its versions, or something the scheduler does not read (members). */
type AppsEntry =
  | { kind: 'app'; value: App }
  | { kind: 'version'; value: Version }
  | { kind: 'secret'; value: AppSecretRecord }
  | { kind: 'other' };

function schemaCodec<T>(schema: z.ZodType<T>): Codec<T> {
  return {
    encode: (value) => JSON.stringify(value),
    decode: (raw) => schema.parse(JSON.parse(raw)),
  };
}

export class DesiredState {
  readonly #keys: BerthKeys;
  readonly #region: string;
  readonly #apps: PrefixWatcher<AppsEntry>;
  readonly #cells: PrefixWatcher<Cell>;
  readonly #placements: PrefixWatcher<Placement>;
  readonly #statuses: PrefixWatcher<VersionCellStatus>;
  readonly #availability: PrefixWatcher<Availability>;
  /** app → version name → version. */
  readonly #versions = new Map<string, Map<string, Version>>();
  /** app → version name → placement. */
  readonly #placementsByApp = new Map<string, Map<string, StoredValue<Placement>>>();
  /** app → secret name → its sealed record; the map is replaced on every change (a new identity). */
  readonly #secrets = new Map<string, ReadonlyMap<string, AppSecretRecord>>();
  /** app → status keys. */
  readonly #statusKeys = new Map<string, Set<string>>();

  constructor(options: DesiredStateOptions) {
    const { etcd, keys, logger } = options;
    this.#keys = keys;
    this.#region = options.region;
    const appsPrefix = keys.apps();
    const appsCodec: Codec<AppsEntry> = {
      encode: (entry) => JSON.stringify(entry.kind === 'other' ? null : entry.value),
      decode: (raw, key) => {
        if (keys.parse('app', key)) return { kind: 'app', value: appSchema.parse(JSON.parse(raw)) };
        if (keys.parse('version', key)) return { kind: 'version', value: versionSchema.parse(JSON.parse(raw)) };
        if (keys.parse('appSecret', key))
          return { kind: 'secret', value: appSecretRecordSchema.parse(JSON.parse(raw)) };
        return { kind: 'other' };
      },
    };
    this.#apps = new PrefixWatcher({
      client: etcd,
      prefix: appsPrefix,
      codec: appsCodec,
      logger,
      onChange: (change) => {
        const v = keys.parse('version', change.key);
        if (v) {
          const versions = this.#versions.get(v.app) ?? new Map<string, Version>();
          if (change.type === 'put' && change.value.kind === 'version') versions.set(v.version, change.value.value);
          else versions.delete(v.version);
          if (versions.size > 0) this.#versions.set(v.app, versions);
          else this.#versions.delete(v.app);
          options.onAppChange(v.app);
          return;
        }
        const sec = keys.parse('appSecret', change.key);
        if (sec) {
          const records = new Map(this.#secrets.get(sec.app));
          if (change.type === 'put' && change.value.kind === 'secret') records.set(sec.name, change.value.value);
          else records.delete(sec.name);
          if (records.size > 0) this.#secrets.set(sec.app, records);
          else this.#secrets.delete(sec.app);
          options.onAppChange(sec.app);
          return;
        }
        // The app itself; members and the like are nothing the scheduler acts on.
        const a = keys.parse('app', change.key);
        if (a) options.onAppChange(a.app);
      },
    });
    this.#placements = new PrefixWatcher({
      client: etcd,
      prefix: keys.placements(),
      codec: schemaCodec(placementSchema),
      logger,
      onChange: (change) => {
        const parts = keys.parse('placement', change.key);
        if (!parts) return;
        const { app, version } = parts;
        const byVersion = this.#placementsByApp.get(app) ?? new Map<string, StoredValue<Placement>>();
        if (change.type === 'put') byVersion.set(version, { value: change.value, modRevision: change.modRevision });
        else byVersion.delete(version);
        if (byVersion.size > 0) this.#placementsByApp.set(app, byVersion);
        else this.#placementsByApp.delete(app);
        if (change.type === 'put' && options.isOwnWrite?.(change.key, change.modRevision)) return;
        options.onAppChange(app);
      },
    });
    this.#statuses = new PrefixWatcher({
      client: etcd,
      prefix: keys.statuses(),
      codec: schemaCodec(versionCellStatusSchema),
      logger,
      onChange: (change) => {
        const app = keys.parse('status', change.key)?.app;
        if (!app) return;
        const set = this.#statusKeys.get(app) ?? new Set<string>();
        if (change.type === 'put') set.add(change.key);
        else set.delete(change.key);
        if (set.size > 0) this.#statusKeys.set(app, set);
        else this.#statusKeys.delete(app);
      },
    });
    this.#availability = new PrefixWatcher({
      client: etcd,
      prefix: keys.availabilities(),
      codec: schemaCodec(availabilitySchema),
      logger,
      onChange: () => undefined,
    });
    this.#cells = new PrefixWatcher({
      client: etcd,
      prefix: keys.cells(options.region),
      codec: schemaCodec(cellSchema),
      logger,
      onChange: (change: WatchChange<Cell>) => {
        // Only the cells themselves, not anything nested under a cell's key.
        if (keys.parse('cell', change.key)) options.onCellsChange();
      },
    });
  }

  async start(): Promise<void> {
    await Promise.all([
      this.#apps.start(),
      this.#cells.start(),
      this.#placements.start(),
      this.#statuses.start(),
      this.#availability.start(),
    ]);
  }

  async stop(): Promise<void> {
    await Promise.all([
      this.#apps.stop(),
      this.#cells.stop(),
      this.#placements.stop(),
      this.#statuses.stop(),
      this.#availability.stop(),
    ]);
  }

  /** Apps to reconcile: the region's apps, and every app this scheduler has placed (to remove them). */
  appNames(): string[] {
    const names = new Set<string>(this.#placementsByApp.keys());
    for (const [key, entry] of this.#apps.view) {
      const app = this.#keys.parse('app', key)?.app;
      if (app && entry.value.kind === 'app' && entry.value.value.region === this.#region) names.add(app);
    }
    return [...names].sort();
  }

  /** The app, when it exists and belongs to this region. */
  app(name: string): App | undefined {
    const entry = this.#apps.get(this.#keys.app(name))?.value;
    return entry?.kind === 'app' && entry.value.region === this.#region ? entry.value : undefined;
  }

  /** The app's versions, oldest first. */
  versions(app: string): Version[] {
    return [...(this.#versions.get(app)?.values() ?? [])].sort((a, b) => a.number - b.number);
  }

  /** The app's secrets (sealed), by name; the same map until one of them changes. */
  secretsOf(app: string): ReadonlyMap<string, AppSecretRecord> | undefined {
    return this.#secrets.get(app);
  }

  version(app: string, version: string): Version | undefined {
    return this.#versions.get(app)?.get(version);
  }

  cells(): Cell[] {
    const out: Cell[] = [];
    for (const [key, entry] of this.#cells.view) if (this.#keys.parse('cell', key)) out.push(entry.value);
    return out.sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  placement(app: string, version: string): StoredValue<Placement> | undefined {
    return this.#placementsByApp.get(app)?.get(version);
  }

  /** Every stored placement. */
  *placements(): Generator<{ app: string; version: string; stored: StoredValue<Placement> }> {
    for (const [app, byVersion] of this.#placementsByApp) {
      for (const [version, stored] of byVersion) yield { app, version, stored };
    }
  }

  placementsOf(app: string): Map<string, StoredValue<Placement>> {
    return this.#placementsByApp.get(app) ?? new Map();
  }

  status(app: string, version: string, cell: string): StoredValue<VersionCellStatus> | undefined {
    const entry = this.#statuses.get(this.#keys.status(app, version, cell));
    return entry ? { value: entry.value, modRevision: entry.modRevision } : undefined;
  }

  statusKeysOf(app: string): string[] {
    return [...(this.#statusKeys.get(app) ?? [])];
  }

  availability(app: string, version: string): StoredValue<Availability> | undefined {
    const entry = this.#availability.get(this.#keys.availability(app, version));
    return entry ? { value: entry.value, modRevision: entry.modRevision } : undefined;
  }

  /** The availability keys of an app's versions (for removal). */
  availabilityKeysOf(app: string): string[] {
    const prefix = this.#keys.appAvailability(app);
    const out: string[] = [];
    for (const key of this.#availability.view.keys()) if (key.startsWith(prefix)) out.push(key);
    return out;
  }
}
