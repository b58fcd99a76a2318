/**
 * Where builds land, computed as the API's dispatcher computes it (`rank()` over the live agents,
 * rank 1 when nothing spills), against random placement.
 */
import { createHash } from 'node:crypto';
import { rank, type WeightedAgent } from '@berth/shared/builds';

export function agents(n: number, weight = 2): WeightedAgent[] {
  return Array.from({ length: n }, (_, i) => ({
    id: `b${createHash('sha256').update(`agent${i}`).digest('hex').slice(0, 15)}`,
    weight,
  }));
}

/** Config ids shaped as the API makes them (16 × [a-z0-9]), deterministic per index. */
export function configIds(n: number): string[] {
  return Array.from({ length: n }, (_, i) =>
    BigInt(`0x${createHash('sha256').update(`config${i}`).digest('hex').slice(0, 20)}`)
      .toString(36)
      .padStart(16, '0')
      .slice(-16),
  );
}

/** A seeded generator (mulberry32), so a run of the bench is repeatable. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `copies`: caches a config ends with, on average (one per agent it was built on). */
export type HitRate = { runs: number; hits: number; rate: number; copies: number };

/**
 * `runsPerConfig` runs of each config, interleaved; a run after the config's first is a hit when
 * the agent it lands on already holds that config's cache (built it before).
 */
export function affinityHitRate(ids: string[], runsPerConfig: number, place: (id: string) => WeightedAgent): HitRate {
  const built = new Map<string, Set<string>>();
  let runs = 0;
  let hits = 0;
  for (let r = 0; r < runsPerConfig; r++) {
    for (const id of ids) {
      const agent = place(id);
      const seen = built.get(id) ?? new Set<string>();
      if (r > 0) {
        runs++;
        if (seen.has(agent.id)) hits++;
      }
      seen.add(agent.id);
      built.set(id, seen);
    }
  }
  let copies = 0;
  for (const seen of built.values()) copies += seen.size;
  return { runs, hits, rate: runs ? hits / runs : 0, copies: ids.length ? copies / ids.length : 0 };
}

export const byRank = (pool: WeightedAgent[]) => (id: string) => rank(id, pool)[0] as WeightedAgent;
export const byRandom = (pool: WeightedAgent[], random: () => number) => () =>
  pool[Math.floor(random() * pool.length)] as WeightedAgent;

export type Moves = { configs: number; ofLeaver: number; moved: number; movedAmongOthers: number; share: number };

/** Homes before and after `leaver` goes: what moved, and whether anything moved between the others. */
export function movesWhenOneLeaves(ids: string[], pool: WeightedAgent[], leaver: WeightedAgent): Moves {
  const after = pool.filter((a) => a.id !== leaver.id);
  let ofLeaver = 0;
  let moved = 0;
  let movedAmongOthers = 0;
  for (const id of ids) {
    const before = (rank(id, pool)[0] as WeightedAgent).id;
    const now = (rank(id, after)[0] as WeightedAgent).id;
    if (before === leaver.id) ofLeaver++;
    if (before !== now) {
      moved++;
      if (before !== leaver.id) movedAmongOthers++;
    }
  }
  return { configs: ids.length, ofLeaver, moved, movedAmongOthers, share: moved / ids.length };
}
