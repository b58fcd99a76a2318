/**
 * Weighted rendezvous (highest random weight) hashing: every agent scores a key, the highest
 * score is the key's home. Removing an agent moves only the keys it was home to (its weight's
 * share) and nothing between the others; adding one moves only keys onto it. With tens of agents,
 * scoring all of them per dispatch costs nothing and there is no ring state to keep consistent.
 *
 * Score: -w / ln(u) with u the key/agent hash mapped into (0, 1) (Schindelhauer & Schomaker's
 * weighted form), so an agent of twice the weight is home to twice the keys.
 */
import { createHash } from 'node:crypto';

export type WeightedAgent = { id: string; weight: number };

export function rendezvousScore(key: string, agent: WeightedAgent): number {
  const digest = createHash('sha256').update(key).update('\0').update(agent.id).digest();
  // 53 bits, so the double is exact; +1 and +2 keep u strictly inside (0, 1).
  const n = digest.readUIntBE(0, 6) * 32 + (digest[6] as number) / 8;
  const u = (Math.floor(n) + 1) / (2 ** 53 + 2);
  return -agent.weight / Math.log(u);
}

/** The agents in the key's order of preference: the home first, then where it spills. */
export function rank<A extends WeightedAgent>(key: string, agents: readonly A[]): A[] {
  return agents
    .map((a) => ({ a, s: a.weight > 0 ? rendezvousScore(key, a) : Number.NEGATIVE_INFINITY }))
    .sort((x, y) => y.s - x.s || (x.a.id < y.a.id ? -1 : 1))
    .map((x) => x.a);
}
