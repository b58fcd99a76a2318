/**
 * Per-config caches under `<data>/cache/<configId>/` (mounted at /cache in the compile
 * container, HOME=/cache/home): one build of a config at a time uses its cache, its last use is a
 * marker file's mtime, and past the budget the least recently used caches not in use are deleted.
 * A config with its cache off gets a fresh temporary dir, deleted after the run. A cache can be
 * cleared on request; one a build holds is dropped when that build releases it.
 */
import { mkdir, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '@berth/shared/logging';

const MARKER = '.berth-last-used';

export type CacheLease = {
  dir: string;
  /** True when the config's cache existed and held something before this run. */
  hit: boolean;
  release(): Promise<void>;
};

/** What clearing a config's cache did: the bytes it held, and whether a build holds it now. */
export type ClearedCache = { freedBytes: number; deferred: boolean };

export type BuildCacheOptions = { dir: string; tmpDir: string; budgetBytes: number; logger: Logger };

/** Bytes under a directory (files only; a file that vanishes meanwhile counts 0). */
export async function directoryBytes(dir: string): Promise<number> {
  let total = 0;
  let entries: import('node:fs').Dirent[];
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) total += await directoryBytes(p);
    else if (e.isFile())
      total += await stat(p).then(
        (s) => s.size,
        () => 0,
      );
  }
  return total;
}

export class BuildCache {
  readonly #o: BuildCacheOptions;
  readonly #inUse = new Set<string>();
  /** Per config: the lease holder's release, awaited by the next one. */
  readonly #locks = new Map<string, Promise<void>>();
  /** Configs whose cache is dropped when the build holding it releases it. */
  readonly #clearOnRelease = new Set<string>();
  #bytes = 0;

  constructor(options: BuildCacheOptions) {
    this.#o = options;
  }

  /** Total bytes of the caches, as of the last measure. */
  get bytes(): number {
    return this.#bytes;
  }

  /** The cache of a config (waits while another build of it uses it), or a fresh dir when off. */
  async acquire(configId: string, enabled: boolean, runId: string): Promise<CacheLease> {
    if (!enabled) {
      const dir = join(this.#o.tmpDir, `cache-${runId}-${Date.now().toString(36)}`);
      await mkdir(join(dir, 'home'), { recursive: true });
      return { dir, hit: false, release: () => rm(dir, { recursive: true, force: true }) };
    }
    const unlock = await this.#lock(configId);
    this.#inUse.add(configId);
    const dir = join(this.#o.dir, configId);
    const before = await readdir(dir).catch(() => [] as string[]);
    const hit = before.some((name) => name !== MARKER && name !== 'home') || (await hasEntries(join(dir, 'home')));
    await mkdir(join(dir, 'home'), { recursive: true });
    await this.#touch(dir);
    return {
      dir,
      hit,
      release: async () => {
        if (this.#clearOnRelease.delete(configId)) {
          // Cleared while this build held it: dropped before the next build of the config gets it.
          await rm(dir, { recursive: true, force: true }).catch((err: unknown) =>
            this.#o.logger.warn({ err, config: configId }, 'cleared cache not removed'),
          );
          this.#o.logger.info({ config: configId }, 'cache cleared after the build that held it');
        } else {
          await this.#touch(dir).catch(() => undefined);
        }
        this.#inUse.delete(configId);
        unlock();
        await this.evict().catch((err: unknown) => this.#o.logger.warn({ err }, 'cache eviction failed'));
      },
    };
  }

  /**
   * Drops a config's cache. When a build holds it (or waits for it), it is dropped when that
   * build releases it (`deferred`); `freedBytes` is what it holds now (0: there is none).
   */
  async clear(configId: string): Promise<ClearedCache> {
    const dir = join(this.#o.dir, configId);
    if (this.#locks.has(configId)) {
      this.#clearOnRelease.add(configId);
      return { freedBytes: await directoryBytes(dir), deferred: true };
    }
    const unlock = await this.#lock(configId);
    try {
      const freedBytes = await directoryBytes(dir);
      await rm(dir, { recursive: true, force: true });
      this.#bytes = Math.max(0, this.#bytes - freedBytes);
      return { freedBytes, deferred: false };
    } finally {
      // A clear asked meanwhile is done by this one.
      this.#clearOnRelease.delete(configId);
      unlock();
    }
  }

  /** Measures every cache and deletes the least recently used (not in use) past the budget. */
  async evict(): Promise<{ bytes: number; evicted: string[] }> {
    const names = await readdir(this.#o.dir).catch(() => [] as string[]);
    const caches = await Promise.all(
      names.map(async (name) => {
        const dir = join(this.#o.dir, name);
        const lastUsed = await stat(join(dir, MARKER)).then(
          (s) => s.mtimeMs,
          () => 0,
        );
        return { name, dir, lastUsed, bytes: await directoryBytes(dir) };
      }),
    );
    let total = caches.reduce((sum, c) => sum + c.bytes, 0);
    const evicted: string[] = [];
    for (const c of caches.sort((a, b) => a.lastUsed - b.lastUsed)) {
      if (total <= this.#o.budgetBytes) break;
      if (this.#inUse.has(c.name)) continue;
      await rm(c.dir, { recursive: true, force: true });
      total -= c.bytes;
      evicted.push(c.name);
      this.#o.logger.info({ config: c.name, bytes: c.bytes }, 'cache evicted (least recently used)');
    }
    this.#bytes = total;
    return { bytes: total, evicted };
  }

  /** Waits for the config's cache, then holds it until the returned function is called. */
  async #lock(configId: string): Promise<() => void> {
    const previous = this.#locks.get(configId) ?? Promise.resolve();
    let unlock!: () => void;
    const mine = new Promise<void>((r) => {
      unlock = r;
    });
    const chained = previous.then(() => mine);
    this.#locks.set(configId, chained);
    await previous;
    return () => {
      if (this.#locks.get(configId) === chained) this.#locks.delete(configId);
      unlock();
    };
  }

  async #touch(dir: string): Promise<void> {
    const marker = join(dir, MARKER);
    const now = new Date();
    await utimes(marker, now, now).catch(() => writeFile(marker, ''));
  }
}

async function hasEntries(dir: string): Promise<boolean> {
  return (await readdir(dir).catch(() => [] as string[])).length > 0;
}
