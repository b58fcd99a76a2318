import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { MANIFEST_ACCEPT, ManifestNotConfirmedError, RegistryClient } from './registry.ts';

const DIGEST = `sha256:${'a'.repeat(64)}`;
let server: Server;
let base = '';
const seen: { method: string; url: string; accept?: string; auth?: string }[] = [];

beforeAll(async () => {
  server = createServer((req, res) => {
    seen.push({
      method: req.method ?? '',
      url: req.url ?? '',
      accept: req.headers.accept,
      auth: req.headers.authorization,
    });
    if (req.url?.startsWith('/token')) {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ token: 'tok' }));
      return;
    }
    if (req.url === `/v2/team/private/manifests/${DIGEST}` && req.headers.authorization !== 'Bearer tok') {
      res.writeHead(401, {
        'www-authenticate': `Bearer realm="${base}/token",service="registry",scope="repository:team/private:pull"`,
      });
      res.end();
      return;
    }
    if (req.url?.endsWith(`/manifests/${DIGEST}`) && !req.url.includes('missing')) {
      res.writeHead(200, { 'docker-content-digest': DIGEST });
      res.end();
      return;
    }
    res.writeHead(404);
    res.end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  base = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
});

afterAll(() => server.close());

describe('confirming a pushed manifest by digest', () => {
  test('a manifest the registry holds is confirmed with a HEAD that accepts v2 and OCI manifests', async () => {
    await new RegistryClient({ baseUrl: base }).confirmManifest('team/app', DIGEST, AbortSignal.timeout(5000));
    const head = seen.find((s) => s.url === `/v2/team/app/manifests/${DIGEST}`);
    expect(head).toMatchObject({ method: 'HEAD', accept: MANIFEST_ACCEPT });
    expect(MANIFEST_ACCEPT).toContain('application/vnd.oci.image.manifest.v1+json');
  });

  test('a manifest the registry does not have fails the confirmation', async () => {
    await expect(
      new RegistryClient({ baseUrl: base }).confirmManifest('team/missing', DIGEST, AbortSignal.timeout(5000)),
    ).rejects.toBeInstanceOf(ManifestNotConfirmedError);
  });

  test('a Bearer challenge is answered with a token from its realm, with the robot credential', async () => {
    const client = new RegistryClient({ baseUrl: base, credential: { username: 'run:1', password: 'pw' } });
    await client.confirmManifest('team/private', DIGEST, AbortSignal.timeout(5000));
    const token = seen.find((s) => s.url.startsWith('/token'));
    expect(token?.url).toContain('scope=repository%3Ateam%2Fprivate%3Apull');
    expect(token?.auth).toBe(`Basic ${Buffer.from('run:1:pw').toString('base64')}`);
  });

  test("a run's own credential, given per call, is what asks for the token", async () => {
    const client = new RegistryClient({ baseUrl: base });
    const run = { username: 'build@abcdef0123456789abcd.2', password: 'pw2' };
    await client.confirmManifest('team/private', DIGEST, AbortSignal.timeout(5000), run);
    const token = seen.filter((s) => s.url.startsWith('/token')).at(-1);
    expect(token?.auth).toBe(`Basic ${Buffer.from(`${run.username}:pw2`).toString('base64')}`);
  });
});
