/**
 * Authentication: bearer tokens (login sessions and personal access tokens), passwords (scrypt),
 * LDAP when configured, the admin bootstrapped from config, and the login rate limit.
 */
import { CompareFailedError, ForbiddenError, InputError, NotFoundError, UnauthorizedError } from '@berth/shared/errors';
import type { Etcd3 } from '@berth/shared/etcd';
import type { BerthKeys } from '@berth/shared/keys';
import type { Logger } from '@berth/shared/logging';
import { userNameSchema } from '@berth/shared/model';
import type { Store } from '@berth/shared/store';
import type { Request } from 'express';
import type { IdempotencyRequest } from '../http/idempotency.ts';
import type { ChangeEvent, Mutations } from '../http/mutation.ts';
import type { Access } from '../http/routes.ts';
import type { LdapDirectory } from './ldap.ts';
import { hashPassword, verifyPassword } from './passwords.ts';
import { type Principal, type Scope, scopeCovers } from './principal.ts';
import type { LoginRateLimiter } from './rate-limit.ts';
import { type TokenRecord, tokenRecordSchema, type UserRecord, userRecordSchema } from './records.ts';
import { mintToken, parseToken, secretMatches } from './tokens.ts';

export type AuthOptions = {
  store: Store;
  /** For the leases that expire tokens. */
  etcd: Etcd3;
  mutations: Mutations;
  keys: BerthKeys;
  logger: Logger;
  rateLimiter: LoginRateLimiter;
  ldap?: LdapDirectory | undefined;
  sessionTtlMs: number;
};

/** Who presented Basic credentials, and what their token (or password) lets them do. */
export type BasicIdentity = { user: string; admin: boolean; scopes: Scope[] };

export class AuthService {
  readonly #store: Store;
  readonly #etcd: Etcd3;
  readonly #mutations: Mutations;
  readonly #keys: BerthKeys;
  readonly #logger: Logger;
  readonly #rateLimiter: LoginRateLimiter;
  readonly #ldap: LdapDirectory | undefined;
  readonly #sessionTtlMs: number;

  constructor(options: AuthOptions) {
    this.#store = options.store;
    this.#etcd = options.etcd;
    this.#mutations = options.mutations;
    this.#keys = options.keys;
    this.#logger = options.logger.child({ component: 'auth' });
    this.#rateLimiter = options.rateLimiter;
    this.#ldap = options.ldap;
    this.#sessionTtlMs = options.sessionTtlMs;
  }

