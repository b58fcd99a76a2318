import { BerthApiError, BerthConnectionError } from '@berth/client';

/** Wrong use of the command line: exit code 2, like commander's own usage errors. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export const EXIT_API = 1;
export const EXIT_USAGE = 2;

/** One line for stderr and the exit code: 2 for usage, 1 for what the API or the network said. */
export function describeError(err: unknown): { line: string; code: number } {
  if (err instanceof UsageError) return { line: `error: ${err.message}`, code: EXIT_USAGE };
  if (err instanceof BerthApiError) {
    const hint =
      err.status === 401 ? ' (log in again: berth login --api URL --username U --password-stdin, or --token T)' : '';
    return { line: `error: ${err.message}${hint}`, code: EXIT_API };
  }
  if (err instanceof BerthConnectionError) return { line: `error: ${err.message}`, code: EXIT_API };
  const message = err instanceof Error ? err.message : String(err);
  return { line: `error: ${message.split('\n')[0]}`, code: EXIT_API };
}
