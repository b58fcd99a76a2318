/**
 * Requests per app and version within a recent window (docs/traffic.md, "Requests per version"):
 * Lua counts every request since nginx started; this keeps, in memory, a snapshot of those
 * counters every `intervalMs` for the last `keepMs` (a ring), and answers a window as the counts
 * now minus the snapshot taken at or before now − window. When the window reaches further back
 * than the ring, the counts are since nginx started.
 *
 * nginx restarting empties Lua's counters. The snapshots hold running totals that never go down:
 * each reading adds what grew since the last one, and a counter that went down (or a new boot id)
 * is a reset, whose value since the reset is added whole. So a window across a restart counts the
 * requests on both sides of it.
 */
import type { Logger } from '@berth/shared/logging';
import type { LuaStats } from '../nginx/control-client.ts';

export const STATUS_CLASSES = ['2xx', '3xx', '4xx', '5xx'] as const;
export type StatusClass = (typeof STATUS_CLASSES)[number];
export type RequestCounts = { total: number } & Record<StatusClass, number>;

/** One reading of Lua's counters: its boot id (a new one: nginx restarted) and its stats. */
export type CounterReading = { boot?: string | undefined; stats: LuaStats };

export type RequestWindowOptions = {
  read: () => Promise<CounterReading>;
  logger: Logger;
  /** How often a snapshot is kept. Default 10 s. */
  intervalMs?: number;
  /** How far back snapshots are kept. Default 1 h. */
  keepMs?: number;
  now?: () => number;
};

export type WindowAnswer = {
  /** The window asked for, in seconds. */
  windowSeconds: number;
  /** Where the counts start: the snapshot's time, or null when they are since nginx started. */
  from: string | null;
  to: string;
  /** Per app and version, requests within the window (versions with none left out). */
  apps: Record<string, Record<string, RequestCounts>>;
};

type Totals = Map<string, RequestCounts>;
type Snapshot = { at: number; totals: Totals };

const SEP = '\u0000';

export class RequestWindow {
  readonly #o: Required<Omit<RequestWindowOptions, 'logger'>>;
  readonly #log: Logger;
  /** Oldest first. */
  readonly #ring: Snapshot[] = [];
  /** Lua's raw counters as last read, and the running totals built from them. */
  #raw: Totals = new Map();
  #boot: string | undefined;
  readonly #totals: Totals = new Map();
  #reading: Promise<void> = Promise.resolve();
  #timer: NodeJS.Timeout | undefined;

  constructor(options: RequestWindowOptions) {
    this.#o = {
      read: options.read,
      intervalMs: options.intervalMs ?? 10_000,
      keepMs: options.keepMs ?? 3_600_000,
      now: options.now ?? Date.now,
    };
    this.#log = options.logger.child({ component: 'request-window' });
  }

  /** Takes the first snapshot (nginx not answering is logged, not thrown), then one per interval. */
  async start(): Promise<void> {
    if (this.#timer) return;
    await this.snapshot().catch((err) => this.#log.warn({ err }, 'no first snapshot of the request counters'));
    this.#timer = setInterval(
      () => void this.snapshot().catch((err) => this.#log.warn({ err }, 'request counters not read')),
      this.#o.intervalMs,
    );
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** Reads the counters and keeps the totals as a snapshot (dropping those older than `keepMs`). */
  async snapshot(): Promise<void> {
    await this.#advance();
    const at = this.#o.now();
    this.#ring.push({ at, totals: copy(this.#totals) });
    while (this.#ring.length > 0 && (this.#ring[0] as Snapshot).at < at - this.#o.keepMs) this.#ring.shift();
  }

  /** Requests within the last `windowMs`, read from Lua now; `app` narrows the answer to one app. */
  async requests(windowMs: number, app?: string): Promise<WindowAnswer> {
    await this.#advance();
    const now = this.#o.now();
    let base: Snapshot | undefined;
    for (const s of this.#ring) {
      if (s.at > now - windowMs) break;
      base = s;
    }
    const apps: WindowAnswer['apps'] = {};
    for (const [key, total] of this.#totals) {
      const [a, version] = key.split(SEP) as [string, string];
      if (app !== undefined && a !== app) continue;
      const before = base?.totals.get(key);
      const counts = subtract(total, before);
      if (counts.total === 0 && STATUS_CLASSES.every((c) => counts[c] === 0)) continue;
      apps[a] ??= {};
      apps[a][version] = counts;
    }
    return {
      windowSeconds: Math.round(windowMs / 1000),
      from: base ? new Date(base.at).toISOString() : null,
      to: new Date(now).toISOString(),
      apps,
    };
  }

  /** Reads Lua once and adds what grew to the running totals; readings never interleave. */
  #advance(): Promise<void> {
    const next = this.#reading.then(async () => {
      const reading = await this.#o.read();
      const raw = flatten(reading.stats);
      const restarted = this.#boot !== undefined && reading.boot !== undefined && reading.boot !== this.#boot;
      if (restarted) this.#log.info({ boot: reading.boot }, 'nginx restarted: its counters start again from zero');
      for (const [key, now] of raw) {
        const last = restarted ? undefined : this.#raw.get(key);
        const total = this.#totals.get(key) ?? zero();
        for (const field of ['total', ...STATUS_CLASSES] as const) {
          const was = last?.[field] ?? 0;
          // Down means a reset: everything counted since is new.
          total[field] += now[field] >= was ? now[field] - was : now[field];
        }
        this.#totals.set(key, total);
      }
      this.#raw = raw;
      if (reading.boot !== undefined) this.#boot = reading.boot;
    });
    this.#reading = next.catch(() => undefined);
    return next;
  }
}

function flatten(stats: LuaStats): Totals {
  const out: Totals = new Map();
  for (const [app, versions] of Object.entries(stats.apps ?? {})) {
    for (const [version, v] of Object.entries(versions)) {
      const counts: RequestCounts = { total: v.requests ?? 0, '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0 };
      for (const c of STATUS_CLASSES) counts[c] = v.status?.[c] ?? 0;
      out.set(`${app}${SEP}${version}`, counts);
    }
  }
  return out;
}

function zero(): RequestCounts {
  return { total: 0, '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0 };
}

function copy(totals: Totals): Totals {
  return new Map([...totals].map(([k, v]) => [k, { ...v }]));
}

function subtract(a: RequestCounts, b: RequestCounts | undefined): RequestCounts {
  const out = { ...a };
  if (!b) return out;
  for (const field of ['total', ...STATUS_CLASSES] as const) out[field] = a[field] - b[field];
  return out;
}

/** `15m`, `30s`, `2h` as milliseconds; undefined when it is not one. */
export function parseWindow(text: string): number | undefined {
  const m = /^(\d{1,5})([smh])$/.exec(text);
  if (!m) return undefined;
  return Number(m[1]) * { s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 's' | 'm' | 'h'];
}
