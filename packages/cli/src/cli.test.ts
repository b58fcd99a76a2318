import { mkdtempSync, readFileSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { BerthApiError, BerthConnectionError } from '@berth/client';
import { afterEach, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { configPath, effectiveConfig, writeConfig } from './config.ts';
import { describeError, UsageError } from './errors.ts';
import { run } from './main.ts';
import { parseFormat, render, style, table } from './output.ts';
import { parseCount, parseTag, parseVersionName, parseWeights } from './parse.ts';
import { requestsTable, settled, statusTable } from './program.ts';
import { formatLogLine } from './streams.ts';

function sink() {
  let text = '';
  const stream = new Writable({
    write(chunk, _e, done) {
      text += chunk;
      done();
    },
  }) as Writable & { isTTY?: boolean };
  return { stream, text: () => text };
}

async function berth(args: string[], env: NodeJS.ProcessEnv = {}) {
  const out = sink();
  const err = sink();
  const home = mkdtempSync(join(tmpdir(), 'berth-cli-'));
  const code = await run(args, {
    stdout: out.stream,
    stderr: err.stream as unknown as NodeJS.WriteStream,
    stdin: process.stdin,
    env: { XDG_CONFIG_HOME: home, ...env },
  });
  return { code, stdout: out.text(), stderr: err.text() };
}

afterEach(() => {
  process.exitCode = undefined;
});

describe('usage errors: one line on stderr, exit code 2', () => {
  it.each([
    [['apps', 'create', 'shop'], /^error: required option '--image <repo>' not specified$/],
    [['deploy', 'shop'], /^error: required option '--tag <tag>' not specified$/],
    [['deploy', 'shop', '--tag', 'v 2'], /^error: --tag must be an image tag/],
    [['deploy', 'shop', '--tag', 'v2', '--replicas', 'many'], /^error: --replicas must be a whole number/],
    [['scale', 'shop', 'two', '3'], /^error: a version is named v1, v2, … \(got "two"\)$/],
    [['scale', 'shop', 'v1'], /^error: missing required argument 'replicas'$/],
    [['traffic', 'set', 'shop', 'v1:90'], /^error: expected VERSION=PERCENT such as v1=90/],
    [['apps', 'delete', 'shop'], /^error: deleting app shop stops all of it: add --yes to go ahead$/],
    [['apps', 'list', '-o', 'xml'], /^error: -o must be one of table, json, yaml \(got "xml"\)$/],
    [['status', 'shop', '--wat'], /^error: unknown option '--wat'$/],
    [['nope'], /^error: unknown command 'nope'$/],
    [['login'], /^error: give --token T, or --username U --password-stdin$/],
    [['login', '--username', 'ann'], /^error: --username needs --password-stdin/],
    [['exec', 'shop'], /^error: give the command after --/],
    [['completion', 'fish'], /^error: completion is for bash or zsh/],
  ])('berth %j', async (args, line) => {
    const r = await berth(args, { BERTH_API_URL: 'http://127.0.0.1:1' });
    expect(r.code).toBe(2);
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr.trimEnd()).toMatch(line);
    expect(r.stdout).toBe('');
  });

  it('--help and --version exit 0', async () => {
    expect((await berth(['--version'])).stdout.trim()).toBe('0.1.0');
    const help = await berth(['apps', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/create \[options\] <name>/);
  });
});

/**
 * An in-process stand-in for the API's two build routes the log follow reads: the SSE log (ending
 * with `end`, or cut before it) and the run.
 */
async function fakeBuildApi(sse: string, run: Record<string, unknown>): Promise<{ url: string; server: Server }> {
  const server = createServer((req, res) => {
    if (req.url?.endsWith('/logs')) {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(sse);
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(run));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

describe('builds logs -f', () => {
  const log = (step: string, text: string) =>
    `event: log\ndata: ${JSON.stringify({ step, lines: [{ ts: '2026-01-01T00:00:00Z', stream: 'stdout', text }] })}\n\n`;

  it('prints each step with its duration and exits 1 when the run failed', async () => {
    const { url, server } = await fakeBuildApi(
      `${log('clone', 'cloned')}${log('compile', 'boom')}event: end\ndata: {"state":"failed"}\n\n`,
      {
        state: 'failed',
        reason: 'the compile step failed',
        steps: [
          { name: 'clone', state: 'succeeded', durationMs: 1200 },
          { name: 'compile', state: 'failed', durationMs: 300, error: 'exit code 2' },
        ],
      },
    );
    try {
      const r = await berth(['builds', 'logs', 'abcdefabcdefabcd', '-f'], { BERTH_API_URL: url });
      expect(r.code).toBe(1);
      expect(r.stdout.trimEnd().split('\n')).toEqual([
        '== clone',
        'cloned',
        expect.stringMatching(/^✓ clone succeeded in 1\.2s$/),
        '== compile',
        'boom',
        expect.stringMatching(/^✗ compile failed in 300ms: exit code 2$/),
        'build abcdefabcdefabcd failed: the compile step failed',
      ]);
    } finally {
      server.close();
    }
  });

  it('a stream cut before the run ended is an error, not a result: one line, exit 1', async () => {
    const { url, server } = await fakeBuildApi(log('clone', 'cloning'), { state: 'cloning', steps: [] });
    try {
      const r = await berth(['builds', 'logs', 'abcdefabcdefabcd', '-f'], { BERTH_API_URL: url });
      expect(r.code).toBe(1);
      expect(r.stdout).toBe('== clone\ncloning\n');
      expect(r.stderr).toBe(
        'error: the log of build abcdefabcdefabcd ended before the run did: follow it again with berth builds logs abcdefabcdefabcd -f\n',
      );
    } finally {
      server.close();
    }
  });
});

describe('API errors: one line, exit code 1', () => {
  it('an unreachable API names its address', async () => {
    const r = await berth(['apps', 'list', '--api', 'http://127.0.0.1:1']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: cannot reach the API at http:\/\/127\.0\.0\.1:1: [^\n]+\n$/);
  });

  it('maps the problem, its field paths, and a 401 to a hint to log in', () => {
    const bad = new BerthApiError(400, {
      title: 'Bad Request',
      detail: 'the body is invalid',
      errors: [{ path: '$.replicas', message: 'too big' }],
    });
    expect(describeError(bad)).toEqual({
      line: 'error: Bad Request: the body is invalid ($.replicas: too big) [400]',
      code: 1,
    });
    const expired = describeError(new BerthApiError(401, { title: 'Unauthorized', detail: 'the token has expired' }));
    expect(expired.code).toBe(1);
    expect(expired.line).toMatch(/^error: Unauthorized: the token has expired \[401\] \(log in again: berth login/);
    expect(describeError(new UsageError('no'))).toEqual({ line: 'error: no', code: 2 });
    expect(describeError(new BerthConnectionError('http://x', new Error('boom'))).code).toBe(1);
  });
});

describe('arguments', () => {
  it('traffic weights are VERSION=SHARE pairs, each version once', () => {
    expect(parseWeights(['v1=90', 'v2=10'])).toEqual({ v1: 90, v2: 10 });
    expect(parseWeights(['v3=1'])).toEqual({ v3: 1 });
    expect(() => parseWeights([])).toThrow(UsageError);
    expect(() => parseWeights(['v1=90', 'v1=10'])).toThrow('v1 is given twice');
    expect(() => parseWeights(['1=90'])).toThrow(UsageError);
  });

  it('counts, tags and version names', () => {
    expect(parseCount('N', '3')).toBe(3);
    expect(() => parseCount('N', '-1')).toThrow(UsageError);
    expect(() => parseCount('N', '1001')).toThrow('at most 1000');
    expect(parseTag('1.4.0-rc_1')).toBe('1.4.0-rc_1');
    expect(() => parseTag('.bad')).toThrow(UsageError);
    expect(parseVersionName('v12')).toBe('v12');
    expect(() => parseVersionName('v0')).toThrow(UsageError);
  });
});

describe('output', () => {
  const rows = [
    { name: 'shop', replicas: 2, image: null },
    { name: 'api-gateway', replicas: 10, image: 'team/gw' },
  ];
  const columns = [
    { header: 'NAME', get: (r: (typeof rows)[number]) => r.name },
    { header: 'REPLICAS', get: (r: (typeof rows)[number]) => r.replicas },
    { header: 'IMAGE', get: (r: (typeof rows)[number]) => r.image },
  ];

  it('tables pad every column but the last, and show nothing as -', () => {
    expect(table(rows, columns)).toBe(
      ['NAME         REPLICAS  IMAGE', 'shop         2         -', 'api-gateway  10        team/gw'].join('\n'),
    );
  });

  it('-o json and -o yaml print the data itself, which parses back', () => {
    expect(JSON.parse(render('json', rows, () => 'table'))).toEqual(rows);
    expect(parseYaml(render('yaml', rows, () => 'table'))).toEqual(rows);
    expect(render('table', rows, () => 'table')).toBe('table');
    expect(parseFormat(undefined)).toBe('table');
  });

  it('colours only a terminal, and never with NO_COLOR', () => {
    expect(style({ isTTY: false }, {}).red('x')).toBe('x');
    expect(style({ isTTY: true }, {}).red('x')).toBe('\x1b[31mx\x1b[39m');
    expect(style({ isTTY: true }, { NO_COLOR: '1' }).red('x')).toBe('x');
  });

  it('status: one row per version and cell; settled when every replica is ready where it is wanted', () => {
    const cell = (name: string, desired: number, ready: number) => ({
      cell: name,
      desired,
      ready,
      available: ready,
      updated: desired,
      restarts: 0,
    });
    const moving = {
      app: 'shop',
      versions: [
        { name: 'v2', replicas: 4, ready: 3, available: 3, cells: [cell('cell-a', 2, 2), cell('cell-b', 2, 1)] },
      ],
    };
    expect(settled(moving)).toBe(false);
    expect(statusTable(moving).split('\n')).toEqual([
      'VERSION  REPLICAS  CELL    DESIRED  READY  AVAILABLE  UPDATED  RESTARTS',
      'v2       4         cell-a  2        2      2          2        0',
      'v2       4         cell-b  2        1      1          2        0',
    ]);
    const done = {
      app: 'shop',
      versions: [{ ...moving.versions[0]!, ready: 4, cells: [cell('cell-a', 2, 2), cell('cell-b', 2, 2)] }],
    };
    expect(settled(done)).toBe(true);
    const scaledToZero = { app: 'shop', versions: [{ name: 'v1', replicas: 0, ready: 0, available: 0, cells: [] }] };
    expect(settled(scaledToZero)).toBe(true);
  });

  it('top: requests per version and status class, 0 for a version with none, and who did not answer', () => {
    const items = [{ version: 'v1' }, { version: 'v2' }, { version: 'v2' }];
    const requests = [{ version: 'v1', total: 12, '2xx': 10, '3xx': 0, '4xx': 1, '5xx': 1 }];
    const text = requestsTable({ window: '15m', items, requests, agents: { answered: 1, missing: 1 } });
    const lines = text.split('\n');
    expect(lines[0]).toBe('requests in the last 15m (1 of 2 lb-agents did not answer):');
    expect(lines[1]?.split(/\s+/)).toEqual(['VERSION', 'REQUESTS', '2XX', '3XX', '4XX', '5XX']);
    expect(lines[2]?.split(/\s+/)).toEqual(['v1', '12', '10', '0', '1', '1']);
    expect(lines[3]?.split(/\s+/)).toEqual(['v2', '0', '0', '0', '0', '0']);
    expect(lines).toHaveLength(4);
    expect(requestsTable({ window: '15m', items, requests: null, agents: { answered: 0, missing: 2 } })).toBe(
      'requests: none of the 2 lb-agents answered',
    );
    expect(requestsTable({ window: '15m', items, requests: null, agents: { answered: 0, missing: 0 } })).toMatch(
      /no lb-agent serves a domain/,
    );
  });

  it('log lines are prefixed with cell/instance', () => {
    expect(formatLogLine(JSON.stringify({ cell: 'cell-a', instance: 'shop-v1-x', line: 'hello' }))).toBe(
      'cell-a/shop-v1-x  hello',
    );
    expect(formatLogLine('not json')).toBe('not json');
  });

  it('completion scripts know the commands', async () => {
    const bash = await berth(['completion', 'bash']);
    expect(bash.code).toBe(0);
    expect(bash.stdout).toContain('complete -F _berth_complete berth');
    expect(bash.stdout).toMatch(/"apps"\) words="list create show delete/);
    expect((await berth(['completion', 'zsh'])).stdout).toMatch(/^#compdef berth/);
  });
});

describe('config', () => {
  it('lives under XDG_CONFIG_HOME with mode 600; flags beat the environment beat the file', () => {
    const home = mkdtempSync(join(tmpdir(), 'berth-config-'));
    const path = configPath({ XDG_CONFIG_HOME: home });
    expect(path).toBe(join(home, 'berth', 'config.json'));
    writeConfig(path, { api: 'http://stored:7070', token: 'stored-token' });
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(statSync(join(home, 'berth')).mode & 0o777).toBe(0o700);
    expect(JSON.parse(readFileSync(path, 'utf8'))).toEqual({ api: 'http://stored:7070', token: 'stored-token' });

    const env = { XDG_CONFIG_HOME: home };
    expect(effectiveConfig({}, env)).toMatchObject({ api: 'http://stored:7070', token: 'stored-token' });
    expect(effectiveConfig({}, { ...env, BERTH_API_URL: 'http://env:1/', BERTH_TOKEN: 'env-token' })).toMatchObject({
      api: 'http://env:1',
      token: 'env-token',
    });
    expect(effectiveConfig({ api: 'http://flag:2' }, { ...env, BERTH_API_URL: 'http://env:1' }).api).toBe(
      'http://flag:2',
    );
    expect(effectiveConfig({}, { XDG_CONFIG_HOME: join(home, 'none') }).api).toBe('http://127.0.0.1:7070');
  });
});
