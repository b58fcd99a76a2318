/**
 * How routing documents reach nginx. The agent only knows this interface; the production path is
 * `LuaRouteApplier` (the control socket, no reload). test/bench/traffic.ts puts a
 * reload-per-change applier behind the same interface to measure what the Lua path saves.
 */
import type { ControlClient, LuaRoutes, PushResult } from '../nginx/control-client.ts';
import type { RoutingDocument } from './document.ts';

export type RouteApplier = {
  /** Makes nginx route `doc.app` by `doc`; `body` is `doc` as JSON (its md5 is the digest). */
  push(doc: RoutingDocument, body: string, options?: { force?: boolean }): Promise<PushResult>;
  /** The app routes nowhere (503). */
  remove(app: string, revision: number, options?: { force?: boolean }): Promise<PushResult>;
  /** What nginx holds, for the digest check and restart detection. */
  routes(): Promise<LuaRoutes>;
};

export class LuaRouteApplier implements RouteApplier {
  readonly #control: ControlClient;

  constructor(control: ControlClient) {
    this.#control = control;
  }

  push(doc: RoutingDocument, body: string, options: { force?: boolean } = {}): Promise<PushResult> {
    return this.#control.push(doc.app, body, options);
  }

  remove(app: string, revision: number, options: { force?: boolean } = {}): Promise<PushResult> {
    return this.#control.remove(app, revision, options);
  }

  routes(): Promise<LuaRoutes> {
    return this.#control.routes();
  }
}
