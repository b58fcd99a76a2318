/**
 * `berth` against the running region's API and the sample app that make up deploys in its cells:
 * status settles, logs -f sees a line the app prints for a request sent through nginx, exec runs
 * a command in a real container and exits with its code, also in a pseudo-terminal (-it).
 * The sample image is FROM scratch: its only command is /sample-app (version, hostname, get URL).
 */
import { mkdtempSync } from 'node:fs';
import { get } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { berth, ENTRY, start, until } from './harness.ts';

const API = process.env.BERTH_API_URL ?? 'http://127.0.0.1:7070';
const LB = process.env.BERTH_LB_URL;
const TOKEN = process.env.BERTH_ADMIN_TOKEN;

/** GET / of the sample app through the region's nginx, by its domain (fetch cannot set Host). */
function viaNginx(): Promise<void> {
  return new Promise((resolve) => {
    get(`${LB}/`, { headers: { host: 'sample.berth.test' } }, (res) => {
      res.resume();
      res.on('end', () => resolve());
    }).on('error', () => resolve());
  });
}

describe('berth against the region and its sample app', () => {
  const home = mkdtempSync(join(tmpdir(), 'berth-region-'));
  let instances: string[] = [];

  beforeAll(async () => {
    expect(TOKEN, 'BERTH_ADMIN_TOKEN: source .local/env (make up writes it)').toBeTruthy();
    const login = await berth(['login', '--api', API, '--token', TOKEN!], { home });
    expect(login.stderr).toBe('');
    const list = await berth(['instances', 'sample', '-o', 'json'], { home });
    expect(list.code, `${list.stderr} (make up deploys the sample app)`).toBe(0);
    instances = JSON.parse(list.stdout).items.map((i: { instance: string }) => i.instance);
  });

  it('status --watch returns once every replica is ready', async () => {
    const r = await berth(['status', 'sample', '--watch', '--timeout', '120'], { home });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n')[0]).toMatch(/^VERSION\s+REPLICAS\s+CELL\s+DESIRED\s+READY/);
  });

  it('logs -f sees the line the app prints for a request, prefixed with cell/instance', async () => {
    expect(LB, 'BERTH_LB_URL: source .local/env').toBeTruthy();
    // The app logs `YYYY/MM/DD hh:mm:ss GET / from ADDR` (UTC, scratch image) for each GET /:
    // wait for one stamped no earlier than the first request sent after the stream opened.
    const logs = start(process.execPath, [ENTRY, 'logs', 'sample', '-f', '--tail', '1'], { home });
    try {
      const since = Math.floor(Date.now() / 1000) * 1000 - 1000;
      const line = await until('a request in the logs', 45_000, async () => {
        await viaNginx();
        return logs.out.stdout.split('\n').find((l) => {
          const m = / {2}(\d{4})\/(\d\d)\/(\d\d) (\d\d:\d\d:\d\d) GET \/ from /.exec(l);
          return m && Date.parse(`${m[1]}-${m[2]}-${m[3]}T${m[4]}Z`) >= since;
        });
      });
      expect(line).toMatch(/^cell-[a-z0-9-]+\/sample-v\d+-\S+ {2}/);
      expect(instances.some((i) => line.includes(`/${i} `))).toBe(true);
    } finally {
      logs.child.kill('SIGINT');
      await logs.done;
    }
  });

  it("exec runs a command in a ready instance and exits with the command's code", async () => {
    const ok = await berth(['exec', 'sample', '--', '/sample-app', 'hostname'], { home });
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
    expect(instances).toContain(ok.stdout.trim());

    const failing = await berth(['exec', 'sample', '--', '/sample-app', 'bogus'], { home });
    expect(failing.code).toBe(2);
    expect(failing.stderr).toContain('usage: sample-app');

    const named = await berth(['exec', 'sample', instances[0]!, '--', '/sample-app', 'hostname'], { home });
    expect(named.stdout.trim()).toBe(instances[0]);
  });

  it('exec -i passes stdin and its end: printf hello | berth exec sample -i -- /sample-app cat', async () => {
    // `/sample-app cat` copies stdin to stdout until end-of-file: it ends only once berth, its
    // own stdin ended, sent the stdin-eof frame.
    const r = await berth(['exec', 'sample', '-i', '--', '/sample-app', 'cat'], { home, input: 'hello\nworld\n' });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('hello\nworld\n');
  });

  it('exec without -i leaves stdin alone: the command reads nothing and does not wait', async () => {
    // berth's own stdin stays open: without -i it is never read, so nothing waits on it.
    const p = start(process.execPath, [ENTRY, 'exec', 'sample', '--', '/sample-app', 'cat'], { home });
    p.child.stdin.write('unread\n');
    const r = await p.done;
    p.child.stdin.destroy();
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('');
  });

  it('exec -it runs in a pseudo-terminal (script(1)), stdin and a tty through the socket', async () => {
    const cmd = [process.execPath, ENTRY, 'exec', 'sample', '-it', '--', '/sample-app', 'hostname'].join(' ');
    const r = await start('script', ['-qec', cmd, '/dev/null'], { home, env: { TERM: 'xterm' } }).done;
    expect(r.code).toBe(0);
    // A terminal turns \n into \r\n: the hostname came through a tty.
    expect(
      instances.some((i) => r.stdout.includes(`${i}\r`)),
      JSON.stringify(r),
    ).toBe(true);
  });

  it("builds logs -f replays a finished run of the sample's build config, each step with its duration", async () => {
    const runs = JSON.parse((await berth(['builds', 'list', 'sample', 'main', '-o', 'json'], { home })).stdout);
    const done = runs.find((r: { state: string }) => r.state === 'succeeded');
    expect(done, 'make up builds the sample app through Berth').toBeTruthy();
    const r = await berth(['builds', 'logs', done.id, '-f'], { home });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    const steps = lines.filter((l) => /^(==|✓) /.test(l));
    expect(steps.slice(0, 2)).toEqual(['== clone', expect.stringMatching(/^✓ clone succeeded in \d+(\.\d)?(ms|s)$/)]);
    expect(steps).toContainEqual(expect.stringMatching(/^✓ push succeeded in /));
    expect(lines.at(-1)).toBe(`build ${done.id} succeeded`);
  });

  it('top shows the requests per version that the lb-agents counted, beside CPU and memory', async () => {
    expect(LB, 'BERTH_LB_URL: source .local/env').toBeTruthy();
    const top = async () => {
      const r = await berth(['top', 'sample', '-o', 'json'], { home });
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      return JSON.parse(r.stdout) as {
        items: { cpuCores: number | null }[];
        requests: { version: string; total: number }[] | null;
        agents: { answered: number; missing: number };
      };
    };
    const sum = (m: Awaited<ReturnType<typeof top>>) => (m.requests ?? []).reduce((n, r) => n + r.total, 0);
    const before = await top();
    expect(before.agents.answered).toBeGreaterThanOrEqual(1);
    expect(before.items.length).toBeGreaterThan(0);
    for (let i = 0; i < 5; i++) await viaNginx();
    const after = await top();
    expect(after.requests).not.toBeNull();
    expect(sum(after) - sum(before)).toBeGreaterThanOrEqual(5);
    const human = await berth(['top', 'sample'], { home });
    expect(human.stdout).toMatch(/^VERSION\s+CELL\s+READY\s+CPU\s+MEMORY/);
    expect(human.stdout).toMatch(/\nVERSION\s+REQUESTS\s+2XX\s+3XX\s+4XX\s+5XX\n/);
  });

  it('a command that does not exist in the image: one line, exit 1', async () => {
    const r = await berth(['exec', 'sample', '--', 'sh'], { home });
    expect(r.code).toBe(1);
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^error: .*"sh": executable file not found/);
  });
});

