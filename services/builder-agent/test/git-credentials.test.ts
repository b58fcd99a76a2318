/**
 * A repository behind HTTP Basic auth (git's own smart-HTTP server, `git http-backend`, behind a
 * small Node server): the config names a credential, the agent sends it as a header, and the
 * secret is never in the URL the mirror keeps, the run, the build log or the agent's log.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { GitMirrors } from '../src/steps/git.ts';
import {
  gitRepo,
  logText,
  openWorld,
  putConfig,
  queueRun,
  readLog,
  startAgent,
  type World,
  waitForState,
} from './harness.ts';

const USER = 'ci-bot';
const SECRET = 's3cret-token-5f1e9a';

let world: World;
let agent: Awaited<ReturnType<typeof startAgent>>;
let server: Server;
let base = '';

/** git's smart-HTTP protocol through `git http-backend` (CGI), with Basic auth. */
function gitHttpServer(projectRoot: string): Server {
  return createServer((req, res) => {
    const expected = `Basic ${Buffer.from(`${USER}:${SECRET}`).toString('base64')}`;
    if (req.headers.authorization !== expected) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="git"' });
      res.end('unauthorized');
      return;
    }
    const url = new URL(req.url ?? '/', 'http://x');
    const cgi = spawn('git', ['http-backend'], {
      env: {
        ...process.env,
        GIT_PROJECT_ROOT: projectRoot,
        GIT_HTTP_EXPORT_ALL: '1',
        REQUEST_METHOD: req.method ?? 'GET',
        PATH_INFO: decodeURIComponent(url.pathname),
        QUERY_STRING: url.search.slice(1),
        CONTENT_TYPE: req.headers['content-type'] ?? '',
        REMOTE_USER: USER,
        REMOTE_ADDR: '127.0.0.1',
        ...(req.headers['git-protocol'] ? { GIT_PROTOCOL: String(req.headers['git-protocol']) } : {}),
      },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    req.pipe(cgi.stdin);
    let head = Buffer.alloc(0);
    let headersDone = false;
    cgi.stdout.on('data', (chunk: Buffer) => {
      if (headersDone) {
        res.write(chunk);
        return;
      }
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      headersDone = true;
      let status = 200;
      for (const line of head.subarray(0, end).toString().split('\r\n')) {
        const [name, ...rest] = line.split(':');
        const value = rest.join(':').trim();
        if (name?.toLowerCase() === 'status') status = Number(value.split(' ')[0]);
        else if (name) res.setHeader(name, value);
      }
      res.writeHead(status);
      res.write(head.subarray(end + 4));
    });
    cgi.stdout.on('end', () => res.end());
  });
}

beforeAll(async () => {
  world = await openWorld();
  const credentials = join(world.tmp, 'credentials');
  mkdirSync(credentials);
  writeFileSync(join(credentials, 'ci'), `${USER}:${SECRET}\n`);
  agent = await startAgent(world, { BUILDER_CREDENTIALS_DIR: credentials });
  server = gitHttpServer(world.tmp);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  base = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
});

afterAll(async () => {
  await agent?.service.stop();
  server?.close();
  await world?.close();
});

describe('git credentials', () => {
  test('a private repository is cloned with the named credential, which shows up nowhere', async () => {
    const repo = gitRepo(world, { Dockerfile: 'FROM scratch\nCOPY a.txt /a.txt\n', 'a.txt': 'private\n' });
    const url = `${base}/${repo.url.slice(world.tmp.length + 1)}`;
    const config = await putConfig(world, { git: { url, branch: 'main', credentialsRef: 'ci' } });
    const run = await waitForState(world, (await queueRun(world, config, agent.id)).id, ['succeeded', 'failed']);
    expect(run.reason).toBeNull();
    expect(run.state).toBe('succeeded');
    expect(run.commit).toBe(repo.commit);

    const basic = Buffer.from(`${USER}:${SECRET}`).toString('base64');
    const mirrorConfig = readFileSync(
      join(new GitMirrors({ dir: join(agent.dataDir, 'mirrors') }).mirrorPath(url), 'config'),
      'utf8',
    );
    for (const text of [JSON.stringify(run), logText(await readLog(world, run.id)), agent.logs(), mirrorConfig]) {
      expect(text).not.toContain(SECRET);
      expect(text).not.toContain(basic);
    }
    expect(mirrorConfig).toContain(`url = ${url}`);
  });

  test('without the credential the clone fails with git’s message', async () => {
    const repo = gitRepo(world, { Dockerfile: 'FROM scratch\n' });
    const url = `${base}/${repo.url.slice(world.tmp.length + 1)}`;
    const config = await putConfig(world, { git: { url, branch: 'main' } });
    const run = await waitForState(world, (await queueRun(world, config, agent.id)).id, ['succeeded', 'failed']);
    expect(run.state).toBe('failed');
    expect(run.steps.find((s) => s.name === 'clone')?.error).toMatch(
      /Authentication failed|could not read Username|401/,
    );
  });

  test('a credential the agent does not have fails the clone, naming it', async () => {
    const repo = gitRepo(world, { Dockerfile: 'FROM scratch\n' });
    const config = await putConfig(world, { git: { url: repo.url, branch: 'main', credentialsRef: 'nobody' } });
    const run = await waitForState(world, (await queueRun(world, config, agent.id)).id, ['succeeded', 'failed']);
    expect(run.state).toBe('failed');
    expect(run.steps.find((s) => s.name === 'clone')?.error).toBe('credential "nobody" is unknown on this agent');
  });
});
