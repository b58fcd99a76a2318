/**
 * LDAP login (bind and search, with ldapts): bind as the service account, find the user's entry
 * with the configured filter, then bind as that entry with the given password. The directory
 * decides; Berth keeps only the user's name and e-mail.
 */
import { UnavailableError } from '@berth/shared/errors';
import { Client } from 'ldapts';

export type LdapConfig = {
  url: string;
  bindDn: string;
  bindPassword: string;
  userBaseDn: string;
  /** Search filter with `{username}`, e.g. `(uid={username})`. */
  userFilter: string;
  emailAttribute: string;
  timeoutMs?: number;
};

export type LdapUser = { dn: string; email: string | undefined };

/** RFC 4515 escaping of a value put into a filter. */
export function escapeFilterValue(value: string): string {
  return value.replace(/[\\*()\0]/g, (c) => `\\${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

export class LdapDirectory {
  readonly #config: LdapConfig;

  constructor(config: LdapConfig) {
    this.#config = config;
  }

  /** The user's entry when the password is right; undefined when the user or password is wrong. */
  async authenticate(username: string, password: string): Promise<LdapUser | undefined> {
    if (!password) return undefined; // an empty password is an anonymous bind: never a login
    const timeout = this.#config.timeoutMs ?? 5000;
    const service = new Client({ url: this.#config.url, timeout, connectTimeout: timeout });
    let entry: { dn: string; email: string | undefined } | undefined;
    try {
      await service.bind(this.#config.bindDn, this.#config.bindPassword);
      const filter = this.#config.userFilter.replaceAll('{username}', escapeFilterValue(username));
      const { searchEntries } = await service.search(this.#config.userBaseDn, {
        scope: 'sub',
        filter,
        attributes: ['dn', this.#config.emailAttribute],
        sizeLimit: 2,
      });
      if (searchEntries.length !== 1) return undefined;
      const found = searchEntries[0] as Record<string, unknown> & { dn: string };
      const mail = found[this.#config.emailAttribute];
      entry = {
        dn: found.dn,
        email: typeof mail === 'string' ? mail : Array.isArray(mail) ? String(mail[0]) : undefined,
      };
    } catch (err) {
      throw new UnavailableError('the LDAP directory cannot be searched right now', { cause: err });
    } finally {
      await service.unbind().catch(() => undefined);
    }
    if (!entry) return undefined;
    const asUser = new Client({ url: this.#config.url, timeout, connectTimeout: timeout });
    try {
      await asUser.bind(entry.dn, password);
      return entry;
    } catch (err) {
      if ((err as { code?: number }).code === 49) return undefined; // invalid credentials
      throw new UnavailableError('the LDAP directory cannot check passwords right now', { cause: err });
    } finally {
      await asUser.unbind().catch(() => undefined);
    }
  }
}
