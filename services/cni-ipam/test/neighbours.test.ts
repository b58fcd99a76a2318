/**
 * The ARP entries of addresses that change hands are flushed (Debian's bridge plugin sends no
 * gratuitous ARP), by one resident `ip -batch` process for many addresses: checked in a network
 * namespace of the test's own, where the plugin's code runs.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT, uniqueId } from '@berth/shared/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ns = `bflush-${uniqueId(6)}`;
const ip = (...args: string[]) => execFileSync('ip', ['-n', ns, ...args], { encoding: 'utf8' });

beforeAll(() => {
  execFileSync('ip', ['netns', 'add', ns]);
  ip('link', 'add', 'd0', 'type', 'veth', 'peer', 'name', 'd1');
  ip('link', 'set', 'd0', 'up');
  ip('addr', 'add', '198.19.250.1/24', 'dev', 'd0');
  for (const n of [7, 8, 9])
    ip('neigh', 'add', `198.19.250.${n}`, 'lladdr', `02:00:00:00:00:0${n}`, 'dev', 'd0', 'nud', 'stale');
});

afterAll(() => {
  spawnSync('ip', ['netns', 'del', ns]);
});

describe('forgetting neighbours', () => {
  it('flushes the entries of the addresses given, and only those', () => {
    const script = [
      `import { closeNeighbours, forgetNeighbour } from ${JSON.stringify(join(REPO_ROOT, 'services/cni-ipam/src/plugin/commands.ts'))};`,
      "forgetNeighbour('198.19.250.7');",
      "forgetNeighbour('198.19.250.8');",
      'await closeNeighbours();',
    ].join('\n');
    execFileSync('ip', ['netns', 'exec', ns, process.execPath, '--input-type=module', '-e', script], {
      cwd: join(REPO_ROOT, 'services/cni-ipam'),
    });
    const left = ip('-4', 'neigh', 'show', 'dev', 'd0');
    expect(left).toContain('198.19.250.9');
    expect(left).not.toContain('198.19.250.7');
    expect(left).not.toContain('198.19.250.8');
  });
});
