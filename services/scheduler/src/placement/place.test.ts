import { describe, expect, it } from 'vitest';
import { type CellCandidate, type PlacementInput, placeReplicas } from './place.ts';

const request = { cpuMillis: 500, memoryBytes: 512 * 2 ** 20 };

function cell(name: string, fits = 100, health: CellCandidate['health'] = 'ok'): CellCandidate {
  return { name, health, fits, freeCpuMillis: fits * 500, freeMemoryBytes: fits * 512 * 2 ** 20 };
}

function place(partial: Partial<PlacementInput> & { cells: CellCandidate[] }) {
  return placeReplicas({ replicas: 4, minCells: 2, previous: {}, request, ...partial });
}

describe('placement', () => {
  it('spreads 4 replicas 2+2 over two cells', () => {
    expect(place({ cells: [cell('cell-a'), cell('cell-b')] }).cells).toEqual({ 'cell-a': 2, 'cell-b': 2 });
  });

  it('4 → 5 adds exactly one replica and moves nothing; 5 → 4 removes one', () => {
    const cells = [cell('cell-a'), cell('cell-b')];
    const four = place({ cells }).cells;
    const five = place({ cells, replicas: 5, previous: four }).cells;
    expect(five['cell-a'] ?? 0).toBeGreaterThanOrEqual(four['cell-a'] ?? 0);
    expect(five['cell-b'] ?? 0).toBeGreaterThanOrEqual(four['cell-b'] ?? 0);
    expect(Object.values(five).reduce((a, b) => a + b)).toBe(5);
    expect(place({ cells, replicas: 4, previous: five }).cells).toEqual(four);
  });

  it('changes nothing when nothing changed, whatever the order of the cells', () => {
    const cells = [cell('cell-c', 7), cell('cell-a', 3), cell('cell-b', 50)];
    const first = place({ cells, replicas: 9 });
    expect(place({ cells: [...cells].reverse(), replicas: 9, previous: first.cells })).toEqual(first);
  });

  it('spreads over many cells at least minCells wide', () => {
    const cells = ['a', 'b', 'c', 'd', 'e'].map((n) => cell(`cell-${n}`));
    const r = place({ cells, replicas: 3, minCells: 2 });
    expect(Object.keys(r.cells)).toHaveLength(3);
    expect(Object.values(r.cells)).toEqual([1, 1, 1]);
  });

  it('gives a cell with too little free capacity fewer replicas', () => {
    const r = place({ cells: [cell('cell-a', 2), cell('cell-b', 100)], replicas: 6 });
    expect(r.cells).toEqual({ 'cell-a': 2, 'cell-b': 4 });
    expect(r.conditions.find((c) => c.type === 'Unschedulable')?.status).toBe('False');
  });

  it('places what fits and says Unschedulable, with the numbers, when capacity is short', () => {
    const r = place({ cells: [cell('cell-a', 1), cell('cell-b', 0)], replicas: 4 });
    expect(r.placed).toBe(1);
    const u = r.conditions.find((c) => c.type === 'Unschedulable');
    expect(u).toMatchObject({ status: 'True', reason: 'InsufficientCapacity' });
    expect(u?.message).toBe(
      'placed 1 of 4 replicas: each needs 500m cpu and 512Mi memory; free in active cells: cell-a 500m cpu/512Mi, cell-b 0 cpu/0',
    );
  });

  it('moves the replicas of an out cell to the others, by capacity, and reports a minCells shortfall', () => {
    const before = { 'cell-a': 2, 'cell-b': 2 };
    const r = place({ cells: [cell('cell-a'), cell('cell-b', 100, 'out')], previous: before });
    expect(r.cells).toEqual({ 'cell-a': 4 });
    expect(r.conditions.find((c) => c.type === 'MinCellsShortfall')).toMatchObject({
      status: 'True',
      reason: 'TooFewActiveCells',
      message: 'runs in 1 cell; the app wants at least 2 and only 1 active cell remain',
    });
  });

  it('spreads a failover over the remaining cells instead of piling onto one', () => {
    const before = { 'cell-a': 3, 'cell-b': 3, 'cell-c': 3 };
    const r = place({
      cells: [cell('cell-a'), cell('cell-b'), cell('cell-c', 100, 'out')],
      replicas: 9,
      previous: before,
    });
    expect(r.cells).toEqual({ 'cell-a': 5, 'cell-b': 4 });
  });

  it('keeps what runs in a briefly unreachable cell and adds nothing there', () => {
    const before = { 'cell-a': 2, 'cell-b': 2 };
    const cells = [cell('cell-a'), cell('cell-b', 100, 'suspect')];
    expect(place({ cells, previous: before }).cells).toEqual(before);
    // A scale-up goes to the healthy cell only.
    expect(place({ cells, previous: before, replicas: 6 }).cells).toEqual({ 'cell-a': 4, 'cell-b': 2 });
    // A scale-down takes from the unhealthy cell first.
    expect(place({ cells, previous: before, replicas: 3 }).cells).toEqual({ 'cell-a': 2, 'cell-b': 1 });
  });

  it('spreads replicas back when a cell returns', () => {
    const r = place({ cells: [cell('cell-a'), cell('cell-b')], previous: { 'cell-a': 4 } });
    expect(r.cells).toEqual({ 'cell-a': 2, 'cell-b': 2 });
  });

  it('runs nothing for 0 replicas', () => {
    expect(place({ cells: [cell('cell-a'), cell('cell-b')], replicas: 0, previous: { 'cell-a': 2 } }).cells).toEqual(
      {},
    );
  });
});
