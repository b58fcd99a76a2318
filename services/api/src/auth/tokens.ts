/**
 * Bearer tokens: `berth_<id>_<secret>`. The id finds the record in one read; the secret is checked
 * against its sha256 in constant time. Tokens are high-entropy (32 random bytes), so a plain
 * sha256 is enough (a password hash would only slow every request).
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

const TOKEN = /^berth_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;

export type MintedToken = { id: string; token: string; hash: string };

export function mintToken(): MintedToken {
  const id = randomBytes(8).toString('hex');
  const secret = randomBytes(32).toString('base64url');
  // Not registered with the logger's redaction set (registerSecret): that set is process-wide,
  // never shrinks, and every log line is scanned against each entry, so one per token minted grows
  // without bound. A token reaches the API only in the Authorization header (redacted by name
  // wherever headers are logged) and leaves it only in the body of the answer that made it, which
  // is never logged; no message quotes a token (a bad one is "malformed" or "not valid").
  const token = `berth_${id}_${secret}`;
  return { id, token, hash: sha256(secret) };
}

export function parseToken(token: string): { id: string; secret: string } | undefined {
  const m = TOKEN.exec(token);
  return m?.[1] && m[2] ? { id: m[1], secret: m[2] } : undefined;
}

export function secretMatches(secret: string, hash: string): boolean {
  const a = Buffer.from(sha256(secret), 'hex');
  const b = Buffer.from(hash, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}
