import { describe, expect, it } from 'vitest';
import { rank } from './rendezvous.ts';

const keys = Array.from({ length: 20_000 }, (_, i) => `config-${i}`);
const agents = (n: number, weight = 1) => Array.from({ length: n }, (_, i) => ({ id: `agent-${i}`, weight }));
const homes = (list: { id: string; weight: number }[]) => keys.map((k) => rank(k, list)[0]?.id);

describe('rendezvous ranking', () => {
  it('spreads keys evenly and ranks every agent once', () => {
    const four = agents(4);
    const counts = new Map<string, number>();
    for (const h of homes(four)) counts.set(h as string, (counts.get(h as string) ?? 0) + 1);
    for (const n of counts.values()) expect(Math.abs(n / keys.length - 0.25)).toBeLessThan(0.02);
    expect(
      rank('x', four)
        .map((a) => a.id)
        .sort(),
    ).toEqual(four.map((a) => a.id));
  });

  it('moves only the leaving agent’s keys (about 1/N), none between the others', () => {
    const four = agents(4);
    const before = homes(four);
    const after = homes(four.filter((a) => a.id !== 'agent-2'));
    let moved = 0;
    for (let i = 0; i < keys.length; i++) {
      if (before[i] !== after[i]) {
        moved++;
        expect(before[i]).toBe('agent-2');
      }
    }
    expect(Math.abs(moved / keys.length - 0.25)).toBeLessThan(0.02);
  });

  it('gives an agent of twice the weight twice the keys', () => {
    const list = [...agents(2), { id: 'big', weight: 2 }];
    const share = homes(list).filter((h) => h === 'big').length / keys.length;
    expect(Math.abs(share - 0.5)).toBeLessThan(0.02);
  });

  it('is stable: the same key, the same order', () => {
    expect(rank('k', agents(5)).map((a) => a.id)).toEqual(rank('k', [...agents(5)].reverse()).map((a) => a.id));
  });
});
