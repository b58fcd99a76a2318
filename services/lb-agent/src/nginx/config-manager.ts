/**
 * Domain config, reloaded and guarded (docs/traffic.md): every change renders a new generation
 * directory (one file per domain and per app port's upstream), `nginx -t` checks the whole new
 * config, and only then is `live` swapped (one rename) and the master signalled; the generation is
 * reported applied once a worker answers it on the control socket.
 *
 * When the test fails, the running config stays, each changed domain is tried alone on top of
 * what is served, the ones that fail keep their last good config (or stay absent when new) with
 * nginx's message, and the rest still apply. Each generation keeps a manifest of the domains it
 * serves, so a restarted agent knows what "last good" is.
 */
import { execFile } from 'node:child_process';
import { mkdir, readdir, readFile, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Logger } from '@berth/shared/logging';
import type { Domain } from '@berth/shared/model';
import { type RenderOptions, renderServer, renderUpstream } from '@berth/shared/nginx';
import type { ControlClient } from './control-client.ts';
import { type MainConfOptions, paths, renderGenerationFile, renderMainConfig } from './main-conf.ts';

const run = promisify(execFile);

export type DomainFailure = { domain: string; message: string };

export type ApplyOutcome = {
  generation: number;
  /** What nginx serves now, by domain name. */
  served: ReadonlyMap<string, Domain>;
  /** Domains whose wanted config failed `nginx -t` (they keep their last good one). */
  failed: DomainFailure[];
  /** True when the whole wanted config passed `nginx -t`. */
  passed: boolean;
  reloaded: boolean;
};

export type ConfigManagerOptions = {
  nginxBin: string;
  /** The host's main config options; candidates are tested with the same config including their own directory. */
  main: MainConfOptions;
  control: ControlClient;
  logger: Logger;
  render?: RenderOptions;
  /**
   * What renders each file; default the shared renderer (Lua picks peers). The benchmark's
   * reload-per-change baseline renders upstreams with their servers instead.
   */
  renderers?: {
    upstream(app: string, port: string, options?: RenderOptions): string;
    server(domain: Domain, options?: RenderOptions): string;
  };
  /** How long a reload may take to show its generation on the control socket. Default 10 s. */
  confirmTimeoutMs?: number;
  /** Old generation directories kept besides the live one. Default 3. */
  keep?: number;
};

export class NginxConfigManager {
  readonly #o: ConfigManagerOptions;
  readonly #paths: ReturnType<typeof paths>;
  #served = new Map<string, Domain>();
  #servedGeneration = -1;
  #seq = 0;

  constructor(options: ConfigManagerOptions) {
    this.#o = options;
    this.#paths = paths(options.main.prefix);
  }

  get served(): ReadonlyMap<string, Domain> {
    return this.#served;
  }
  get servedGeneration(): number {
    return this.#servedGeneration;
  }

