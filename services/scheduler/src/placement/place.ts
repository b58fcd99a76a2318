/**
 * Placement: how many replicas of one version go to each cell. A pure function of its input, so
 * it is deterministic, and stable by construction: it starts from the previous placement and
 * changes it by as few single-replica steps as the new input needs.
 *
 * 1. Cells are `ok` (take replicas), `suspect` (briefly unreachable, or just back: keep what runs
 *    there, add nothing) or `out` (cordoned, or unreachable past the grace: nothing stays).
 * 2. Start from the previous counts: `out` cells drop to 0, every cell to what still fits.
 * 3. Too many: take one at a time from the fullest cell (suspect cells first, then the one with the
 *    least headroom). Too few: add one at a time to the emptiest ok cell with room (ties: most
 *    headroom, then name).
 * 4. Even out: while an ok cell has two more than another ok cell with room, move one. This spreads
 *    replicas back after a cell returns, and is a no-op for a plain scale (4 → 5 adds one, moves none).
 *
 * Capacity is the cell's free cpu and memory for this version, in whole replicas, computed by the
 * caller from live Node allocatable minus what every other workload requests (including what this
 * scheduler already placed elsewhere in the same pass), so a failover spreads by live capacity
 * instead of piling onto one cell.
 */
import { formatCpu, formatMemory } from '@berth/shared/model';

export type CellHealth = 'ok' | 'suspect' | 'out';

export type CellCandidate = {
  name: string;
  health: CellHealth;
  /** Replicas of this version that fit in the cell (what it runs now included). */
  fits: number;
  /** Free capacity, for messages. */
  freeCpuMillis: number;
  freeMemoryBytes: number;
};

export type PlacementInput = {
  replicas: number;
  minCells: number;
  previous: Record<string, number>;
  cells: CellCandidate[];
  request: { cpuMillis: number; memoryBytes: number };
};

export type PlacementCondition = { type: string; status: 'True' | 'False'; reason: string; message: string };

export type PlacementResult = {
  cells: Record<string, number>;
  placed: number;
  conditions: PlacementCondition[];
};

export function placeReplicas(input: PlacementInput): PlacementResult {
  const cells = [...input.cells].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const count = new Map<string, number>();
  for (const c of cells) {
    const before = input.previous[c.name] ?? 0;
    count.set(c.name, c.health === 'out' ? 0 : Math.max(0, Math.min(before, c.fits)));
  }
  const get = (c: CellCandidate) => count.get(c.name) ?? 0;
  const headroom = (c: CellCandidate) => c.fits - get(c);
  let total = cells.reduce((n, c) => n + get(c), 0);

  // Too many: shed from suspect cells first, then the fullest, then the tightest.
  while (total > input.replicas) {
    const from = pick(
      cells.filter((c) => get(c) > 0),
      (a, b) =>
        rank(a.health === 'suspect', b.health === 'suspect') ||
        get(b) - get(a) ||
        headroom(a) - headroom(b) ||
        (a.name > b.name ? -1 : 1),
    );
    if (!from) break;
    count.set(from.name, get(from) - 1);
    total--;
  }

  // Too few: add to the emptiest ok cell that has room.
  while (total < input.replicas) {
    const to = pick(
      cells.filter((c) => c.health === 'ok' && headroom(c) > 0),
      (a, b) => get(a) - get(b) || headroom(b) - headroom(a) || (a.name < b.name ? -1 : 1),
    );
    if (!to) break;
    count.set(to.name, get(to) + 1);
    total++;
  }

  // Even out among ok cells: one move at a time from the fullest to the emptiest with room.
  for (let guard = 0; guard < 10_000; guard++) {
    const ok = cells.filter((c) => c.health === 'ok');
    const full = pick(ok, (a, b) => get(b) - get(a) || (a.name > b.name ? -1 : 1));
    const empty = pick(
      ok.filter((c) => headroom(c) > 0),
      (a, b) => get(a) - get(b) || headroom(b) - headroom(a) || (a.name < b.name ? -1 : 1),
    );
    if (!full || !empty || get(full) - get(empty) < 2) break;
    count.set(full.name, get(full) - 1);
    count.set(empty.name, get(empty) + 1);
  }

  const result: Record<string, number> = {};
  for (const c of cells) if (get(c) > 0) result[c.name] = get(c);
  return { cells: result, placed: total, conditions: conditionsFor(input, cells, result, total) };
}

function conditionsFor(
  input: PlacementInput,
  cells: CellCandidate[],
  placed: Record<string, number>,
  total: number,
): PlacementCondition[] {
  const conditions: PlacementCondition[] = [];
  if (total < input.replicas) {
    const free = cells
      .filter((c) => c.health === 'ok')
      .map((c) => `${c.name} ${formatCpu(c.freeCpuMillis)} cpu/${formatMemory(c.freeMemoryBytes)}`)
      .join(', ');
    conditions.push({
      type: 'Unschedulable',
      status: 'True',
      reason: 'InsufficientCapacity',
      message: `placed ${total} of ${input.replicas} replicas: each needs ${formatCpu(input.request.cpuMillis)} cpu and ${formatMemory(
        input.request.memoryBytes,
      )} memory; free in active cells: ${free || 'none'}`,
    });
  } else {
    conditions.push({
      type: 'Unschedulable',
      status: 'False',
      reason: 'Placed',
      message: `placed ${total} of ${input.replicas} replicas`,
    });
  }
  const used = Object.keys(placed).length;
  const wanted = Math.min(input.minCells, input.replicas);
  const okCells = cells.filter((c) => c.health === 'ok').length;
  if (used < wanted) {
    conditions.push({
      type: 'MinCellsShortfall',
      status: 'True',
      reason: okCells < input.minCells ? 'TooFewActiveCells' : 'InsufficientCapacity',
      message: `runs in ${used} cell${used === 1 ? '' : 's'}; the app wants at least ${input.minCells}${
        okCells < input.minCells ? ` and only ${okCells} active cell${okCells === 1 ? '' : 's'} remain` : ''
      }`,
    });
  } else {
    conditions.push({ type: 'MinCellsShortfall', status: 'False', reason: 'Spread', message: `runs in ${used} cells` });
  }
  return conditions;
}

function pick<T>(items: T[], compare: (a: T, b: T) => number): T | undefined {
  let best: T | undefined;
  for (const item of items) if (best === undefined || compare(item, best) < 0) best = item;
  return best;
}

/** -1 when only `a` holds, 1 when only `b` holds, else 0. */
function rank(a: boolean, b: boolean): number {
  return a === b ? 0 : a ? -1 : 1;
}
