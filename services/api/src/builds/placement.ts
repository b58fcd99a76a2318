/**
 * Where a run goes: the config's weighted rendezvous ranking over the region's live agents, the
 * home first; a home that is draining, or whose queue already holds `spillFactor × slots`
 * waiting jobs, passes the run to the next agent in the ranking (bounded-load spill). Pure: the
 * caller reads the registrations and the queue depths.
 */
import { type BuilderRegistration, type BuildPlacement, rank } from '@berth/shared/builds';

export type PlacementInput = {
  /** The config's dispatch key (`dispatchKey(config)`). */
  key: string;
  agents: readonly Pick<BuilderRegistration, 'id' | 'weight' | 'slots' | 'draining'>[];
  /** Waiting jobs per agent id (missing: 0). */
  waiting: ReadonlyMap<string, number>;
  /** The run is moving off an agent that left: the reason is `rehome` wherever it lands. */
  rehome?: boolean;
  /** A queue is too deep at `spillFactor × slots` waiting jobs. Default 2. */
  spillFactor?: number;
};

/** The placement, or undefined when no agent may take the run (none live, or all draining). */
export function choosePlacement(input: PlacementInput): BuildPlacement | undefined {
  const ranked = rank(input.key, input.agents);
  const factor = input.spillFactor ?? 2;
  const open = ranked.map((agent, i) => ({ agent, rank: i + 1 })).filter((a) => !a.agent.draining);
  if (open.length === 0) return undefined;
  const depth = (id: string) => input.waiting.get(id) ?? 0;
  // The first in the ranking with room; when every queue is deep, the least loaded one.
  const roomy = open.find((a) => depth(a.agent.id) < factor * a.agent.slots);
  const chosen =
    roomy ??
    open.reduce((best, a) => (depth(a.agent.id) / a.agent.slots < depth(best.agent.id) / best.agent.slots ? a : best));
  const reason = input.rehome ? 'rehome' : chosen.rank === 1 ? 'affinity' : 'spill';
  return { agentId: chosen.agent.id, rank: chosen.rank, reason };
}