  /** The caller of a request, checked against what the route needs. */
  async authenticate(req: Request, access: Access): Promise<Principal | undefined> {
    const header = req.headers.authorization;
    if (access.kind === 'secret') {
      if (!access.verify(header)) throw new UnauthorizedError('send the shared secret as Authorization: Bearer');
      return undefined;
    }
    if (!header) {
      if (access.kind === 'public') return undefined;
      throw new UnauthorizedError('sign in: send Authorization: Bearer <token>');
    }
    // Basic credentials on a public route are that route's own (the registry token endpoint).
    if (access.kind === 'public' && /^Basic\s/i.test(header)) return undefined;
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
      () => [{ kind: 'user', resourceId: user.name, action: 'logged-in' }],
    );
    return { token, expiresAt, user };
  }

  /**
   * HTTP Basic credentials (the registry token endpoint, so `docker login`): the user's password
   * (or LDAP), or one of the user's tokens as the password. Throws 401 when they are wrong.
   */
  async checkBasic(username: string, secret: string, address: string): Promise<BasicIdentity> {
    const parsed = parseToken(secret);
    if (parsed) {
      const stored = await this.#store.get(this.#keys.token(parsed.id), tokenRecordSchema);
      const valid =
        stored &&
        stored.value.user === username &&
        secretMatches(parsed.secret, stored.value.hash) &&
        Date.parse(stored.value.expiresAt) > Date.now();
      const user = valid ? await this.#store.get(this.#keys.user(username), userRecordSchema) : undefined;
      if (!stored || !user) throw new UnauthorizedError('wrong user name or token');
      const scopes = stored.value.scopes;
      return { user: username, admin: user.value.admin && scopeCovers(scopes, 'admin'), scopes };
    }
    await this.#rateLimiter.attempt(username, address);
    const user = await this.#checkPassword(username, secret);
    if (!user) throw new UnauthorizedError('wrong user name or password');
    return { user: user.name, admin: user.admin, scopes: user.admin ? ['admin'] : ['write'] };
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
      try {
        await this.#store.commit([{ op: 'create', key: this.#keys.user(username), value: record }]);
        return record;
      } catch (err) {
        // A racing first login created it: use that one.
        if (!(err instanceof CompareFailedError)) throw err;
        return (await this.#store.get(this.#keys.user(username), userRecordSchema))?.value;
      }
    }
    return stored.value;
  }

  async #issue(
    user: string,
    kind: TokenRecord['kind'],
    name: string,
    scopes: Scope[],
    expiresAt: Date,
    events: (record: TokenRecord) => ChangeEvent[],
    idempotency?: IdempotencyRequest,
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
    const lease = this.#etcd.lease(ttlSeconds, { autoKeepAlive: false });
    const leaseId = await lease.grant();
    lease.release();
    const modRevision = await this.#mutations.commit(
      user,
      async () => ({
        ops: [{ op: 'create', key: this.#keys.token(minted.id), value: record, lease: leaseId }],
        events: events(record),
        result: (revision) => revision,
      }),
      {
        idempotency,
        // The secret is shown once and never stored, so a repeat cannot be answered with it.
        recordAnswer: () => ({
          status: 409,
          body: {
            type: 'https://berth.dev/problems/conflict',
            title: 'Conflict',
            status: 409,
            detail: `token ${record.id} was created by an earlier request with this Idempotency-Key; its secret is shown only once`,
          },
          headers: { 'Content-Type': 'application/problem+json' },
        }),
      },
    );
    return { token: minted.token, expiresAt: record.expiresAt, record, modRevision };
  }

  /** A personal access token for the caller; the token is returned once. */
  async createPersonalToken(
    principal: Principal,
    input: { name: string; scopes: Scope[]; expiresAt: string },
    events: (record: TokenRecord) => ChangeEvent[],
    idempotency?: IdempotencyRequest,
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
      events,
      idempotency,
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

  async deleteToken(principal: Principal, id: string, events: (record: TokenRecord) => ChangeEvent[]): Promise<void> {
    await this.#mutations.commit(principal, async () => {
      const stored = await this.#store.get(this.#keys.token(id), tokenRecordSchema);
      if (!stored || (stored.value.user !== principal.user && !principal.admin)) {
        throw new NotFoundError(`no token ${id}`);
      }
      return { ops: [{ op: 'delete', key: stored.key }], events: events(stored.value), result: () => undefined };
    });
  }

  /** A local user's record, its password hashed, for the caller to create. */
  async newUser(input: {
    username: string;
    password: string;
    email?: string | undefined;
    admin?: boolean | undefined;
  }): Promise<UserRecord> {
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
    return user;
  }

  /** The admin from config, created on first start only (a later password change is the admin's). */
  async bootstrapAdmin(username: string, password: string): Promise<void> {
    if (await this.#store.get(this.#keys.user(username), userRecordSchema)) return;
    const user = await this.newUser({ username, password, admin: true });
    try {
      await this.#store.commit([{ op: 'create', key: this.#keys.user(username), value: user }]);
      this.#logger.info({ user: username }, 'bootstrapped the admin user');
    } catch (err) {
      // Another API replica bootstrapped it first.
      if (!(err instanceof CompareFailedError)) throw err;
    }
  }

  async getUser(username: string): Promise<{ user: UserRecord; modRevision: number } | undefined> {
    const stored = await this.#store.get(this.#keys.user(username), userRecordSchema);
    return stored ? { user: stored.value, modRevision: stored.modRevision } : undefined;
  }
}
