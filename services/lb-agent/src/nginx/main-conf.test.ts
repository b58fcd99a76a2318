/** The nginx main config: only the master keeps root. */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { renderMainConfig, WORKER_USER, workerUser, writeMainConfig } from './main-conf.ts';

const base = { prefix: '/srv/nginx', listen: '127.0.0.1:8080', pidFile: '/run/nginx.pid', errorLog: '/var/log/e.log' };
const userLine = (conf: string) => conf.split('\n').find((l) => l.startsWith('user '));

describe('the workers of nginx', () => {
  it('never run as root: a master running as root gives them nobody', () => {
    expect(WORKER_USER).toBe('nobody nogroup');
    for (const root of ['root', 'root root', ' root ', '0', 'nobody root']) {
      expect(userLine(renderMainConfig({ ...base, user: root }))).toBe('user nobody nogroup;');
    }
    expect(userLine(renderMainConfig({ ...base, user: 'berth-nginx berth-nginx' }))).toBe(
      'user berth-nginx berth-nginx;',
    );
    // A master that is not root cannot switch users: no directive at all.
    expect(userLine(renderMainConfig(base))).toBeUndefined();
    expect(workerUser(undefined)).toBeUndefined();
  });

  it("load Berth's Lua in the master, so they never read the repo's files", () => {
    const conf = renderMainConfig({ ...base, user: 'root' });
    const init = conf.slice(conf.indexOf('init_by_lua_block'), conf.indexOf('log_by_lua_block'));
    for (const module of ['berth.stats', 'berth.control', 'berth.balancer']) expect(init).toContain(module);
  });

  it('can pass through the prefix to its tmp/, while run/ (the control socket) stays the master’s', async () => {
    const prefix = await mkdtemp(join(tmpdir(), 'main-conf-'));
    try {
      await writeMainConfig({ ...base, prefix, pidFile: join(prefix, 'nginx.pid'), user: 'root' });
      expect((await stat(prefix)).mode & 0o001).toBe(0o001);
      expect((await stat(prefix)).mode & 0o004).toBe(0);
      expect((await stat(join(prefix, 'run'))).mode & 0o777).toBe(0o700);
    } finally {
      await rm(prefix, { recursive: true, force: true });
    }
  });
});