describe('a journey with real pods: create, deploy, watch, shift traffic, exec, roll back, delete', () => {
  const home = mkdtempSync(join(tmpdir(), 'berth-region-'));
  const app = `cli-${process.pid}-${Date.now().toString(36)}`.slice(0, 30);
  const run = (args: string[]) => berth(args, { home });

  beforeAll(async () => {
    expect((await run(['login', '--api', API, '--token', TOKEN!])).code).toBe(0);
  });

  afterAll(async () => {
    await run(['apps', 'delete', app, '--yes']);
  });

  it('goes from nothing to two versions and back, every step settled in the cells', async () => {
    const tag = JSON.parse((await run(['versions', 'list', 'sample', '-o', 'json'])).stdout)[0].imageTag;
    expect((await run(['apps', 'create', app, '--image', 'berth/sample-app', '--min-cells', '2'])).code).toBe(0);
    const v1 = await run(['deploy', app, '--tag', tag, '--replicas', '2', '--cpu', '50m', '--memory', '32Mi']);
    expect(v1.stderr).toBe('');

    const watched = await run(['status', app, '--watch', '--timeout', '120', '-o', 'json']);
    expect(watched.stderr).toBe('');
    const settledV1 = JSON.parse(watched.stdout);
    expect(settledV1.versions).toEqual([expect.objectContaining({ name: 'v1', replicas: 2, ready: 2 })]);
    expect(settledV1.versions[0].cells).toHaveLength(2);

    const v2 = await run(['deploy', app, '--tag', tag, '--env', 'GREETING=v2', '-o', 'json']);
    expect(JSON.parse(v2.stdout)).toMatchObject({ name: 'v2', replicas: 2, env: { GREETING: 'v2' } });
    expect((await run(['status', app, '--watch', '--timeout', '120'])).code).toBe(0);

    const traffic = await run(['traffic', 'set', app, 'v1=90', 'v2=10', '-o', 'json']);
    expect(JSON.parse(traffic.stdout).weights).toEqual({ v1: 90, v2: 10 });

    const exec = await run(['exec', app, '--', '/sample-app', 'version']);
    expect(exec.code).toBe(0);
    expect(exec.stdout.trim()).toMatch(/^v\d+/);

    const back = await run(['rollback', app, 'v1']);
    expect(back.stderr).toBe('');
    expect((await run(['status', app, '--watch', '--timeout', '120'])).code).toBe(0);
    const versions = JSON.parse((await run(['versions', 'list', app, '-o', 'json'])).stdout);
    expect(versions.map((v: { name: string; replicas: number }) => [v.name, v.replicas])).toEqual([
      ['v2', 0],
      ['v1', 2],
    ]);

    const deleted = await run(['apps', 'delete', app, '--yes']);
    expect(deleted.stdout.trim()).toBe(`app ${app} deleted`);
    const gone = await run(['apps', 'show', app]);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/\[404\]\n$/);
  }, 420_000);
});
