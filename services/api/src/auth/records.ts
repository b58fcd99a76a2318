/** What the API keeps in etcd about users and their tokens (API-owned, not read by other services). */
import { userNameSchema } from '@berth/shared/model';
import { z } from 'zod';
import { SCOPES } from './principal.ts';

export const userRecordSchema = z.object({
  name: userNameSchema,
  /**
   * Immutable, made when the user is created; tokens carry it, so a user deleted and created again
   * under the same name does not get the old one's tokens. Absent only on users from before it.
   */
  id: z.string().optional(),
  email: z.string().optional(),
  admin: z.boolean().default(false),
  /** `local`: password hash here; `ldap`: the directory checks the password at each login. */
  source: z.enum(['local', 'ldap']).default('local'),
  passwordHash: z.string().optional(),
  /** An admin disabled the user: no login, and their sessions and tokens stop working. */
  disabled: z.boolean().default(false),
  createdAt: z.iso.datetime(),
  updatedAt: z.iso.datetime(),
});
export type UserRecord = z.infer<typeof userRecordSchema>;

export const tokenRecordSchema = z.object({
  id: z.string(),
  user: userNameSchema,
  /** The id of the user the token was made for; absent only on tokens from before user ids. */
  userId: z.string().optional(),
  /** `session`: from a login, short-lived; `personal`: a personal access token. */
  kind: z.enum(['session', 'personal']),
  name: z.string().default(''),
  scopes: z.array(z.enum(SCOPES)).min(1),
  /** sha256 of the token's secret part, hex. The token itself is shown once and never stored. */
  hash: z.string(),
  createdAt: z.iso.datetime(),
  expiresAt: z.iso.datetime(),
  /** Sessions: where the login came from (client address, User-Agent), for the user's session list. */
  address: z.string().optional(),
  userAgent: z.string().optional(),
});
export type TokenRecord = z.infer<typeof tokenRecordSchema>;

/** Public view of a user: never the hash. */
export function publicUser(user: UserRecord): Omit<UserRecord, 'passwordHash'> {
  const { passwordHash: _hidden, ...rest } = user;
  return rest;
}
