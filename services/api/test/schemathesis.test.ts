/**
 * Schemathesis (PyPI; installed by infra/test-tools.sh) against the live API's openapi.json:
 * property-based requests to every operation, with an admin token, under all its checks but one: no
 * 5xx, every response as documented (status code, content type, headers, body schema), invalid
 * data refused, a method a path does not document answered 405 with Allow, and the rest.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { regionEnv } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_PASSWORD, ensureRegion, startApi, type TestApi } from './harness.ts';

const st = process.env.BERTH_SCHEMATHESIS ?? regionEnv().BERTH_SCHEMATHESIS;
let api: TestApi;
let token: string;

beforeAll(async () => {
  api = await startApi({
    LOGIN_RATE_LIMIT: '10000',
    LOGIN_RATE_LIMIT_PER_ADDRESS: '100000',
    // With a keyring, setting a secret is exercised for real (without one it answers 503).
    BERTH_SECRETS_KEYS: `k1:${randomBytes(32).toString('hex')}`,
  });
  await ensureRegion(api);
  // An admin personal access token, not the session: a fuzzed DELETE /users/me/sessions?all=true
  // would end the session and leave the rest of the run at 401.
  const pat = await api.call('POST', '/tokens', {
    token: api.adminToken,
    body: {
      name: 'schemathesis',
      scopes: ['admin'],
      expiresAt: new Date(Date.now() + 86_400_000).toISOString(),
      password: ADMIN_PASSWORD,
    },
  });
  if (pat.status !== 201) throw new Error(`admin token: ${pat.status} ${JSON.stringify(pat.json)}`);
  token = pat.json.token;
});

afterAll(async () => {
  await api?.stop();
});

describe('the OpenAPI document', () => {
  it('is OpenAPI 3.1 and lists every route', async () => {
    const res = await fetch(`${api.url}/api/v1/openapi.json`);
    const doc = (await res.json()) as { openapi: string; paths: Record<string, Record<string, unknown>> };
    expect(doc.openapi).toBe('3.1.0');
    const operations = Object.values(doc.paths).reduce((n, p) => n + Object.keys(p).length, 0);
    expect(operations).toBe(api.service.routes.length);
  });

  it('holds against Schemathesis: no 5xx, every response as documented', { timeout: 300_000 }, async () => {
    expect(st && existsSync(st), 'schemathesis is installed by infra/test-tools.sh (make test runs it)').toBe(true);
    const args = [
      '--config-file',
      join(dirname(fileURLToPath(import.meta.url)), 'schemathesis.toml'),
      'run',
      `${api.url}/api/v1/openapi.json`,
      '-H',
      `Authorization: Bearer ${token}`,
      '--checks',
      'all',
      // Not positive_data_acceptance (a request that matches the document must not get a 4xx
      // other than 401/403/404/409/429): the API refuses well-formed requests that name state
      // that is not there or past (a region that does not exist, an expiry in the past), values
      // JSON Schema cannot express (a CPU quantity of 0m), and answers 412 to an If-Match naming
      // another revision (RFC 9110 §13.1.1). Each of those is a 400 naming the field, or the 412.
      '--exclude-checks',
      'positive_data_acceptance',
      '--max-examples',
      '15',
      '--seed',
      '1',
      // One worker: with threads, Hypothesis parses lambda sources with ast.parse concurrently,
      // and CPython 3.11's ast is not thread-safe there ("SystemError: AST constructor recursion
      // depth mismatch", CPython gh-106905), which failed a CI run inside Schemathesis itself.
      '--workers',
      '1',
      '--no-color',
    ];
    const child = spawn(st as string, args, {
      cwd: tmpdir(), // schemathesis keeps a cache in its working directory
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NO_COLOR: '1' },
    });
    let output = '';
    child.stdout.on('data', (d) => {
      output += d;
    });
    child.stderr.on('data', (d) => {
      output += d;
    });
    const code = await new Promise<number>((resolve) => child.on('exit', (c) => resolve(c ?? 1)));
    // The failures section, each line cut short (a fuzzed body can be hundreds of kilobytes).
    const failures = output.slice(Math.max(0, output.indexOf('FAILURES')), output.indexOf('WARNINGS') + 1 || undefined);
    const report = (failures || output.slice(-6000))
      .split('\n')
      .map((line) => (line.length > 400 ? `${line.slice(0, 400)}… (${line.length} chars)` : line))
      .join('\n');
    expect(code, report).toBe(0);
    expect(api.logs()).not.toMatch(/"level":"(error|fatal)"/);
  });
});
