/**
 * The Lua picker's unit tests (services/lb-agent/lua/test/*_test.lua), run by luajit from Debian's
 * luajit2 (OpenResty's LuaJIT, as in nginx's Lua module): weights, renormalisation, forced
 * versions, sticky hashing, smooth weighted round-robin, stale peers, passive health, retries.
 */
import { execFile } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const testDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'lua', 'test');
const files = readdirSync(testDir).filter((f) => f.endsWith('_test.lua'));

describe('Lua unit tests (luajit)', () => {
  it('finds the Lua test files', () => {
    expect(files).toContain('picker_test.lua');
  });

  for (const file of files) {
    it(file, async () => {
      const result = await run('luajit', [join(testDir, file)]).then(
        ({ stdout }) => ({ ok: true, output: stdout }),
        (err: { stdout?: string; stderr?: string; message: string }) => ({
          ok: false,
          output: `${err.stdout ?? ''}${err.stderr ?? err.message}`,
        }),
      );
      expect(result.ok, result.output).toBe(true);
      expect(result.output).toMatch(/\d+ tests, 0 failed/);
    });
  }
});
