/**
 * One app's load-balancer state as the API keeps it, and the ops that keep its copies true:
 *
 * - the app's domain claims (`/berth/domains/{domain}` holding `{app, group}`), whose groups are
 *   the groups the app is served by;
 * - its traffic record (`/berth/apps/{app}/traffic`), copied to `/slb/{group}/traffic/{app}` for
 *   each of those groups, because an lb-agent watches its own group's tree only;
 * - its guard (`/berth/apps/{app}/lb-guard`), bumped by every domain or traffic write of the app,
 *   so two such writes (on two API replicas) never both commit on the same reading of the
 *   claims: the later one's compare fails and it plans again.
 *
 * Domains, traffic, rollback, version and app deletion all write through these, in the same
 * transaction as their own change.
 */
import {
  type DomainClaim,
  domainClaimSchema,
  type LbGroup,
  lbGroupSchema,
  type Traffic,
  trafficSchema,
} from '@berth/shared/model';
import type { Op, Stored } from '@berth/shared/store';
import { z } from 'zod';
import { type ApiContext, now } from './context.ts';

const guardSchema = z.object({ bumpedAt: z.string() });

export type AppLbState = {
  app: string;
  /** The app's domain claims, by domain name. */
  claims: Stored<DomainClaim>[];
  traffic: Stored<Traffic> | undefined;
  /** The guard's mod revision (0: absent). */
  guardRevision: number;
};

export class AppLb {
  readonly #ctx: ApiContext;

  constructor(ctx: ApiContext) {
    this.#ctx = ctx;
  }

  async read(app: string): Promise<AppLbState> {
    const { store, keys } = this.#ctx;
    const [claims, traffic, guard] = await Promise.all([
      // One range over every claim: a few thousand domains per installation is one small read.
      store.list(keys.domainClaims(), domainClaimSchema, { directChildrenOnly: true }),
      store.get(keys.traffic(app), trafficSchema),
      store.get(keys.lbGuard(app), guardSchema),
    ]);
    return {
      app,
      claims: claims.filter((c) => c.value.app === app),
      traffic,
      guardRevision: guard?.modRevision ?? 0,
    };
  }

  async group(name: string): Promise<Stored<LbGroup> | undefined> {
    return this.#ctx.store.get(this.#ctx.keys.lbGroup(name), lbGroupSchema);
  }

  /** The groups the app has a domain in, given its claims. */
  static groups(claims: readonly DomainClaim[]): Set<string> {
    return new Set(claims.map((c) => c.group));
  }

  /** Bumps the guard, compared at the revision `state` read it at. */
  guardOp(state: AppLbState): Op {
    const key = this.#ctx.keys.lbGuard(state.app);
    const value = { bumpedAt: now() };
    return state.guardRevision === 0
      ? { op: 'create', key, value }
      : { op: 'update', key, value, modRevision: state.guardRevision };
  }

  /** For a write that reads the app's traffic but does not change it: it must still be as read. */
  guardExpect(state: AppLbState): Op {
    return { op: 'expect', key: this.#ctx.keys.lbGuard(state.app), modRevision: state.guardRevision };
  }

  /**
   * Ops that make the per-group traffic copies match after a change: `traffic` is the app's
   * traffic after it (undefined: none), `before` and `after` the groups the app has domains in.
   * With `trafficChanged`, every group of `after` gets the new copy; otherwise only groups the
   * app just entered do, and groups it left lose theirs.
   */
  trafficCopyOps(
    app: string,
    traffic: Traffic | undefined,
    before: ReadonlySet<string>,
    after: ReadonlySet<string>,
    trafficChanged: boolean,
  ): Op[] {
    const { keys } = this.#ctx;
    const ops: Op[] = [];
    for (const group of after) {
      if (traffic && (trafficChanged || !before.has(group))) {
        ops.push({ op: 'put', key: keys.slbTraffic(group, app), value: traffic });
      }
    }
    for (const group of before) {
      if (!after.has(group)) ops.push({ op: 'delete', key: keys.slbTraffic(group, app) });
    }
    return ops;
  }

  /**
   * Everything of the app outside its own key prefix, for deleting the app: its domain claims,
   * its domains in each group and its traffic copies. (Its traffic record and guard are under
   * the app's prefix and go with it.) Compared on the guard, so a domain bound meanwhile is not
   * left behind.
   */
  removeAllOps(state: AppLbState): Op[] {
    const { keys } = this.#ctx;
    const ops: Op[] = [this.guardExpect(state)];
    for (const claim of state.claims) {
      ops.push({ op: 'delete', key: claim.key, modRevision: claim.modRevision });
      ops.push({ op: 'delete', key: keys.slbDomain(claim.value.group, claim.value.domain) });
    }
    for (const group of AppLb.groups(state.claims.map((c) => c.value))) {
      ops.push({ op: 'delete', key: keys.slbTraffic(group, state.app) });
    }
    return ops;
  }
}
