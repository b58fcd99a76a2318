/**
 * Registry scopes (distribution docs/spec/auth/scope.md): `type[(class)]:name:action[,action]`,
 * e.g. `repository:team/shop:pull,push` or `registry:catalog:*`. The name is everything between
 * the first and the last colon, so a name with a host and port (`localhost:5000/x`) survives.
 * A token's `access` is the intersection of what was asked and what the caller may do.
 */

export type RequestedScope = { type: string; name: string; actions: string[] };
export type Access = { type: string; name: string; actions: string[] };

const TYPE = /^[a-z0-9]+(\([a-z0-9]+\))?$/;
const ACTION = /^[a-z]+$|^\*$/;

/** One `scope` parameter → the scopes in it, or undefined when it is not a scope. */
export function parseScope(text: string): RequestedScope | undefined {
  const first = text.indexOf(':');
  const last = text.lastIndexOf(':');
  if (first <= 0 || last === first) return undefined;
  const type = text.slice(0, first);
  const name = text.slice(first + 1, last);
  const actions = text.slice(last + 1).split(',');
  if (!TYPE.test(type) || !name || actions.some((a) => !ACTION.test(a))) return undefined;
  return { type, name, actions: [...new Set(actions)] };
}

/**
 * Every `scope` parameter, each possibly holding several scopes separated by spaces (OAuth2 form).
 * Scopes of one resource asked twice are merged. Returns the bad ones apart.
 */
export function parseScopes(params: readonly string[]): { scopes: RequestedScope[]; bad: string[] } {
  const merged = new Map<string, RequestedScope>();
  const bad: string[] = [];
  for (const param of params) {
    for (const text of param.split(' ').filter(Boolean)) {
      const scope = parseScope(text);
      if (!scope) {
        bad.push(text);
        continue;
      }
      const key = `${scope.type}\u0000${scope.name}`;
      const seen = merged.get(key);
      if (seen) seen.actions = [...new Set([...seen.actions, ...scope.actions])];
      else merged.set(key, scope);
    }
  }
  return { scopes: [...merged.values()], bad };
}

/**
 * The granted access: for each asked scope, the asked actions that `allowed` permits, sorted (the
 * registry's challenge names them in no fixed order; the token should not vary with it). Scopes
 * with nothing granted are left out; an empty result is a valid grant (a token with no access).
 */
export async function grant(
  asked: readonly RequestedScope[],
  allowed: (scope: RequestedScope) => Promise<ReadonlySet<string>>,
): Promise<Access[]> {
  const out: Access[] = [];
  for (const scope of asked) {
    const permitted = await allowed(scope);
    const actions = (permitted.has('*') ? scope.actions : scope.actions.filter((a) => permitted.has(a))).sort();
    if (actions.length > 0) out.push({ type: scope.type, name: scope.name, actions });
  }
  return out;
}

/** The image group of a repository name: its first path segment (`team` of `team/shop`), if it has two. */
export function groupOfRepository(name: string): string | undefined {
  const slash = name.indexOf('/');
  if (slash <= 0 || slash === name.length - 1) return undefined;
  return name.slice(0, slash);
}
