/**
 * Authentication: bearer tokens (login sessions and personal access tokens), passwords (scrypt),
 * LDAP when configured, the admin bootstrapped from config, and the login rate limit.
 */
import { ForbiddenError, InputError, NotFoundError, UnauthorizedError } from '@berth/shared/errors';
import type { BerthKeys } from '@berth/shared/keys';
import type { Logger } from '@berth/shared/logging';
import { userNameSchema } from '@berth/shared/model';
import type { Request } from 'express';
import type { Access } from '../http/routes.ts';
import type { EtcdStore } from '../store/etcd-store.ts';
import type { LdapDirectory } from './ldap.ts';
import { hashPassword, verifyPassword } from './passwords.ts';
import { type Principal, type Scope, scopeCovers } from './principal.ts';
import type { LoginRateLimiter } from './rate-limit.ts';
import { type TokenRecord, tokenRecordSchema, type UserRecord, userRecordSchema } from './records.ts';
import { mintToken, parseToken, secretMatches } from './tokens.ts';

export type AuthOptions = {
  store: EtcdStore;
  keys: BerthKeys;
  logger: Logger;
  rateLimiter: LoginRateLimiter;
  ldap?: LdapDirectory | undefined;
  sessionTtlMs: number;
};

export class AuthService {
  readonly #store: EtcdStore;
  readonly #keys: BerthKeys;
  readonly #logger: Logger;
  readonly #rateLimiter: LoginRateLimiter;
  readonly #ldap: LdapDirectory | undefined;
  readonly #sessionTtlMs: number;

  constructor(options: AuthOptions) {
    this.#store = options.store;
    this.#keys = options.keys;
    this.#logger = options.logger.child({ component: 'auth' });
    this.#rateLimiter = options.rateLimiter;
    this.#ldap = options.ldap;
    this.#sessionTtlMs = options.sessionTtlMs;
  }

  /** The caller of a request, checked against what the route needs. */
  async authenticate(req: Request, access: Access): Promise<Principal | undefined> {
    const header = req.headers.authorization;
    if (!header) {
      if (access.kind === 'public') return undefined;
      throw new UnauthorizedError('sign in: send Authorization: Bearer <token>');
    }
    const m = /^Bearer\s+(\S+)$/i.exec(header);
    const parsed = m?.[1] ? parseToken(m[1]) : undefined;
    if (!parsed) throw new UnauthorizedError('the bearer token is malformed');
    const stored = await this.#store.get(this.#keys.token(parsed.id), tokenRecordSchema);
    if (!stored || !secretMatches(parsed.secret, stored.value.hash)) {
      throw new UnauthorizedError('the bearer token is not valid');
    }
    if (Date.parse(stored.value.expiresAt) <= Date.now()) throw new UnauthorizedError('the bearer token has expired');
    const user = await this.#store.get(this.#keys.user(stored.value.user), userRecordSchema);
    if (!user) throw new UnauthorizedError('the token belongs to a user who no longer exists');
    const principal: Principal = {
      user: user.value.name,
      admin: user.value.admin && scopeCovers(stored.value.scopes, 'admin'),
      scopes: stored.value.scopes,
      tokenId: stored.value.id,
      tokenKind: stored.value.kind,
      tokenExpiresAt: stored.value.expiresAt,
    };
    if (access.kind === 'user') this.requireScope(principal, access.scope);
    if (access.kind === 'admin') {
      if (!user.value.admin) throw new ForbiddenError('only platform admins may do this');
      this.requireScope(principal, 'admin');
    }
    return principal;
  }

  requireScope(principal: Principal, scope: Scope): void {
    if (!scopeCovers(principal.scopes, scope)) {
      throw new ForbiddenError(`this token lacks the "${scope}" scope`);
    }
  }

  /** Password (or LDAP) login → a session token. */
  async login(
    username: string,
    password: string,
    address: string,
  ): Promise<{ token: string; expiresAt: string; user: UserRecord }> {
    await this.#rateLimiter.attempt(username, address);
    const user = await this.#checkPassword(username, password);
    if (!user) throw new UnauthorizedError('wrong user name or password');
    const scopes: Scope[] = user.admin ? ['admin'] : ['write'];
    const { token, expiresAt } = await this.#issue(
      user.name,
      'session',
      'login',
      scopes,
      new Date(Date.now() + this.#sessionTtlMs),
    );
    return { token, expiresAt, user };
  }

