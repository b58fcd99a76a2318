/**
 * `berth builds` against the running region: the sample app's build config `main` (made by make
 * up, infra/build-sample.sh: the sample's git repository, compiled in the Go image, pushed as
 * berth/sample-app) built by the region's builder-agent. A run is started, followed to its end
 * step by step, listed, and a second run is cancelled. Each run pushes a tag of its own (the
 * config's template), never v1 or v2, and nothing deploys it (autoDeploy is off).
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { startBerth, until, within } from './harness.ts';

const API = process.env.BERTH_API_URL ?? 'http://127.0.0.1:7070';
const TOKEN = process.env.BERTH_ADMIN_TOKEN;

type BuildRun = { id: string; number: number; state: string; steps: { name: string; state: string }[] };

describe('berth builds against the region: the sample app’s build config', () => {
  const home = mkdtempSync(join(tmpdir(), 'berth-builds-'));
  const berth = (args: string[]) => within(60_000, `berth ${args.join(' ')}`, startBerth(args, { home }));
  const runs = async (): Promise<BuildRun[]> => {
    const r = await berth(['builds', 'list', 'sample', 'main', '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout);
  };

  beforeAll(async () => {
    expect(TOKEN, 'BERTH_ADMIN_TOKEN: source .local/env (make up writes it)').toBeTruthy();
    const login = await berth(['login', '--api', API, '--token', TOKEN!]);
    expect(login.stderr).toBe('');
  });

  it('start, then logs -f follows the run to its end, each step with its duration as it finishes; list shows it', async () => {
    const started = await berth(['builds', 'start', 'sample', 'main', '-o', 'json']);
    expect(started.stderr).toBe('');
    expect(started.code).toBe(0);
    const run = JSON.parse(started.stdout) as BuildRun;
    expect(run.state).toMatch(/^(queued|cloning|compiling|building|pushing)$/);

    const follow = await within(
      240_000,
      'builds logs -f to end',
      startBerth(['builds', 'logs', run.id, '-f'], { home }),
    );
    expect(follow.stderr).toBe('');
    expect(follow.code, follow.stdout).toBe(0);
    const lines = follow.stdout.trimEnd().split('\n');
    expect(lines.at(-1)).toBe(`build ${run.id} succeeded`);
    const headers = lines.flatMap((l, i) => (l.startsWith('== ') ? [[l.slice(3), i] as const] : []));
    expect(headers.map(([s]) => s).slice(0, 1)).toEqual(['clone']);
    // Every step that ran has one line with its duration, printed once the log moved past it:
    // before the next step's header.
    const finished = (step: string) =>
      lines.findIndex((l) => new RegExp(`^✓ ${step} succeeded in \\d+(\\.\\d)?(ms|s|m)`).test(l));
    for (const [k, [step]] of headers.entries()) {
      const at = finished(step);
      expect(at, `✓ ${step} in ${follow.stdout}`).toBeGreaterThan(-1);
      expect(lines.filter((l) => l.startsWith(`✓ ${step} `))).toHaveLength(1);
      const next = headers[k + 1];
      if (next) expect(at, `${step} finished before ${next[0]} began`).toBeLessThan(next[1]);
    }
    expect(finished('push')).toBeGreaterThan(-1);

    const listed = (await runs()).find((r) => r.id === run.id);
    expect(listed).toMatchObject({ id: run.id, number: run.number, state: 'succeeded' });
    const table = await berth(['builds', 'list', 'sample', 'main']);
    expect(table.stdout.split('\n')[0]).toMatch(/^ID\s+#\s+REF\s+STATE\s+IMAGE\s+CREATED/);
    expect(table.stdout).toMatch(new RegExp(`^${run.id}\\s+${run.number}\\s+\\S+\\s+succeeded\\s`, 'm'));
  }, 300_000);

  it('cancel ends a second run as cancelled; logs -f of it exits 1', async () => {
    const started = await berth(['builds', 'start', 'sample', 'main', '-o', 'json']);
    expect(started.code, started.stderr).toBe(0);
    const run = JSON.parse(started.stdout) as BuildRun;

    const cancelled = await berth(['builds', 'cancel', run.id]);
    expect(cancelled.stderr).toBe('');
    expect(cancelled.code).toBe(0);
    expect(cancelled.stdout.trim()).toMatch(
      new RegExp(`^(build ${run.id} cancelled|cancelling build ${run.id} \\(its agent stops it\\))$`),
    );

    const ended = await until('the run cancelled in builds list -o json', 120_000, async () => {
      const r = (await runs()).find((x) => x.id === run.id);
      return r && ['succeeded', 'failed', 'cancelled'].includes(r.state) ? r : undefined;
    });
    expect(ended.state).toBe('cancelled');

    const follow = await within(
      60_000,
      'builds logs -f of a cancelled run',
      startBerth(['builds', 'logs', run.id, '-f'], { home }),
    );
    expect(follow.code).toBe(1);
    expect(follow.stdout.trimEnd().split('\n').at(-1)).toMatch(new RegExp(`^build ${run.id} cancelled`));

    const again = await berth(['builds', 'cancel', run.id]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/\[409\]\n$/);
  }, 240_000);
});
