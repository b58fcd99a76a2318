/**
 * `berth` as a new user runs it, as a child process with its own XDG_CONFIG_HOME, against a real
 * API started in this test (the region's etcd, NATS and Redis). No scheduler runs here: status
 * shows what the API knows, and `status --watch`, logs and exec against running pods are left to
 * a journey with cells.
 */
import { mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { uniqueId } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { ensureRegion, startApi, type TestApi } from '../../../services/api/test/harness.ts';
import { berth, type Run, startBerth, until } from './harness.ts';

function oneLine(r: Run): string {
  const lines = r.stderr.trimEnd().split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  return lines[0]!;
}

describe('berth against a real API', () => {
  let api: TestApi;
  let home: string;
  const user = `cli-${uniqueId().slice(0, 8)}`;
  const app = `shop-${uniqueId().slice(0, 6)}`;
  const run = (args: string[], input?: string) => berth(args, { home, ...(input ? { input } : {}) });

  beforeAll(async () => {
    api = await startApi();
    await ensureRegion(api);
    await api.user(user);
    home = mkdtempSync(join(tmpdir(), 'berth-journey-'));
  });

  afterAll(async () => {
    await api?.stop();
  });

  it('logs in with a password from stdin and stores a token, not the password, with mode 600', async () => {
    const r = await run(['login', '--api', api.url, '--username', user, '--password-stdin'], `pw-${user}-12345\n`);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(`logged in to ${api.url} as ${user}`);
    const path = join(home, 'berth', 'config.json');
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const stored = JSON.parse(readFileSync(path, 'utf8'));
    expect(stored).toMatchObject({ api: api.url, user });
    expect(stored.token).toEqual(expect.any(String));
    expect(readFileSync(path, 'utf8')).not.toContain(`pw-${user}`);

    const me = await run(['whoami', '-o', 'json']);
    expect(me.code).toBe(0);
    expect(JSON.parse(me.stdout)).toMatchObject({ name: user, admin: false });
  });

  it('creates, lists and shows an app', async () => {
    const created = await run(['apps', 'create', app, '--image', 'team/shop', '--port', '8080', '--min-cells', '1']);
    expect(created.stderr).toBe('');
    expect(created.stdout.trim()).toBe(`app ${app} created in local (image team/shop)`);

    const list = await run(['apps', 'list', '-o', 'json']);
    expect(list.code).toBe(0);
    expect(JSON.parse(list.stdout)).toEqual([expect.objectContaining({ name: app, minCells: 1, owner: user })]);

    const table = await run(['apps', 'list']);
    expect(table.stdout.split('\n')[0]).toMatch(/^NAME\s+REGION\s+IMAGE\s+MIN-CELLS\s+VERSIONS\s+OWNER$/);
    expect(table.stdout).toContain(app);

    const show = await run(['apps', 'show', app, '-o', 'yaml']);
    expect(show.code).toBe(0);
    expect(parseYaml(show.stdout)).toMatchObject({ name: app, ports: [{ name: 'http', port: 8080 }], versions: [] });
  });

  it('deploys tags as new versions from the newest, scales, shifts traffic and rolls back', async () => {
    const first = await run(['deploy', app, '--tag', '1.0', '--replicas', '2', '--cpu', '100m', '--memory', '64Mi']);
    expect(first.stderr).toBe('');
    expect(first.stdout.trim()).toBe(`${app} v1 created: tag 1.0, 2 replicas of 100m CPU, 64Mi`);
    // Only the tag changes: replicas, cpu and memory come from v1.
    const second = await run(['deploy', app, '--tag', '1.1', '-o', 'json']);
    expect(second.code).toBe(0);
    expect(JSON.parse(second.stdout)).toMatchObject({ name: 'v2', imageTag: '1.1', replicas: 2, cpu: '100m' });

    const scaled = await run(['scale', app, 'v2', '3']);
    expect(scaled.stdout.trim()).toBe(`${app} v2 scaled to 3`);

    const versions = JSON.parse((await run(['versions', 'list', app, '-o', 'json'])).stdout);
    expect(versions.map((v: { name: string; replicas: number }) => [v.name, v.replicas])).toEqual([
      ['v2', 3],
      ['v1', 2],
    ]);

    const traffic = await run(['traffic', 'set', app, 'v1=90', 'v2=10', '-o', 'json']);
    expect(traffic.stderr).toBe('');
    expect(JSON.parse(traffic.stdout)).toMatchObject({ app, mode: 'weights', weights: { v1: 90, v2: 10 } });
    const shown = await run(['traffic', 'show', app]);
    expect(shown.stdout).toMatch(/^VERSION\s+WEIGHT\nv1\s+90\nv2\s+10\n$/);

    const status = await run(['status', app, '-o', 'json']);
    expect(status.code).toBe(0);
    expect(
      JSON.parse(status.stdout)
        .versions.map((v: { name: string }) => v.name)
        .sort(),
    ).toEqual(['v1', 'v2']);

    const back = await run(['rollback', app, 'v1', '-o', 'json']);
    expect(back.stderr).toBe('');
    expect(JSON.parse(back.stdout)).toMatchObject({ target: { name: 'v1' }, previous: { name: 'v2' } });

    const members = JSON.parse((await run(['members', 'list', app, '-o', 'json'])).stdout);
    expect(members).toEqual([expect.objectContaining({ user, role: 'Owner' })]);

    const events = await run(['events', app, '-o', 'json']);
    expect(events.code).toBe(0);
    expect(JSON.parse(events.stdout).length).toBeGreaterThan(0);
  });

  it('events --follow prints a change made while it runs', async () => {
    const follow = startBerth(['events', app, '--follow', '--limit', '1'], { home });
    try {
      await until('the newest event', 20_000, () => (follow.out.stdout.includes('\n') ? true : undefined));
      const before = follow.out.stdout.length;
      expect((await run(['scale', app, 'v1', '1'])).code).toBe(0);
      const line = await until('the scale in the feed', 20_000, () =>
        follow.out.stdout
          .slice(before)
          .split('\n')
          .find((l) => l.includes('version/v1')),
      );
      expect(line).toMatch(new RegExp(`^\\S+Z\\s+${user}\\s+version/v1\\s+\\S+$`));
    } finally {
      follow.child.kill('SIGINT');
      await follow.done;
    }
  });

  it('bad input: one line and exit 2 for usage, 1 for what the API refused', async () => {
    const flag = await run(['deploy', app, '--tag', '1.2', '--bogus']);
    expect(flag.code).toBe(2);
    expect(oneLine(flag)).toBe("error: unknown option '--bogus'");

    const unknown = await run(['apps', 'show', 'no-such-app']);
    expect(unknown.code).toBe(1);
    expect(oneLine(unknown)).toMatch(/^error: Not Found: .*no-such-app.* \[404\]$/);

    const invalid = await run(['scale', app, 'v9', '1']);
    expect(invalid.code).toBe(1);
    expect(oneLine(invalid)).toMatch(/\[404\]$/);

    const weights = await run(['traffic', 'set', app, 'v7=100']);
    expect(weights.code).toBe(1);
    expect(oneLine(weights)).toMatch(/v7.*\[4\d\d\]$/);
  });

  it('a token that is invalid or revoked: one line naming the problem, exit 1', async () => {
    const invalid = await berth(['whoami'], { home, env: { BERTH_TOKEN: 'not-a-berth-token' } });
    expect(invalid.code).toBe(1);
    expect(oneLine(invalid)).toMatch(/^error: Unauthorized: .* \[401\] \(log in again: berth login/);

    // A second login elsewhere, its token revoked through the API: that config no longer works.
    const other = mkdtempSync(join(tmpdir(), 'berth-journey-'));
    const login = await berth(['login', '--api', api.url, '--username', user, '--password-stdin'], {
      home: other,
      input: `pw-${user}-12345`,
    });
    expect(login.code).toBe(0);
    const stored = JSON.parse(readFileSync(join(other, 'berth', 'config.json'), 'utf8'));
    const session = await api.login(user, `pw-${user}-12345`);
    const revoked = await api.call('DELETE', `/tokens/${stored.tokenId}`, { token: session });
    expect(revoked.status).toBe(204);
    const after = await berth(['apps', 'list'], { home: other });
    expect(after.code).toBe(1);
    expect(oneLine(after)).toMatch(/\[401\]/);
  });

  it('deletes the app only with --yes', async () => {
    const refused = await run(['apps', 'delete', app]);
    expect(refused.code).toBe(2);
    expect(oneLine(refused)).toBe(`error: deleting app ${app} stops all of it: add --yes to go ahead`);
    const deleted = await run(['apps', 'delete', app, '--yes']);
    expect(deleted.stderr).toBe('');
    expect(deleted.stdout.trim()).toBe(`app ${app} deleted`);
    expect(JSON.parse((await run(['apps', 'list', '-o', 'json'])).stdout)).toEqual([]);
  });
});