  /** Reads what the live generation serves (its manifest), so "last good" survives an agent restart. */
  async recover(): Promise<void> {
    try {
      const dir = await readlink(this.#paths.live);
      const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as {
        generation: number;
        domains: Domain[];
      };
      this.#served = new Map(manifest.domains.map((d) => [d.domain, d]));
      this.#servedGeneration = manifest.generation;
    } catch {
      // A new host (generation 0 has no manifest) or an unreadable one: nothing is served yet.
    }
  }

  /**
   * Makes nginx serve `wanted` as `generation`. Domains that fail keep what is served. Throws
   * only when nginx cannot be reloaded or the generation does not go live.
   */
  async apply(generation: number, wanted: ReadonlyMap<string, Domain>): Promise<ApplyOutcome> {
    const failed = new Map<string, string>();
    let candidate = new Map(wanted);
    let passed = true;
    let dir = await this.#write(generation, candidate, failed);
    let test = failed.size === 0 ? await this.#test(dir) : { ok: false, message: 'render failed' };
    if (!test.ok) {
      passed = false;
      // Find the culprits: each changed domain alone on top of what is served.
      const changed = [...wanted.values()].filter((d) => !sameDomain(this.#served.get(d.domain), d));
      for (const d of changed) {
        if (failed.has(d.domain)) continue;
        const trial = new Map(this.#served);
        trial.set(d.domain, d);
        const trialFailures = new Map<string, string>();
        const trialDir = await this.#write(generation, trial, trialFailures, 'try');
        const r = trialFailures.size
          ? { ok: false, message: trialFailures.get(d.domain) ?? '' }
          : await this.#test(trialDir);
        await rm(trialDir, { recursive: true, force: true });
        if (!r.ok) failed.set(d.domain, r.message);
      }
      candidate = new Map(wanted);
      for (const name of failed.keys()) {
        const good = this.#served.get(name);
        if (good) candidate.set(name, good);
        else candidate.delete(name);
      }
      await rm(dir, { recursive: true, force: true });
      const renderFailures = new Map<string, string>();
      dir = await this.#write(generation, candidate, renderFailures);
      test = renderFailures.size
        ? { ok: false, message: [...renderFailures.values()].join('; ') }
        : await this.#test(dir);
      if (!test.ok) {
        // The failures interact: keep serving exactly what is served, every change counted failed.
        this.#o.logger.warn({ message: test.message }, 'changes fail together; keeping the served config');
        for (const d of changed) if (!failed.has(d.domain)) failed.set(d.domain, test.message);
        for (const name of this.#served.keys()) if (!wanted.has(name)) failed.set(name, test.message);
        await rm(dir, { recursive: true, force: true });
        candidate = new Map(this.#served);
        dir = await this.#write(generation, candidate, new Map());
      }
    }
    const unchanged = this.#servedGeneration >= 0 && sameSet(this.#served, candidate);
    let reloaded = false;
    if (!unchanged || this.#servedGeneration !== generation) {
      await this.#swap(dir);
      await this.#reload(generation);
      reloaded = true;
      this.#servedGeneration = generation;
      this.#served = candidate;
      await this.#prune(dir);
    } else {
      await rm(dir, { recursive: true, force: true });
    }
    return {
      generation,
      served: this.#served,
      failed: [...failed].map(([domain, message]) => ({ domain, message })),
      passed,
      reloaded,
    };
  }

  /** Renders `domains` into a new directory; a domain that does not render is left out and put in `failures`. */
  async #write(
    generation: number,
    domains: ReadonlyMap<string, Domain>,
    failures: Map<string, string>,
    kind = 'gen',
  ): Promise<string> {
    const dir = join(this.#paths.generations, `${generation}.${kind}.${process.pid}.${++this.#seq}`);
    await mkdir(dir, { recursive: true });
    const files: [string, string][] = [['00-generation.conf', renderGenerationFile(generation)]];
    const upstreams = new Set<string>();
    const rendered: Domain[] = [];
    for (const d of [...domains.values()].sort((a, b) => (a.domain < b.domain ? -1 : 1))) {
      try {
        const server = (this.#o.renderers?.server ?? renderServer)(d, this.#o.render);
        const key = `${d.app}-${d.port}`;
        if (!upstreams.has(key)) {
          files.push([
            `10-upstream-${key}.conf`,
            (this.#o.renderers?.upstream ?? renderUpstream)(d.app, d.port, this.#o.render),
          ]);
          upstreams.add(key);
        }
        files.push([`20-domain-${d.domain}.conf`, server]);
        rendered.push(d);
      } catch (err) {
        failures.set(d.domain, err instanceof Error ? err.message : String(err));
      }
    }
    files.push(['manifest.json', JSON.stringify({ generation, domains: rendered })]);
    await Promise.all(files.map(([name, text]) => writeFile(join(dir, name), text)));
    return dir;
  }

  /** `nginx -t` of the host's main config including `dir` instead of `live`. */
  async #test(dir: string): Promise<{ ok: true } | { ok: false; message: string }> {
    const conf = `${dir}.nginx.conf`;
    await writeFile(conf, renderMainConfig({ ...this.#o.main, include: dir }));
    try {
      await run(this.#o.nginxBin, ['-t', '-q', '-p', this.#o.main.prefix, '-c', conf], { timeout: 60_000 });
      return { ok: true };
    } catch (err) {
      const stderr = String((err as { stderr?: string }).stderr ?? (err as Error).message);
      return { ok: false, message: nginxMessage(stderr, dir) };
    } finally {
      await rm(conf, { force: true });
    }
  }

  async #swap(dir: string): Promise<void> {
    const tmp = `${this.#paths.live}.${process.pid}.tmp`;
    await rm(tmp, { force: true });
    await symlink(dir, tmp);
    await rename(tmp, this.#paths.live);
  }

  /** Signals the master and waits until a worker answers the new generation on the control socket. */
  async #reload(generation: number): Promise<void> {
    const pid = Number((await readFile(this.#o.main.pidFile, 'utf8')).trim());
    if (!Number.isInteger(pid) || pid <= 0) throw new Error(`nginx pid file ${this.#o.main.pidFile} holds no pid`);
    process.kill(pid, 'SIGHUP');
    const deadline = Date.now() + (this.#o.confirmTimeoutMs ?? 10_000);
    let last: unknown;
    for (;;) {
      try {
        if ((await this.#o.control.generation()) === generation) return;
      } catch (err) {
        last = err;
      }
      if (Date.now() > deadline) {
        throw new Error(
          `nginx did not serve generation ${generation} within ${this.#o.confirmTimeoutMs ?? 10_000} ms` +
            (last instanceof Error ? `: ${last.message}` : ''),
        );
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Deletes old generation directories, keeping the live one and the newest few. */
  async #prune(live: string): Promise<void> {
    const keep = this.#o.keep ?? 3;
    const entries = (await readdir(this.#paths.generations).catch(() => [] as string[]))
      .filter((e) => /^\d+\.gen\./.test(e) && join(this.#paths.generations, e) !== live)
      .map((e) => ({ e, n: Number(e.split('.')[0]), s: Number(e.split('.').at(-1)) }))
      .sort((a, b) => b.n - a.n || b.s - a.s);
    await Promise.all(
      entries.slice(keep).map(({ e }) => rm(join(this.#paths.generations, e), { recursive: true, force: true })),
    );
  }
}

/** nginx's own words, without the paths of our temporary files. */
function nginxMessage(stderr: string, dir: string): string {
  const lines = stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !/test failed$/.test(l));
  return (lines.join('\n') || 'nginx -t failed').replaceAll(`${dir}/`, '').slice(0, 4000);
}

function sameDomain(a: Domain | undefined, b: Domain): boolean {
  if (!a) return false;
  const strip = ({ updatedAt: _u, createdAt: _c, ...rest }: Domain) => rest;
  return JSON.stringify(strip(a)) === JSON.stringify(strip(b));
}

function sameSet(a: ReadonlyMap<string, Domain>, b: ReadonlyMap<string, Domain>): boolean {
  if (a.size !== b.size) return false;
  for (const [name, d] of b) if (!sameDomain(a.get(name), d)) return false;
  return true;
}
