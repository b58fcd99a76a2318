import { describe, expect, it } from 'vitest';
import { CellHealthTracker, type CellObservation } from './health.ts';

const GRACE = 10_000;
const HOLD = 5_000;
const up: CellObservation = { known: true, reachable: true, cordoned: false };
const down: CellObservation = { known: true, reachable: false, cordoned: false };

function tracker() {
  let now = 1_000_000;
  const t = new CellHealthTracker({ graceMs: GRACE, holdMs: HOLD, now: () => now });
  return {
    t,
    /** Moves the clock by `ms` and observes the cell. */
    at: (ms: number, obs: CellObservation) => {
      now += ms;
      t.observe('cell-a', obs);
      return t.health('cell-a');
    },
  };
}

describe('cell health', () => {
  it('is unknown until observed; a reachable cell is ok at once', () => {
    const { t, at } = tracker();
    expect(t.health('cell-a')).toBeUndefined();
    expect(at(0, up)).toBe('ok');
  });

  it('ok → suspect after a failed probe → out past the grace → suspect for the hold → ok', () => {
    const { at } = tracker();
    expect(at(0, up)).toBe('ok');
    expect(at(500, down)).toBe('suspect');
    expect(at(GRACE, down)).toBe('suspect'); // exactly the grace: not past it yet
    expect(at(1, down)).toBe('out');
    expect(at(60_000, down)).toBe('out');
    // Back: held as suspect (keeps what runs, gets nothing new) for the whole hold.
    expect(at(1, up)).toBe('suspect');
    expect(at(HOLD - 1, up)).toBe('suspect');
    expect(at(1, up)).toBe('ok');
  });

  it('a blink shorter than the grace moves nothing and needs no hold', () => {
    const { t, at } = tracker();
    at(0, up);
    expect(at(500, down)).toBe('suspect');
    expect(at(GRACE - 1000, down)).toBe('suspect');
    expect(at(1, up)).toBe('ok');
    expect(t.observe('cell-a', up)).toBeUndefined();
  });

  it('a cell that flaps during the hold starts the hold again when it comes back', () => {
    const { at } = tracker();
    at(0, up);
    at(1, down);
    expect(at(GRACE + 1, down)).toBe('out');
    expect(at(1, up)).toBe('suspect');
    expect(at(HOLD - 1000, up)).toBe('suspect');
    expect(at(1, down)).toBe('suspect'); // down again within the grace: still only suspect
    expect(at(1, up)).toBe('suspect'); // back: a fresh hold, since it was out
    expect(at(HOLD - 1, up)).toBe('suspect');
    expect(at(1, up)).toBe('ok');
  });

  it('a cordoned cell or one without a client is out, whatever its reachability', () => {
    const { at } = tracker();
    expect(at(0, { ...up, cordoned: true })).toBe('out');
    expect(at(1, up)).toBe('ok'); // uncordoned: it never was unreachable, so no hold
    expect(at(1, { known: false, reachable: false, cordoned: false })).toBe('out');
  });

  it('reports each change once, with where it came from', () => {
    let now = 0;
    const t = new CellHealthTracker({ graceMs: GRACE, holdMs: HOLD, now: () => now });
    expect(t.observe('cell-a', up)).toEqual({ cell: 'cell-a', from: 'suspect', to: 'ok' });
    expect(t.observe('cell-a', up)).toBeUndefined();
    now += 1;
    expect(t.observe('cell-a', down)).toEqual({ cell: 'cell-a', from: 'ok', to: 'suspect' });
    now += GRACE + 1;
    expect(t.observe('cell-a', down)).toEqual({ cell: 'cell-a', from: 'suspect', to: 'out' });
    t.forget('cell-a');
    expect(t.health('cell-a')).toBeUndefined();
  });
});
