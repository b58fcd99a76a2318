/** What the API keeps in etcd about users and their tokens (API-owned, not read by other services). */
import { userNameSchema } from '@berth/shared/model';
import { z } from 'zod';
import { SCOPES } from './principal.ts';

export const userRecordSchema = z.object({
  name: userNameSchema,
  email: z.string().optional(),
  admin: z.boolean().default(false),
  /** `local`: password hash here; `ldap`: the directory checks the password at each login. */
  source: z.enum(['local', 'ldap']).default('local'),
  passwordHash: z.string().optional(),
  createdAt: z.iso.datetime(),
  updatedAt: z.iso.datetime(),
});
export type UserRecord = z.infer<typeof userRecordSchema>;

export const tokenRecordSchema = z.object({
  id: z.string(),
  user: userNameSchema,
  /** `session`: from a login, short-lived; `personal`: a personal access token. */
  kind: z.enum(['session', 'personal']),
  name: z.string().default(''),
  scopes: z.array(z.enum(SCOPES)).min(1),
  /** sha256 of the token's secret part, hex. The token itself is shown once and never stored. */
  hash: z.string(),
  createdAt: z.iso.datetime(),
  expiresAt: z.iso.datetime(),
});
export type TokenRecord = z.infer<typeof tokenRecordSchema>;

/** Public view of a user: never the hash. */
export function publicUser(user: UserRecord): Omit<UserRecord, 'passwordHash'> {
  const { passwordHash: _hidden, ...rest } = user;
  return rest;
}
