/**
 * The direct plugin counts the calls it answered in the resident allocator's place. The thin
 * plugin (services/cni-ipam/thin) runs it with BERTH_IPAM_FALLBACK=<why> when no daemon answered;
 * each such ADD, DEL or CHECK, whatever its outcome, adds one to the node's counter at
 * keys.ipamFallbacks(cell, node), which `cnictl stats` shows beside the daemon's own counters.
 *
 * Best effort: the count is written after the command, over the same etcd connection and identity
 * (a cell's IPAM identity may write ipam/{cell}/, so ipam/{cell}/fallbacks/ too), and a failure to
 * count never changes the command's result, its output or its exit code.
 */
import { CompareFailedError } from '@berth/shared/errors';
import type { BerthKeys } from '@berth/shared/keys';
import { type Compare, type KvBackend, retryOnConflict } from '@berth/shared/store/lite';
import { FALLBACK_ENV, type FallbackReason } from '../daemon/protocol.ts';

/** What keys.ipamFallbacks(cell, node) holds. */
export type FallbackCount = { count: number; lastAt: string; lastReason: FallbackReason };

const REASONS: readonly string[] = ['no-daemon', 'daemon-failed'] satisfies FallbackReason[];

/** Why the thin plugin ran this process instead of asking the daemon; undefined when it did not. */
export function fallbackReason(env: NodeJS.ProcessEnv): FallbackReason | undefined {
  const reason = env[FALLBACK_ENV];
  return reason && REASONS.includes(reason) ? (reason as FallbackReason) : undefined;
}

/**
 * Adds one to the node's fallback counter: compare-and-swap on the key's mod revision, a few
 * attempts when fallbacks of the same node race. Never throws.
 */
export async function countFallback(
  backend: KvBackend,
  keys: BerthKeys,
  at: { cell: string; node: string },
  reason: FallbackReason,
  now: () => Date = () => new Date(),
): Promise<void> {
  const key = keys.ipamFallbacks(at.cell, at.node);
  try {
    await retryOnConflict(
      async () => {
        const current = await backend.get(key);
        const count = current ? countIn(current.value) : 0;
        const next: FallbackCount = { count: count + 1, lastAt: now().toISOString(), lastReason: reason };
        const compare: Compare = current ? { key, modRevision: current.modRevision } : { key, absent: true };
        const res = await backend.txn([compare], [{ put: key, value: JSON.stringify(next) }]);
        if (!res.succeeded) throw new CompareFailedError(res.failedKeys);
      },
      { maxAttempts: 4, what: key },
    );
  } catch {
    // Best effort: the pod's address matters, the statistic does not.
  }
}

/** The count a stored value holds; an unreadable one starts again from 0. */
function countIn(value: string): number {
  try {
    const count = (JSON.parse(value) as Partial<FallbackCount>).count;
    return typeof count === 'number' && Number.isInteger(count) && count >= 0 ? count : 0;
  } catch {
    return 0;
  }
}