  async #checkPassword(username: string, password: string): Promise<UserRecord | undefined> {
    const stored = await this.#store.get(this.#keys.user(username), userRecordSchema);
    if (stored?.value.source === 'local' || (stored && !this.#ldap)) {
      const hash = stored.value.passwordHash;
      return hash && (await verifyPassword(password, hash)) ? stored.value : undefined;
    }
    // A directory name Berth cannot store as a user (upper case, spaces…) cannot sign in.
    if (!this.#ldap || !userNameSchema.safeParse(username).success) return undefined;
    const entry = await this.#ldap.authenticate(username, password);
    if (!entry) return undefined;
    // First LDAP login creates the user; later ones refresh the e-mail.
    const now = new Date().toISOString();
    if (!stored) {
      const record: UserRecord = { name: username, admin: false, source: 'ldap', createdAt: now, updatedAt: now };
      if (entry.email) record.email = entry.email;
      const res = await this.#store.commit([{ op: 'create', key: this.#keys.user(username), value: record }]);
      if (res.ok) return record;
      return (await this.#store.get(this.#keys.user(username), userRecordSchema))?.value;
    }
    return stored.value;
  }

  async #issue(
    user: string,
    kind: TokenRecord['kind'],
    name: string,
    scopes: Scope[],
    expiresAt: Date,
  ): Promise<{ token: string; expiresAt: string; record: TokenRecord; modRevision: number }> {
    const minted = mintToken();
    const record: TokenRecord = {
      id: minted.id,
      user,
      kind,
      name,
      scopes,
      hash: minted.hash,
      createdAt: new Date().toISOString(),
      expiresAt: expiresAt.toISOString(),
    };
    // Expired tokens are removed by a lease: etcd deletes the key when the token expires.
    const ttlSeconds = Math.max(1, Math.ceil((expiresAt.getTime() - Date.now()) / 1000));
    const lease = this.#store.etcd.lease(ttlSeconds, { autoKeepAlive: false });
    const leaseId = await lease.grant();
    const put = await this.#store.etcd.put(this.#keys.token(minted.id)).value(JSON.stringify(record)).lease(leaseId);
    lease.release();
    return { token: minted.token, expiresAt: record.expiresAt, record, modRevision: Number(put.header.revision) };
  }

  /** A personal access token for the caller; the token is returned once. */
  async createPersonalToken(
    principal: Principal,
    input: { name: string; scopes: Scope[]; expiresAt: string },
  ): Promise<{ token: string; record: TokenRecord; modRevision: number }> {
    if (input.scopes.includes('admin') && !principal.admin) {
      throw new ForbiddenError('only platform admins may create admin-scoped tokens');
    }
    for (const scope of input.scopes) this.requireScope(principal, scope);
    const expires = new Date(input.expiresAt);
    if (expires.getTime() <= Date.now()) {
      throw new InputError('expiresAt is in the past', [{ path: '$.expiresAt', message: 'must be in the future' }]);
    }
    // A personal token cannot outlive the personal token that made it: otherwise a leaked token
    // could renew itself forever and its expiry would mean nothing. (A password login may.)
    if (principal.tokenKind === 'personal' && expires.getTime() > Date.parse(principal.tokenExpiresAt)) {
      throw new InputError('a token made with a personal access token cannot outlive it', [
        { path: '$.expiresAt', message: `at most ${principal.tokenExpiresAt}, when the calling token expires` },
      ]);
    }
    const { token, record, modRevision } = await this.#issue(
      principal.user,
      'personal',
      input.name,
      input.scopes,
      expires,
    );
    this.#logger.info(
      { user: principal.user, tokenId: record.id, scopes: record.scopes },
      'personal access token created',
    );
    return { token, record, modRevision };
  }

  async listPersonalTokens(user: string): Promise<TokenRecord[]> {
    const all = await this.#store.list(this.#keys.tokens(), tokenRecordSchema);
    return all
      .map((s) => s.value)
      .filter((t) => t.user === user && t.kind === 'personal' && Date.parse(t.expiresAt) > Date.now());
  }

  async deleteToken(principal: Principal, id: string): Promise<TokenRecord> {
    const stored = await this.#store.get(this.#keys.token(id), tokenRecordSchema);
    if (!stored || (stored.value.user !== principal.user && !principal.admin)) {
      throw new NotFoundError(`no token ${id}`);
    }
    await this.#store.commit([{ op: 'delete', key: stored.key }]);
    return stored.value;
  }

  /** Creates a local user. Returns undefined when the name is taken. */
  async createUser(input: {
    username: string;
    password: string;
    email?: string | undefined;
    admin?: boolean | undefined;
  }): Promise<{ user: UserRecord; modRevision: number } | undefined> {
    const now = new Date().toISOString();
    const user: UserRecord = {
      name: input.username,
      admin: input.admin ?? false,
      source: 'local',
      passwordHash: await hashPassword(input.password),
      createdAt: now,
      updatedAt: now,
    };
    if (input.email) user.email = input.email;
    const res = await this.#store.commit([{ op: 'create', key: this.#keys.user(input.username), value: user }]);
    return res.ok ? { user, modRevision: res.revision } : undefined;
  }

  /** The admin from config, created on first start only (a later password change is the admin's). */
  async bootstrapAdmin(username: string, password: string): Promise<void> {
    const created = await this.createUser({ username, password, admin: true });
    if (created) this.#logger.info({ user: username }, 'bootstrapped the admin user');
  }

  async getUser(username: string): Promise<{ user: UserRecord; modRevision: number } | undefined> {
    const stored = await this.#store.get(this.#keys.user(username), userRecordSchema);
    return stored ? { user: stored.value, modRevision: stored.modRevision } : undefined;
  }
}
