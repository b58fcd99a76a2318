/** Who is calling, as established from their bearer token. */

export const SCOPES = ['read', 'write', 'admin'] as const;
export type Scope = (typeof SCOPES)[number];

/** Scopes are ordered: a `write` token can read; an `admin` token can do everything. */
export function scopeCovers(granted: readonly Scope[], needed: Scope): boolean {
  const rank = (s: Scope) => SCOPES.indexOf(s);
  return granted.some((s) => rank(s) >= rank(needed));
}

export type Principal = {
  user: string;
  admin: boolean;
  scopes: Scope[];
  tokenId: string;
  tokenKind: 'session' | 'personal';
};
