/**
 * Kubernetes quantities out of numbers: the one formatter for CPU and memory (the parsers are in
 * ./index.ts). Exact: what it prints parses back to the same number (`parseCpuMillis`,
 * `parseMemoryBytes`), so a quota message, an API answer and a manifest never disagree by rounding.
 */

/** Millicores → `2`, `1500m`, `250m`. Fractions of a millicore are rounded (a quantity cannot hold them). */
export function formatCpu(millis: number): string {
  const m = Math.round(millis);
  return m % 1000 === 0 ? String(m / 1000) : `${m}m`;
}

const BINARY_UNITS = [
  ['Ti', 2 ** 40],
  ['Gi', 2 ** 30],
  ['Mi', 2 ** 20],
  ['Ki', 2 ** 10],
] as const;

/**
 * Bytes → the largest binary unit that holds them exactly: `1Gi`, `1536Mi` (not `1.5Gi`, which
 * Kubernetes accepts but our memory schema does not), `1000` when no unit divides them.
 */
export function formatMemory(bytes: number): string {
  const b = Math.round(bytes);
  for (const [unit, size] of BINARY_UNITS) {
    if (b !== 0 && b % size === 0) return `${b / size}${unit}`;
  }
  return String(b);
}
