/**
 * LDAP login against a real slapd (Debian's), started here with its own config, database and port.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exited, freePort, waitFor } from '@berth/shared/testing';
import { Client } from 'ldapts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApi, type TestApi } from './harness.ts';

const SUFFIX = 'dc=berth,dc=test';
const SERVICE_DN = `cn=berth,ou=services,${SUFFIX}`;
const SERVICE_PASSWORD = 'service-account-password';

let dir: string;
let slapd: ChildProcess;
let url: string;
let api: TestApi;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'berth-slapd-'));
  mkdirSync(join(dir, 'db'));
  const conf = join(dir, 'slapd.conf');
  writeFileSync(
    conf,
    [
      'include /etc/ldap/schema/core.schema',
      'include /etc/ldap/schema/cosine.schema',
      'include /etc/ldap/schema/inetorgperson.schema',
      'modulepath /usr/lib/ldap',
      'moduleload back_mdb',
      `pidfile ${dir}/slapd.pid`,
      'database mdb',
      `suffix "${SUFFIX}"`,
      `rootdn "cn=root,${SUFFIX}"`,
      'rootpw root-password',
      `directory ${dir}/db`,
      'access to attrs=userPassword by self read by anonymous auth by * none',
      'access to * by * read',
      '',
    ].join('\n'),
  );
  const ldif = join(dir, 'seed.ldif');
  writeFileSync(
    ldif,
    [
      `dn: ${SUFFIX}`,
      'objectClass: dcObject',
      'objectClass: organization',
      'o: Berth test',
      'dc: berth',
      '',
      `dn: ou=people,${SUFFIX}`,
      'objectClass: organizationalUnit',
      'ou: people',
      '',
      `dn: ou=services,${SUFFIX}`,
      'objectClass: organizationalUnit',
      'ou: services',
      '',
      `dn: ${SERVICE_DN}`,
      'objectClass: person',
      'cn: berth',
      'sn: berth',
      `userPassword: ${SERVICE_PASSWORD}`,
      '',
      `dn: uid=lily,ou=people,${SUFFIX}`,
      'objectClass: inetOrgPerson',
      'uid: lily',
      'cn: Lily',
      'sn: Li',
      'mail: lily@example.test',
      'userPassword: lily-directory-password',
      '',
    ].join('\n'),
  );
  execFileSync('slapadd', ['-f', conf, '-l', ldif], { stdio: 'pipe' });
  const port = await freePort();
  url = `ldap://127.0.0.1:${port}`;
  slapd = spawn('slapd', ['-f', conf, '-h', `${url}/`, '-d', '0'], { stdio: 'ignore' });
  await waitFor(
    async () => {
      const c = new Client({ url });
      try {
        await c.bind(SERVICE_DN, SERVICE_PASSWORD);
        return true;
      } finally {
        await c.unbind().catch(() => undefined);
      }
    },
    { timeoutMs: 15_000, message: 'slapd answers' },
  );
  api = await startApi({
    LDAP_URL: url,
    LDAP_BIND_DN: SERVICE_DN,
    LDAP_BIND_PASSWORD: SERVICE_PASSWORD,
    LDAP_USER_BASE_DN: `ou=people,${SUFFIX}`,
  });
});

afterAll(async () => {
  await api?.stop();
  if (slapd && slapd.exitCode === null) {
    const done = exited(slapd);
    slapd.kill('SIGTERM');
    await done;
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('LDAP login', () => {
  it('a directory user signs in with the directory password and becomes a Berth user', async () => {
    const res = await api.call('POST', '/auth/login', {
      body: { username: 'lily', password: 'lily-directory-password' },
    });
    expect(res.status).toBe(200);
    const me = await api.call('GET', '/users/me', { token: res.json.token });
    expect(me.json).toMatchObject({ name: 'lily', source: 'ldap', email: 'lily@example.test', admin: false });
    // A second login finds the same user.
    expect(
      (await api.call('POST', '/auth/login', { body: { username: 'lily', password: 'lily-directory-password' } }))
        .status,
    ).toBe(200);
  });

  it('a wrong password, an unknown user, an empty password and a filter injection are all 401', async () => {
    for (const body of [
      { username: 'lily', password: 'not-her-password' },
      { username: 'nobody', password: 'whatever-password' },
      { username: 'lily', password: '' },
      { username: '*', password: 'lily-directory-password' },
      { username: 'lily)(uid=*', password: 'lily-directory-password' },
    ]) {
      const res = await api.call('POST', '/auth/login', { body });
      expect(res.status, JSON.stringify(body)).toBe(body.password === '' ? 400 : 401);
    }
  });

  it('local users still sign in with their own password', async () => {
    expect(await api.login('admin', 'admin-password-for-tests')).toMatch(/^berth_/);
  });

  it('the service account password never reaches the log', async () => {
    expect(api.logs()).not.toContain(SERVICE_PASSWORD);
  });
});
