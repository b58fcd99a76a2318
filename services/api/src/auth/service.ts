/**
 * Authentication: bearer tokens (login sessions and personal access tokens), passwords (scrypt),
 * LDAP when configured, the admin bootstrapped from config, and the login rate limit.
 * docs/security.md says what each credential grants and what stops guessing.
 */
import { randomUUID } from 'node:crypto';
import {
  CompareFailedError,
  ConflictError,
  ForbiddenError,
  InputError,
  NotFoundError,
  UnauthorizedError,
} from '@berth/shared/errors';
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
import type { PasswordHasher } from './passwords.ts';
import { type Principal, type Scope, scopeCovers } from './principal.ts';
import type { LoginAttempt, LoginRateLimiter } from './rate-limit.ts';
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
  /** Every password hash and verify goes through it (a concurrency cap, the dummy verify). */
  hasher: PasswordHasher;
  /** Personal access tokens a user may hold at once. */
  maxTokensPerUser: number;
};

/** Where a sign-in comes from: the client address (express's req.ip) and its User-Agent. */
export type Client = { address: string; userAgent?: string | undefined };

const WRONG_PASSWORD = 'wrong user name or password';

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
  readonly #hasher: PasswordHasher;
  readonly #maxTokensPerUser: number;

  constructor(options: AuthOptions) {
    this.#store = options.store;
    this.#etcd = options.etcd;
    this.#mutations = options.mutations;
    this.#keys = options.keys;
    this.#logger = options.logger.child({ component: 'auth' });
    this.#rateLimiter = options.rateLimiter;
    this.#ldap = options.ldap;
    this.#sessionTtlMs = options.sessionTtlMs;
    this.#hasher = options.hasher;
    this.#maxTokensPerUser = options.maxTokensPerUser;
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
    // A user deleted and created again under the same name is another user: the id differs.
    if (!user || stored.value.userId !== user.value.id) {
      throw new UnauthorizedError('the token belongs to a user who no longer exists');
    }
    if (user.value.disabled) throw new UnauthorizedError('this user is disabled');
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

  /**
   * Password (or LDAP) login → a session token. A name that cannot be a user is refused before it
   * reaches any key; an unknown one costs the same hash as a wrong password; the rate limiter
   * counts failures only.
   */
  async login(
    username: string,
    password: string,
    client: Client,
  ): Promise<{ token: string; expiresAt: string; user: UserRecord }> {
    const user = await this.#signIn(username, password, client.address);
    const scopes: Scope[] = user.admin ? ['admin'] : ['write'];
    const { token, expiresAt } = await this.#issue(
      user,
      'session',
      'login',
      scopes,
      new Date(Date.now() + this.#sessionTtlMs),
      () => [{ kind: 'user', resourceId: user.name, action: 'logged-in' }],
      undefined,
      { address: client.address, userAgent: client.userAgent?.slice(0, 256) },
    );
    return { token, expiresAt, user };
  }

  /** A password check behind the rate limit: the user when right, else 401 (or 429, 403 disabled). */
  async #signIn(username: string, password: string, address: string): Promise<UserRecord> {
    if (!userNameSchema.safeParse(username).success) throw new UnauthorizedError(WRONG_PASSWORD);
    const attempt = await this.#rateLimiter.attempt(username, address);
    const user = await this.#checkPassword(username, password).catch(async (err: unknown) => {
      // Not known to be right (503 from the hasher, a store error): it counts as a failure.
      await this.#rateLimiter.failed(attempt);
      throw err;
    });
    if (!user) {
      await this.#rateLimiter.failed(attempt);
      throw new UnauthorizedError(WRONG_PASSWORD);
    }
    await this.#rateLimiter.succeeded(attempt);
    if (user.disabled) throw new ForbiddenError('this user is disabled; ask a platform admin');
    return user;
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
      if (!stored || !user || user.value.disabled || stored.value.userId !== user.value.id) {
        throw new UnauthorizedError('wrong user name or token');
      }
      const scopes = stored.value.scopes;
      return { user: username, admin: user.value.admin && scopeCovers(scopes, 'admin'), scopes };
    }
    const user = await this.#signIn(username, secret, address);
    return { user: user.name, admin: user.admin, scopes: user.admin ? ['admin'] : ['write'] };
  }

  /**
   * The user when the password is right. Every local outcome costs one hash: an unknown name (or a
   * user without a password) is verified against a dummy hash, so timing does not tell them apart.
   */
  async #checkPassword(username: string, password: string): Promise<UserRecord | undefined> {
    const stored = await this.#store.get(this.#keys.user(username), userRecordSchema);
    if (stored?.value.source === 'local' || (stored && !this.#ldap) || (!stored && !this.#ldap)) {
      const hash = stored?.value.passwordHash;
      if (!stored || !hash) return this.#hasher.verifyNobody(password).then(() => undefined);
      if (!(await this.#hasher.verify(password, hash))) return undefined;
      await this.#rehash(stored, password);
      return stored.value;
    }
    // A directory name Berth cannot store as a user (upper case, spaces…) cannot sign in.
    if (!this.#ldap || !userNameSchema.safeParse(username).success) return undefined;
    const entry = await this.#ldap.authenticate(username, password);
    if (!entry) return undefined;
    // First LDAP login creates the user; later ones refresh the e-mail.
    const now = new Date().toISOString();
    if (!stored) {
      const record: UserRecord = {
        name: username,
        id: randomUUID(),
        admin: false,
        source: 'ldap',
        disabled: false,
        createdAt: now,
        updatedAt: now,
      };
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

  /** A hash made at an older cost is replaced by one at today's, now that the password is known. */
  async #rehash(stored: { key: string; value: UserRecord; modRevision: number }, password: string): Promise<void> {
    const hash = stored.value.passwordHash;
    if (!hash || !this.#hasher.needsRehash(hash)) return;
    const next: UserRecord = { ...stored.value, passwordHash: await this.#hasher.hash(password) };
    try {
      await this.#store.commit([{ op: 'update', key: stored.key, value: next, modRevision: stored.modRevision }]);
      stored.value = next;
      this.#logger.info({ user: next.name }, 'password rehashed at the current cost');
    } catch (err) {
      // Changed meanwhile (a password change, say): that write wins; the next login tries again.
      if (!(err instanceof CompareFailedError)) throw err;
    }
  }

  async #issue(
    user: UserRecord,
    kind: TokenRecord['kind'],
    name: string,
    scopes: Scope[],
    expiresAt: Date,
    events: (record: TokenRecord) => ChangeEvent[],
    idempotency?: IdempotencyRequest,
    client?: { address: string; userAgent?: string | undefined },
  ): Promise<{ token: string; expiresAt: string; record: TokenRecord; modRevision: number }> {
    const minted = mintToken();
    const record: TokenRecord = {
      id: minted.id,
      user: user.name,
      ...(user.id ? { userId: user.id } : {}),
      kind,
      name,
      scopes,
      hash: minted.hash,
      createdAt: new Date().toISOString(),
      expiresAt: expiresAt.toISOString(),
      ...(client ? { address: client.address } : {}),
      ...(client?.userAgent ? { userAgent: client.userAgent } : {}),
    };
    // Expired tokens are removed by a lease: etcd deletes the key when the token expires.
    const ttlSeconds = Math.max(1, Math.ceil((expiresAt.getTime() - Date.now()) / 1000));
    const lease = this.#etcd.lease(ttlSeconds, { autoKeepAlive: false });
    const leaseId = await lease.grant();
    lease.release();
    const modRevision = await this.#mutations.commit(
      user.name,
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

  /**
   * A personal access token for the caller; the token is returned once. Needs the `write` scope
   * (the route checks it too). A session cannot make a token that outlives it unless the request
   * carries the password again: a stolen session must not turn into a year-long credential.
   */
  async createPersonalToken(
    principal: Principal,
    input: { name: string; scopes: Scope[]; expiresAt: string; password?: string | undefined },
    client: Client,
    events: (record: TokenRecord) => ChangeEvent[],
    idempotency?: IdempotencyRequest,
  ): Promise<{ token: string; record: TokenRecord; modRevision: number }> {
    this.requireScope(principal, 'write');
    if (input.scopes.includes('admin') && !principal.admin) {
      throw new ForbiddenError('only platform admins may create admin-scoped tokens');
    }
    for (const scope of input.scopes) this.requireScope(principal, scope);
    const expires = new Date(input.expiresAt);
    if (expires.getTime() <= Date.now()) {
      throw new InputError('expiresAt is in the past', [{ path: '$.expiresAt', message: 'must be in the future' }]);
    }
    const outlives = expires.getTime() > Date.parse(principal.tokenExpiresAt);
    // A personal token cannot outlive the personal token that made it: otherwise a leaked token
    // could renew itself forever and its expiry would mean nothing.
    if (principal.tokenKind === 'personal' && outlives) {
      throw new InputError('a token made with a personal access token cannot outlive it', [
        { path: '$.expiresAt', message: `at most ${principal.tokenExpiresAt}, when the calling token expires` },
      ]);
    }
    if (principal.tokenKind === 'session' && outlives) {
      if (input.password === undefined) {
        throw new ForbiddenError('a token that outlives this session needs your password again', {
          extensions: {
            errors: [
              { path: '$.expiresAt', message: `at most ${principal.tokenExpiresAt}, when this session expires` },
              { path: '$.password', message: 'or send your password to confirm' },
            ],
          },
        });
      }
      await this.#confirmPassword(principal.user, input.password, client);
    }
    const user = await this.#requireUser(principal.user);
    // Checked before the write (two racing requests can pass it together, by a token or two).
    const held = await this.listTokens(principal.user, 'personal');
    if (held.length >= this.#maxTokensPerUser) {
      throw new ConflictError(
        `you hold ${held.length} personal access tokens, the most allowed; revoke one (DELETE /tokens/{id})`,
      );
    }
    const { token, record, modRevision } = await this.#issue(
      user,
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

  /** The password of a signed-in user, checked again (behind the login rate limit); 403 when wrong. */
  async #confirmPassword(username: string, password: string, client: Client): Promise<UserRecord> {
    const attempt: LoginAttempt = await this.#rateLimiter.attempt(username, client.address);
    const user = await this.#checkPassword(username, password).catch(async (err: unknown) => {
      await this.#rateLimiter.failed(attempt);
      throw err;
    });
    if (!user) {
      await this.#rateLimiter.failed(attempt);
      throw new ForbiddenError('the password is wrong', {
        extensions: { errors: [{ path: '$.password', message: 'wrong password' }] },
      });
    }
    await this.#rateLimiter.succeeded(attempt);
    return user;
  }

  async #requireUser(name: string): Promise<UserRecord> {
    const stored = await this.#store.get(this.#keys.user(name), userRecordSchema);
    if (!stored) throw new UnauthorizedError('your user no longer exists');
    return stored.value;
  }

  /**
   * A user's live tokens (of one kind, or both). Tokens are keyed by id only, so this reads them
   * all: fine for thousands; an index by user is the next step past that.
   */
  async listTokens(user: string, kind?: TokenRecord['kind']): Promise<TokenRecord[]> {
    const found = await this.getUser(user);
    const all = await this.#store.list(this.#keys.tokens(), tokenRecordSchema);
    return all
      .map((s) => s.value)
      .filter(
        (t) =>
          t.user === user &&
          (kind === undefined || t.kind === kind) &&
          t.userId === found?.user.id &&
          Date.parse(t.expiresAt) > Date.now(),
      );
  }

  async listPersonalTokens(user: string): Promise<TokenRecord[]> {
    return this.listTokens(user, 'personal');
  }

  /** Revokes one token: the caller's own (any kind), or anyone's for an admin. */
  async deleteToken(
    principal: Principal,
    id: string,
    events: (record: TokenRecord) => ChangeEvent[],
    options: { user?: string; kind?: TokenRecord['kind'] } = {},
  ): Promise<void> {
    this.requireScope(principal, 'write');
    const owner = options.user ?? principal.user;
    await this.#mutations.commit(principal, async () => {
      const stored = await this.#store.get(this.#keys.token(id), tokenRecordSchema);
      const visible =
        stored &&
        (stored.value.user === principal.user || principal.admin) &&
        stored.value.user === (options.user ?? stored.value.user) &&
        (options.kind === undefined || stored.value.kind === options.kind);
      if (!stored || !visible) throw new NotFoundError(`no token ${id}${options.user ? ` of "${owner}"` : ''}`);
      return { ops: [{ op: 'delete', key: stored.key }], events: events(stored.value), result: () => undefined };
    });
  }

  /**
   * Sign out everywhere: every session of the caller but the one making the request, or all of
   * them with `all`. Personal access tokens stay (revoke them one by one). Returns how many ended.
   */
  async endSessions(principal: Principal, options: { all: boolean }): Promise<number> {
    this.requireScope(principal, 'write');
    return this.#mutations.commit(principal, async () => {
      const ended = (await this.listTokens(principal.user, 'session')).filter(
        (t) => options.all || t.id !== principal.tokenId,
      );
      return {
        ops: ended.map((t) => ({ op: 'delete' as const, key: this.#keys.token(t.id) })),
        events: [{ kind: 'user', resourceId: principal.user, action: 'signed-out', data: { sessions: ended.length } }],
        result: () => ended.length,
      };
    });
  }

  /**
   * A local user changes their own password: the current one is checked again (behind the login
   * rate limit), and every other session ends in the same transaction. Personal access tokens
   * stay, as on GitHub: they are separate credentials, each revocable on its own.
   */
  async changePassword(principal: Principal, current: string, next: string, client: Client): Promise<number> {
    this.requireScope(principal, 'write');
    const stored = await this.#store.get(this.#keys.user(principal.user), userRecordSchema);
    if (!stored) throw new UnauthorizedError('your user no longer exists');
    if (stored.value.source !== 'local') {
      throw new ConflictError('your password is kept by the directory (LDAP); change it there');
    }
    await this.#confirmPassword(principal.user, current, client);
    const passwordHash = await this.#hasher.hash(next);
    return this.#mutations.commit(principal, async () => {
      const user = await this.#store.get(this.#keys.user(principal.user), userRecordSchema);
      if (!user) throw new UnauthorizedError('your user no longer exists');
      const ended = (await this.listTokens(principal.user, 'session')).filter((t) => t.id !== principal.tokenId);
      const updated: UserRecord = { ...user.value, passwordHash, updatedAt: new Date().toISOString() };
      return {
        ops: [
          { op: 'update', key: user.key, value: updated, modRevision: user.modRevision },
          ...ended.map((t) => ({ op: 'delete' as const, key: this.#keys.token(t.id) })),
        ],
        events: [
          {
            kind: 'user',
            resourceId: principal.user,
            action: 'password-changed',
            data: { sessionsEnded: ended.length },
          },
        ],
        result: () => ended.length,
      };
    });
  }

  /**
   * An admin disables (or enables) a user. Disabled: no login, and every token of theirs is refused
   * at once (each request reads the user); their sessions are also deleted, so enabling the user
   * again brings back their personal access tokens but no session.
   */
  async setDisabled(
    principal: Principal,
    name: string,
    disabled: boolean,
    req?: Request,
  ): Promise<{ user: UserRecord; modRevision: number }> {
    if (name === principal.user && disabled) throw new ConflictError('you cannot disable yourself');
    return this.#mutations.commit(
      principal,
      async () => {
        const user = await this.#store.get(this.#keys.user(name), userRecordSchema);
        if (!user) throw new NotFoundError(`no user "${name}"`);
        const sessions = disabled ? await this.listTokens(name, 'session') : [];
        const updated: UserRecord = { ...user.value, disabled, updatedAt: new Date().toISOString() };
        const { passwordHash: _hidden, ...visible } = updated;
        return {
          ops: [
            { op: 'update', key: user.key, value: updated, modRevision: user.modRevision },
            ...sessions.map((t) => ({ op: 'delete' as const, key: this.#keys.token(t.id) })),
          ],
          pinned: user,
          events: [{ kind: 'user', resourceId: name, action: disabled ? 'disabled' : 'enabled', after: visible }],
          result: (modRevision) => ({ user: updated, modRevision }),
        };
      },
      { req },
    );
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
      id: randomUUID(),
      admin: input.admin ?? false,
      source: 'local',
      passwordHash: await this.#hasher.hash(input.password),
      disabled: false,
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
