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
  /**
   * Acting as a platform admin: the user is one AND the token carries the `admin` scope. An
   * admin's `read` or `write` token acts with the admin's own memberships only, like anyone's.
   */
  admin: boolean;
  scopes: Scope[];
  tokenId: string;
  tokenKind: 'session' | 'personal';
  /** When the token the request came with expires (ISO 8601). */
  tokenExpiresAt: string;
};
