/**
 * BullMQ queue names: one place, never renamed (a rename strands every job in the old queue).
 * One build queue per build agent; the dispatcher picks the agent by rendezvous hashing.
 */

export const QUEUE_PREFIX = 'berth';

export const Queues = {
  /** Build jobs for one build agent. */
  builds: (agentId: string): string => {
    if (!/^[A-Za-z0-9_.-]+$/.test(agentId)) throw new Error(`bad build agent id "${agentId}"`);
    return `builds-${agentId}`;
  },
} as const;
