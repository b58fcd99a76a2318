/**
 * What an app's members and an image group's members share: the same record (`Member`), the
 * same If-Match rules on a membership, and the same guard that keeps the last Owner. The routes
 * differ only in what they load, their keys and their events.
 */
import { InputError, PreconditionFailedError } from '@berth/shared/errors';
import type { Member } from '@berth/shared/model';
import type { Op, Stored } from '@berth/shared/store';
import { userRecordSchema } from '../auth/records.ts';
import { checkIfMatch } from '../http/conditional.ts';
import type { ApiContext } from './context.ts';

/** 400 at `path` when no user of that name exists. */
export async function requireUser(ctx: Pick<ApiContext, 'store' | 'keys'>, name: string, path: string): Promise<void> {
  if (!(await ctx.store.get(ctx.keys.user(name), userRecordSchema))) {
    throw new InputError(`no user "${name}"`, [{ path, message: 'no such user' }]);
  }
}

/** If-Match on a membership: the current one's revision, and 412 for any ETag when there is none yet. */
export function matchMember(
  req: Parameters<typeof checkIfMatch>[0],
  wanted: number | undefined,
  user: string,
  current: number | undefined,
): void {
  if (current !== undefined) checkIfMatch(req, current);
  else if (wanted !== undefined) throw new PreconditionFailedError(`"${user}" is not a member yet`);
}

export function staleMembership(user: string): PreconditionFailedError {
  return new PreconditionFailedError(`the membership of "${user}" changed; read it again`);
}

export function ownerCount(all: readonly Stored<Member>[]): number {
  return all.filter((m) => m.value.role === 'Owner').length;
}

/** Compares on every other Owner, so two demotions or removals cannot both leave no Owner. */
export function ownerGuards(all: readonly Stored<Member>[], current: Stored<Member> | undefined): Op[] {
  return all
    .filter((m) => m.value.role === 'Owner' && m.key !== current?.key)
    .map((m) => ({ op: 'expect', key: m.key, modRevision: m.modRevision }));
}

/** The membership record after a PUT: a new role, first added when and by whom it was. */
export function memberRecord(
  current: Stored<Member> | undefined,
  user: string,
  role: Member['role'],
  by: string,
  at: string,
): Member {
  return { user, role, addedAt: current?.value.addedAt ?? at, addedBy: current?.value.addedBy ?? by };
}
