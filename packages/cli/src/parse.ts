/** Parsers for positional arguments and flag values: each refuses bad input as a usage error. */
import { UsageError } from './errors.ts';

export function parseCount(what: string, value: string, max = 1000): number {
  if (!/^\d+$/.test(value)) throw new UsageError(`${what} must be a whole number (got "${value}")`);
  const n = Number(value);
  if (n > max) throw new UsageError(`${what} must be at most ${max} (got ${n})`);
  return n;
}

/** `v1=90 v2=10` → { v1: 90, v2: 10 }: shares of requests (the API takes any proportions). */
export function parseWeights(args: string[]): Record<string, number> {
  if (!args.length) throw new UsageError('give weights as VERSION=PERCENT, e.g. v1=90 v2=10');
  const weights: Record<string, number> = {};
  for (const arg of args) {
    const m = /^(v\d+)=(\d+)$/.exec(arg);
    if (!m) throw new UsageError(`expected VERSION=PERCENT such as v1=90 (got "${arg}")`);
    const [, version, percent] = m as unknown as [string, string, string];
    if (version in weights) throw new UsageError(`${version} is given twice`);
    weights[version] = Number(percent);
  }
  return weights;
}

/** An image reference's tag: what `docker tag` accepts. */
export function parseTag(value: string): string {
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(value)) {
    throw new UsageError(`--tag must be an image tag such as v2 or 1.4.0 (got "${value}")`);
  }
  return value;
}

export function parseVersionName(value: string): string {
  if (!/^v[1-9]\d*$/.test(value)) throw new UsageError(`a version is named v1, v2, … (got "${value}")`);
  return value;
}

/** `--tail 100`, `--since 5m` stay strings for the API; only their shape is checked here. */
export function parseSince(value: string): string {
  if (!/^\d{1,7}[smh]$/.test(value)) {
    throw new UsageError(`--since must be a duration such as 30s, 10m or 2h (got "${value}")`);
  }
  return value;
}
