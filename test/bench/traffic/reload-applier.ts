/**
 * The traffic benchmark's baseline (issue 11): routes applied the way a plain nginx controller
 * does, by a reload per change. Behind the agent's `RouteApplier` interface, so the agent, its
 * etcd watch and its coalescing are the same as on the Lua path; only how a document reaches
 * nginx differs:
 *
 * - each app port's upstream block lists its real peers (`server 127.0.0.1:PORT;`), rendered from
 *   the latest document the agent pushed for that app;
 * - server blocks are the shared renderer's without the `access_by_lua_block` line (no Lua picks
 *   a version or a peer: nginx's own round-robin does);
 * - every push renders the whole config, runs `nginx -t` and reloads, through the same
 *   `NginxConfigManager` the agent uses for domains. Pushes that arrive while a reload runs share
 *   the next one (as a controller coalesces a burst), and the manager's calls are serialized, so
 *   the agent's own domain syncs never interleave with them.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { Domain } from '@berth/shared/model';
import { type RenderOptions, renderServer, upstreamName } from '@berth/shared/nginx';
import {
  type ApplyOutcome,
  type ConfigManagerOptions,
  NginxConfigManager,
} from '../../../services/lb-agent/src/nginx/config-manager.ts';
import type { LuaRoutes, PushResult } from '../../../services/lb-agent/src/nginx/control-client.ts';
import type { RouteApplier } from '../../../services/lb-agent/src/routing/applier.ts';
import type { RoutingDocument } from '../../../services/lb-agent/src/routing/document.ts';

/** The agent's config manager with its calls in one queue, counting reloads and their time. */
export class SerializedConfigManager extends NginxConfigManager {
  #tail: Promise<unknown> = Promise.resolve();
  reloads = 0;
  readonly reloadMs: number[] = [];

  override apply(generation: number, wanted: ReadonlyMap<string, Domain>): Promise<ApplyOutcome> {
    return this.#serialized(() => this.#timed(() => super.apply(generation, wanted)));
  }

  /**
   * Renders and reloads what is served now, as a generation above the served one and at least
   * `floor()`; `floor` is called when the turn comes, so callers can coalesce until then.
   */
  reapply(floor: () => number): Promise<ApplyOutcome> {
    return this.#serialized(() =>
      this.#timed(() => super.apply(Math.max(floor(), this.servedGeneration + 1), this.served)),
    );
  }

  async #timed(fn: () => Promise<ApplyOutcome>): Promise<ApplyOutcome> {
    const t0 = performance.now();
    const outcome = await fn();
    if (outcome.reloaded) {
      this.reloads++;
      this.reloadMs.push(performance.now() - t0);
    }
    return outcome;
  }

  #serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(fn, fn);
    this.#tail = run.catch(() => undefined);
    return run;
  }
}

type Held = { doc: RoutingDocument; body: string; digest: string };

export class ReloadRouteApplier implements RouteApplier {
  readonly #docs = new Map<string, Held>();
  /** The documents the live config was rendered from. */
  #applied = new Map<string, Held>();
  readonly #boot = `reload-${randomUUID()}`;
  #config: SerializedConfigManager | undefined;
  #queued: Promise<void> | undefined;
  #want = 0;

  /** The applier and the config manager it reloads through (give the manager to the agent too). */
  static create(options: Omit<ConfigManagerOptions, 'renderers'>): {
    applier: ReloadRouteApplier;
    config: SerializedConfigManager;
  } {
    const applier = new ReloadRouteApplier();
    const config = new SerializedConfigManager({
      ...options,
      renderers: {
        upstream: (app, port, o) => applier.#renderUpstream(app, port, o),
        server: (d, o) => renderServerWithoutLua(d, o),
      },
    });
    applier.#config = config;
    return { applier, config };
  }

  async push(doc: RoutingDocument, body: string, options: { force?: boolean } = {}): Promise<PushResult> {
    const held = this.#docs.get(doc.app);
    if (held && held.doc.revision > doc.revision && !options.force) {
      return { ok: false, status: 409, error: 'stale', revision: held.doc.revision };
    }
    this.#docs.set(doc.app, { doc, body, digest: md5(body) });
    return this.#reload(doc.revision);
  }

  async remove(app: string, revision: number, options: { force?: boolean } = {}): Promise<PushResult> {
    const held = this.#docs.get(app);
    if (held && held.doc.revision > revision && !options.force) {
      return { ok: false, status: 409, error: 'stale', revision: held.doc.revision };
    }
    this.#docs.delete(app);
    return this.#reload(revision);
  }

  /** What the live config was rendered from, with Lua's digests (md5 of the body). */
  async routes(): Promise<LuaRoutes> {
    const apps: LuaRoutes['apps'] = {};
    for (const [app, h] of this.#applied) apps[app] = { revision: h.doc.revision, digest: h.digest, generation: 0 };
    return { boot: this.#boot, free: 0, apps };
  }

  async #reload(revision: number): Promise<PushResult> {
    this.#want = Math.max(this.#want, revision);
    if (!this.#queued) {
      const config = this.#config;
      if (!config) throw new Error('ReloadRouteApplier used before create()');
      let snapshot = new Map<string, Held>();
      this.#queued = config
        .reapply(() => {
          // From here on, a new push waits for the next reload.
          this.#queued = undefined;
          snapshot = new Map(this.#docs);
          return this.#want;
        })
        .then(() => {
          this.#applied = snapshot;
        });
    }
    try {
      await this.#queued;
      return { ok: true };
    } catch (err) {
      return { ok: false, status: 500, error: err instanceof Error ? err.message : String(err) };
    }
  }

  /** One app port's upstream with the peers of its latest document (nginx round-robin). */
  #renderUpstream(app: string, port: string, o: RenderOptions = {}): string {
    const doc = this.#docs.get(app)?.doc;
    const peers = Object.values(doc?.versions ?? {}).flat();
    const fresh = peers.filter((p) => !p.stale);
    const servers = (fresh.length > 0 ? fresh : peers)
      .filter((p) => p.ports[port] !== undefined)
      .map((p) => `    server ${p.address.includes(':') ? `[${p.address}]` : p.address}:${p.ports[port]};`);
    return [
      `# Berth bench baseline: app ${app}, port ${port}, peers rendered in (reload per change).`,
      `upstream ${upstreamName(app, port)} {`,
      ...(servers.length > 0 ? servers : ['    server 0.0.0.1:1; # no peer']),
      `    keepalive ${o.keepalive ?? 64};`,
      `    keepalive_timeout ${o.keepaliveTimeout ?? '50s'};`,
      '}',
      '',
    ].join('\n');
  }
}

/** The shared server block without the Lua access phase: nginx alone picks the peer. */
export function renderServerWithoutLua(domain: Domain, options?: RenderOptions): string {
  return renderServer(domain, options)
    .split('\n')
    .filter((line) => !line.includes('access_by_lua_block'))
    .join('\n');
}

function md5(text: string): string {
  return createHash('md5').update(text).digest('hex');
}
