import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseEnv } from '@berth/shared/config';
import { decodeProtectedHeader, importX509, jwtVerify } from 'jose';
import { afterAll, describe, expect, it } from 'vitest';
import { apiEnv } from '../env.ts';
import { grant, groupOfRepository, parseScope, parseScopes } from './scope.ts';
import { base32, libtrustKeyId, parseSigningKey } from './signing-key.ts';
import { RegistryTokenIssuer } from './token-issuer.ts';

const dir = mkdtempSync(join(tmpdir(), 'berth-registry-key-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A key file as infra/registry-token-key.sh makes it: key + self-signed certificate. */
function makeKeyFile(name: string, algorithm = ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256']): string {
  const key = join(dir, `${name}.key`);
  const cert = join(dir, `${name}.crt`);
  execFileSync('openssl', ['genpkey', ...algorithm, '-out', key], { stdio: 'ignore' });
  execFileSync('openssl', ['req', '-new', '-x509', '-key', key, '-out', cert, '-days', '1', '-subj', '/CN=t'], {
    stdio: 'ignore',
  });
  return readFileSync(key, 'utf8') + readFileSync(cert, 'utf8');
}

/** libtrust's key id computed by openssl and coreutils, apart from our code. */
function keyIdByOpenssl(pem: string): string {
  const keyFile = join(dir, 'oracle.pem');
  execFileSync('sh', ['-c', `cat > ${keyFile}`], { input: pem });
  const b32 = execFileSync(
    'sh',
    ['-c', `openssl pkey -in ${keyFile} -pubout -outform DER | openssl dgst -sha256 -binary | head -c 30 | base32`],
    { encoding: 'utf8' },
  ).trim();
  return b32.replace(/=+$/, '').match(/.{4}/g)?.join(':') ?? '';
}

describe('the libtrust key id', () => {
  it('is base32 of the first 240 bits of SHA-256 of the DER public key, in groups of 4', () => {
    const pem = makeKeyFile('a');
    const key = parseSigningKey(pem);
    expect(key.kid).toMatch(/^([A-Z2-7]{4}:){11}[A-Z2-7]{4}$/);
    expect(key.kid).toBe(keyIdByOpenssl(pem));
  });

  it('encodes base32 as RFC 4648 does', () => {
    // RFC 4648 §10 test vectors, without padding.
    expect(base32(Buffer.from('f'))).toBe('MY');
    expect(base32(Buffer.from('fo'))).toBe('MZXQ');
    expect(base32(Buffer.from('foobar'))).toBe('MZXW6YTBOI');
  });

  it('is of the key, not of the certificate', () => {
    const pem = makeKeyFile('b');
    const key = parseSigningKey(pem);
    const cert = Buffer.from(key.certificate, 'base64');
    expect(libtrustKeyId(cert)).not.toBe(key.kid);
  });
});

describe('the signing key file', () => {
  it('needs an EC P-256 key and a certificate of that key, and says which is wrong', () => {
    const a = makeKeyFile('c');
    const b = makeKeyFile('d');
    const keyOfA = a.slice(0, a.indexOf('-----BEGIN CERTIFICATE'));
    const certOfB = b.slice(b.indexOf('-----BEGIN CERTIFICATE'));
    expect(() => parseSigningKey(keyOfA)).toThrow(/no PEM certificate/);
    expect(() => parseSigningKey(certOfB)).toThrow(/no PEM private key/);
    expect(() => parseSigningKey(keyOfA + certOfB)).toThrow(/not of the private key/);
    const rsa = makeKeyFile('e', ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048']);
    expect(() => parseSigningKey(rsa)).toThrow(/EC P-256/);
  });
});

describe('the API config', () => {
  const base = {
    ETCD_ENDPOINTS: 'http://127.0.0.1:2379',
    NATS_URL: 'nats://127.0.0.1:4222',
    REDIS_URL: 'redis://127.0.0.1:6379',
  };

  it('reads the key from REGISTRY_TOKEN_KEY_FILE and checks it at start, never quoting it', () => {
    const good = join(dir, 'good.pem');
    writeFileSync(good, makeKeyFile('g'));
    const config = parseEnv(apiEnv, { ...base, REGISTRY_TOKEN_KEY_FILE: good });
    expect(config.REGISTRY_TOKEN_KEY).toContain('PRIVATE KEY');
    expect(config).toMatchObject({
      REGISTRY_TOKEN_ISSUER: 'berth',
      REGISTRY_TOKEN_SERVICE: 'berth-registry',
      REGISTRY_TOKEN_TTL: 300_000,
    });
    const rsa = makeKeyFile('h', ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048']);
    const bad = join(dir, 'rsa.pem');
    writeFileSync(bad, rsa);
    let message = '';
    try {
      parseEnv(apiEnv, { ...base, REGISTRY_TOKEN_KEY_FILE: bad });
    } catch (err) {
      message = JSON.stringify(err) + String(err);
    }
    expect(message).toMatch(/REGISTRY_TOKEN_KEY.*EC P-256/);
    expect(message).not.toContain('MII');
    expect(() => parseEnv(apiEnv, { ...base, REGISTRY_TOKEN_KEY_FILE: join(dir, 'missing.pem') })).toThrow(
      /REGISTRY_TOKEN_KEY_FILE|cannot read/,
    );
    expect(() => parseEnv(apiEnv, { ...base, REGISTRY_TOKEN_TTL: '30s' })).toThrow();
  });
});

describe('scopes', () => {
  it('parse type, name and actions; the name is between the first and the last colon', () => {
    expect(parseScope('repository:team/shop:pull,push')).toEqual({
      type: 'repository',
      name: 'team/shop',
      actions: ['pull', 'push'],
    });
    expect(parseScope('repository:localhost:5000/team/shop:pull')).toMatchObject({ name: 'localhost:5000/team/shop' });
    expect(parseScope('registry:catalog:*')).toEqual({ type: 'registry', name: 'catalog', actions: ['*'] });
    expect(parseScope('repository(plugin):team/x:pull')).toMatchObject({ type: 'repository(plugin)' });
    for (const bad of ['repository', 'repository:team/shop', ':team/shop:pull', 'repository::pull', 'r:n:PULL']) {
      expect(parseScope(bad), bad).toBeUndefined();
    }
  });

  it('repeated parameters and space-separated scopes merge per resource; bad ones are named', () => {
    const { scopes, bad } = parseScopes([
      'repository:team/a:pull',
      'repository:team/a:push repository:team/b:pull',
      'nonsense',
    ]);
    expect(scopes).toEqual([
      { type: 'repository', name: 'team/a', actions: ['pull', 'push'] },
      { type: 'repository', name: 'team/b', actions: ['pull'] },
    ]);
    expect(bad).toEqual(['nonsense']);
  });

  it('grant the intersection of what is asked and what is allowed, leaving out empty grants', async () => {
    const asked = parseScopes(['repository:team/a:pull,push', 'repository:team/b:push', 'repository:x/c:pull']).scopes;
    const allowed = async (s: { name: string }) =>
      new Set(s.name === 'team/a' ? ['pull'] : s.name === 'x/c' ? ['*'] : ['pull']);
    expect(await grant(asked, allowed)).toEqual([
      { type: 'repository', name: 'team/a', actions: ['pull'] },
      { type: 'repository', name: 'x/c', actions: ['pull'] },
    ]);
    expect(await grant([], allowed)).toEqual([]);
  });

  it('grants the same token whatever order the registry names the actions in', async () => {
    const all = async () => new Set(['pull', 'push', 'delete']);
    for (const text of ['repository:team/a:push,pull', 'repository:team/a:pull,push']) {
      expect(await grant(parseScopes([text]).scopes, all)).toEqual([
        { type: 'repository', name: 'team/a', actions: ['pull', 'push'] },
      ]);
    }
  });

  it('a repository belongs to the group of its first path segment', () => {
    expect(groupOfRepository('team/shop')).toBe('team');
    expect(groupOfRepository('team/sub/shop')).toBe('team');
    expect(groupOfRepository('shop')).toBeUndefined();
    expect(groupOfRepository('/shop')).toBeUndefined();
  });
});

describe('a registry token', () => {
  it('is an ES256 JWT with kid and x5c, a string audience, and the granted access', async () => {
    const key = parseSigningKey(makeKeyFile('f'));
    const issuer = new RegistryTokenIssuer({ key, issuer: 'berth', service: 'registry.test', ttlMs: 300_000 });
    const access = [{ type: 'repository', name: 'team/a', actions: ['pull'] }];
    const issued = await issuer.issue('alice', access);
    expect(issued.expiresIn).toBe(300);
    const header = decodeProtectedHeader(issued.token);
    expect(header).toMatchObject({ alg: 'ES256', typ: 'JWT', kid: key.kid, x5c: [key.certificate] });
    const cert = `-----BEGIN CERTIFICATE-----\n${key.certificate}\n-----END CERTIFICATE-----`;
    const { payload } = await jwtVerify(issued.token, await importX509(cert, 'ES256'), {
      issuer: 'berth',
      audience: 'registry.test',
    });
    expect(typeof payload.aud).toBe('string');
    expect(payload).toMatchObject({ sub: 'alice', access });
    expect(payload.exp).toBe((payload.iat ?? 0) + 300);
    expect(payload.nbf).toBe(payload.iat);
    expect(payload.jti).toMatch(/^[0-9a-f-]{36}$/);
    const anonymous = await issuer.issue('', []);
    expect((await jwtVerify(anonymous.token, await importX509(cert, 'ES256'))).payload).toMatchObject({
      sub: '',
      access: [],
    });
  });
});
