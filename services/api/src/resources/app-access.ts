/** Loading an app together with the caller's role on it. */
import { NotFoundError } from '@berth/shared/errors';
import { type App, appSchema, type Member, memberSchema, type Role } from '@berth/shared/model';
import type { Stored } from '@berth/shared/store';
import type { Principal } from '../auth/principal.ts';
import { type Action, authorize } from '../rbac/index.ts';
import type { ApiContext } from './context.ts';

export type AppAccess = { app: Stored<App>; role: Role; membership: Stored<Member> | undefined };

/** The app and the caller's role, or 404 (not found, or not a member) / 403 (role too weak). */
export async function loadApp(ctx: ApiContext, principal: Principal, name: string, action: Action): Promise<AppAccess> {
  const [app, membership] = await Promise.all([
    ctx.store.get(ctx.keys.app(name), appSchema),
    ctx.store.get(ctx.keys.member(name, principal.user), memberSchema),
  ]);
  if (!app) throw new NotFoundError(`no app "${name}"`);
  const role = authorize(principal, { kind: 'app', name, private: true }, membership?.value.role, action);
  return { app, role, membership };
}
