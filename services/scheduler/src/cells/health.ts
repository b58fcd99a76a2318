/**
 * Each cell's health, with a grace and hysteresis, as a pure state machine (the clock is injected):
 *
 * - ok: replicas are placed here.
 * - suspect: unreachable for less than the grace, or back from an outage for less than the hold:
 *   what runs there stays, nothing is added. A blink shorter than the grace moves nothing.
 * - out: cordoned, no usable kubeconfig, or unreachable past the grace: its replicas go elsewhere.
 *   A cell that was out is trusted again only after it stayed reachable for the whole hold, so a
 *   flapping cell does not pull replicas back and forth.
 */
import type { CellHealth } from '../placement/place.ts';

export type CellObservation = {
  /** The scheduler has a client for the cell (a kubeconfig it could load). */
  known: boolean;
  reachable: boolean;
  cordoned: boolean;
};

export type HealthChange = { cell: string; from: CellHealth; to: CellHealth };

type Tracker = { health: CellHealth; unreachableSince?: number; reachableSince?: number; wasOut: boolean };

export type CellHealthOptions = {
  /** A cell unreachable this long is out. */
  graceMs: number;
  /** A cell back from being out must stay reachable this long before it is ok again. */
  holdMs: number;
  now?: () => number;
};

export class CellHealthTracker {
  readonly #o: CellHealthOptions;
  readonly #now: () => number;
  readonly #trackers = new Map<string, Tracker>();

  constructor(options: CellHealthOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
  }

  /** The cell's health as last evaluated; undefined for a cell never observed (or forgotten). */
  health(cell: string): CellHealth | undefined {
    return this.#trackers.get(cell)?.health;
  }

  /** Evaluates one cell now; returns the change, if its health changed. */
  observe(cell: string, obs: CellObservation): HealthChange | undefined {
    const now = this.#now();
    // A cell seen for the first time starts as suspect: it becomes ok on its first reachable look.
    const t = this.#trackers.get(cell) ?? { health: 'suspect', wasOut: false };
    let health: CellHealth;
    if (!obs.known) {
      health = 'out';
    } else if (!obs.reachable) {
      t.unreachableSince ??= now;
      t.reachableSince = undefined;
      if (now - t.unreachableSince > this.#o.graceMs) {
        t.wasOut = true;
        health = 'out';
      } else {
        health = 'suspect';
      }
    } else {
      t.unreachableSince = undefined;
      t.reachableSince ??= now;
      if (t.wasOut && now - t.reachableSince < this.#o.holdMs) {
        health = 'suspect';
      } else {
        t.wasOut = false;
        health = 'ok';
      }
    }
    if (obs.cordoned) health = 'out';
    const from = t.health;
    t.health = health;
    this.#trackers.set(cell, t);
    return from === health ? undefined : { cell, from, to: health };
  }

  forget(cell: string): void {
    this.#trackers.delete(cell);
  }

  clear(): void {
    this.#trackers.clear();
  }
}
