/**
 * Role-based access for every resource with members (apps today; image repositories, image groups
 * and build configs reuse it): GitLab's roles Owner > Master > Developer > Reporter > Guest.
 *
 * - A caller who is not a member of a private resource (and not a platform admin) gets 404, not
 *   403: the resource's existence is not disclosed.
 * - A member whose role is too weak gets 403 naming the role needed.
 * - Member management: Master and Owner manage members; only an Owner grants, changes or removes
 *   an Owner; the last Owner can be neither removed nor demoted; only an Owner transfers.
 */
import { ConflictError, ForbiddenError, NotFoundError } from '@berth/shared/errors';
import { type Role, roleAtLeast } from '@berth/shared/model';
import type { Principal } from '../auth/principal.ts';

/** What a caller wants to do to a resource. */
export const ACTIONS = {
  /**
   * See the resource, its versions (env names, not values), status, members, activity, and the
   * names and fingerprints of its secrets.
   */
  read: 'Guest',
  /** Read the values of plain env in versions (they are often credentials; docs/secrets.md). */
  readEnv: 'Developer',
  /** Read build logs (they can show more of the source than a Guest sees). */
  readLogs: 'Reporter',
  /** Push images, start builds. */
  build: 'Developer',
  /** Create versions, scale, roll back, change settings. */
  deploy: 'Master',
  /**
   * Set and delete the app's secrets (values are never read back by anyone). As strong as deploy:
   * a changed secret rolls the app's pods, and a new `DATABASE_URL` redirects its data.
   */
  manageSecrets: 'Master',
  /** Add, change and remove members (below Owner). */
  manageMembers: 'Master',
  /** Delete the resource. */
  delete: 'Owner',
  /** Hand the resource to another owner. */
  transfer: 'Owner',
} as const satisfies Record<string, Role>;
export type Action = keyof typeof ACTIONS;

export type ResourceRef = {
  /** e.g. `app`, `image repository`: used in messages. */
  kind: string;
  name: string;
  /** Private resources are hidden (404) from non-members. Apps are always private. */
  private: boolean;
};

/** Whether `role` may do `action`. */
export function roleAllows(role: Role | undefined, action: Action): boolean {
  return role !== undefined && roleAtLeast(role, ACTIONS[action]);
}

/**
 * Throws unless the caller may do `action` on the resource. `role` is the caller's membership
 * (undefined for non-members). Returns the effective role (admins act as Owner).
 */
export function authorize(principal: Principal, resource: ResourceRef, role: Role | undefined, action: Action): Role {
  if (principal.admin) return 'Owner';
  if (role === undefined) {
    if (resource.private || action !== 'read') throw new NotFoundError(`no ${resource.kind} "${resource.name}"`);
    return 'Guest';
  }
  if (!roleAllows(role, action)) {
    throw new ForbiddenError(
      `${ACTIONS[action]} or higher is needed to ${describe(action)} ${resource.kind} "${resource.name}"`,
      {
        extensions: { requiredRole: ACTIONS[action], role },
      },
    );
  }
  return role;
}

function describe(action: Action): string {
  switch (action) {
    case 'read':
      return 'see';
    case 'readLogs':
      return 'read the build logs of';
    case 'readEnv':
      return 'read the env values of';
    case 'build':
      return 'build';
    case 'deploy':
      return 'change or deploy';
    case 'manageSecrets':
      return 'set or delete the secrets of';
    case 'manageMembers':
      return 'manage the members of';
    case 'delete':
      return 'delete';
    case 'transfer':
      return 'transfer';
  }
}

/**
 * Checks a change of membership by a caller with `actorRole`: `current` is the target's role now
 * (undefined when not a member), `next` the role asked for (undefined to remove), `owners` the
 * number of Owners now.
 */
export function checkMemberChange(
  actorRole: Role,
  current: Role | undefined,
  next: Role | undefined,
  owners: number,
): void {
  if (!roleAllows(actorRole, 'manageMembers')) {
    throw new ForbiddenError('Master or higher is needed to manage members');
  }
  const touchesOwner = current === 'Owner' || next === 'Owner';
  if (touchesOwner && actorRole !== 'Owner') {
    throw new ForbiddenError('only an Owner can grant, change or remove the Owner role');
  }
  if (current === 'Owner' && next !== 'Owner' && owners <= 1) {
    throw new ConflictError('the last Owner cannot be removed or demoted; add another Owner or transfer first');
  }
}
