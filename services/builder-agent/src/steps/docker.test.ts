import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { extract } from 'tar-fs';
import { afterAll, describe, expect, test } from 'vitest';
import { renderTag } from '../runs/build-runner.ts';
import { contextTar, dockerignore } from './docker.ts';

const dir = mkdtempSync(join(tmpdir(), 'ctx-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('.dockerignore', () => {
  test('ignores matching paths and their contents, and ! re-includes', async () => {
    writeFileSync(join(dir, '.dockerignore'), '# comment\nsecret.txt\nnode_modules\n*.log\n!keep.log\ndocs/**/*.md\n');
    const ignored = await dockerignore(dir);
    expect(ignored('secret.txt')).toBe(true);
    expect(ignored('node_modules/a/b.js')).toBe(true);
    expect(ignored('x.log')).toBe(true);
    expect(ignored('keep.log')).toBe(false);
    expect(ignored('docs/a/b.md')).toBe(true);
    expect(ignored('src/index.ts')).toBe(false);
  });

  test('the context tar leaves ignored files out but always carries the Dockerfile', async () => {
    writeFileSync(join(dir, '.dockerignore'), 'secret.txt\nDockerfile\n');
    writeFileSync(join(dir, 'Dockerfile'), 'FROM scratch\n');
    writeFileSync(join(dir, 'secret.txt'), 'no');
    mkdirSync(join(dir, 'src'), { recursive: true });
    writeFileSync(join(dir, 'src/a.txt'), 'yes');
    const out = mkdtempSync(join(tmpdir(), 'ctx-out-'));
    await new Promise((resolve, reject) => {
      contextTar(dir, 'Dockerfile').then(
        (tar) => tar.pipe(extract(out)).on('finish', resolve).on('error', reject),
        reject,
      );
    });
    const { readdirSync } = await import('node:fs');
    expect(readdirSync(out).sort()).toEqual(['.dockerignore', 'Dockerfile', 'src']);
    rmSync(out, { recursive: true, force: true });
  });
});

describe('image tags', () => {
  test('the template is filled in and made a valid Docker tag', () => {
    const sha = 'abcdef0123456789abcdef0123456789abcdef01';
    expect(renderTag('{branch}-{sha7}', { branch: 'feature/x', sha, run: 3 })).toBe('feature-x-abcdef0');
    expect(renderTag('{tag}', { tag: 'v1.2.0', sha, run: 3 })).toBe('v1.2.0');
    expect(renderTag('{branch}-{run}', { branch: 'main', sha, run: 12 })).toBe('main-12');
    expect(renderTag('{tag}', { sha, run: 1 })).toBe('abcdef012345');
  });
});
