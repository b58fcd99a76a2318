/**
 * Secret redaction, used by logging, the effective-config log line and event payloads.
 *
 * Two nets, because either alone leaks:
 * - by key: a field whose name says it holds a secret (password, token, kubeconfig, …) is
 *   replaced wherever it is nested;
 * - by value: every secret value the process knows (registered by the config parser and by code
 *   that mints tokens) is cut out of every log line, wherever it appears, even inside a message
 *   string, a URL or an error stack.
 */

export const REDACTED = '[redacted]';

const SECRET_KEY =
  /pass(word|wd)?($|[^a-z])|password|secret|token|api[_-]?key|private[_-]?key|credential|kubeconfig|authorization|cookie/i;

/** Keys whose values are known not to be secrets even though the name matches. */
const NOT_SECRET_KEYS = new Set([
  'tokenid',
  'token_id',
  'tokenname',
  'tokenexpiresat',
  'expiresat',
  'tokens',
  'scopes',
]);

export function isSecretKey(key: string): boolean {
  const lower = key.toLowerCase();
  if (NOT_SECRET_KEYS.has(lower)) return false;
  return SECRET_KEY.test(key);
}

const knownSecrets = new Set<string>();
/** Values shorter than this are not scrubbed by value (too likely to collide with ordinary text). */
const MIN_SCRUB_LENGTH = 6;

/** Remember a secret value so that it is cut out of every log line from now on. */
export function registerSecret(value: string | undefined | null): void {
  if (!value || value.length < MIN_SCRUB_LENGTH) return;
  knownSecrets.add(value);
  const encoded = encodeURIComponent(value);
  if (encoded !== value) knownSecrets.add(encoded);
}

/** Replace every known secret value inside a string. */
export function scrubSecrets(text: string): string {
  if (knownSecrets.size === 0) return text;
  let out = text;
  for (const secret of knownSecrets) {
    if (out.includes(secret)) out = out.split(secret).join(REDACTED);
  }
  return out;
}

/** The password of a URL (redis://:pw@host) replaced, for logging a connection string. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (!parsed.password) return url;
    parsed.password = REDACTED;
    return parsed.toString();
  } catch {
    return scrubSecrets(url);
  }
}

/**
 * A deep copy of `value` with every secret-named field replaced and every known secret value
 * scrubbed from strings. Cycles are cut; depth is bounded.
 */
export function redactSecrets<T>(value: T, depth = 12): T {
  return redactInner(value, depth, new WeakSet()) as T;
}

function redactInner(value: unknown, depth: number, seen: WeakSet<object>): unknown {
  if (typeof value === 'string') return scrubSecrets(value);
  if (value === null || typeof value !== 'object') return value;
  if (depth <= 0) return '[truncated]';
  if (seen.has(value)) return '[circular]';
  seen.add(value);
  if (Array.isArray(value)) return value.map((v) => redactInner(v, depth - 1, seen));
  if (value instanceof Date) return value;
  if (value instanceof Error) return redactInner(errorToObject(value), depth - 1, seen);
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    out[k] = isSecretKey(k) && v !== undefined && v !== null && v !== '' ? REDACTED : redactInner(v, depth - 1, seen);
  }
  return out;
}

/** A plain object of an error (name, message, stack, code, cause, own fields) for logging. */
export function errorToObject(err: Error): Record<string, unknown> {
  const out: Record<string, unknown> = { type: err.name, message: err.message, stack: err.stack };
  const code = (err as { code?: unknown }).code;
  if (code !== undefined) out.code = code;
  if (err.cause !== undefined) out.cause = err.cause instanceof Error ? errorToObject(err.cause) : err.cause;
  for (const [k, v] of Object.entries(err)) {
    if (!(k in out)) out[k] = v;
  }
  return out;
}
