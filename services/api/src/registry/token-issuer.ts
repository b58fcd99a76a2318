/**
 * Signs registry bearer tokens (distribution docs/spec/auth/jwt.md@v2.8.2) with jose: ES256,
 * header `kid` (libtrust) and `x5c`; claims `iss`, `sub` (empty for anonymous), `aud` as a string
 * (2.8 declares `Audience string`: an array fails to parse), `exp`, `nbf`, `iat`, `jti`, `access`.
 */
import { randomUUID } from 'node:crypto';
import { SignJWT } from 'jose';
import type { Access } from './scope.ts';
import type { SigningKey } from './signing-key.ts';

export type RegistryTokenOptions = {
  key: SigningKey;
  /** The registry's `auth.token.issuer`. */
  issuer: string;
  /** The registry's `auth.token.service`: the token's audience. */
  service: string;
  ttlMs: number;
};

export type IssuedToken = { token: string; expiresIn: number; issuedAt: string };

export class RegistryTokenIssuer {
  readonly #options: RegistryTokenOptions;

  constructor(options: RegistryTokenOptions) {
    this.#options = options;
  }

  get service(): string {
    return this.#options.service;
  }

  async issue(subject: string, access: Access[], now = Date.now()): Promise<IssuedToken> {
    const { key, issuer, service, ttlMs } = this.#options;
    const iat = Math.floor(now / 1000);
    const expiresIn = Math.floor(ttlMs / 1000);
    const token = await new SignJWT({ access })
      .setProtectedHeader({ alg: 'ES256', typ: 'JWT', kid: key.kid, x5c: [key.certificate] })
      .setIssuer(issuer)
      .setSubject(subject)
      .setAudience(service)
      .setIssuedAt(iat)
      .setNotBefore(iat)
      .setExpirationTime(iat + expiresIn)
      .setJti(randomUUID())
      .sign(key.privateKey);
    return { token, expiresIn, issuedAt: new Date(iat * 1000).toISOString() };
  }
}
