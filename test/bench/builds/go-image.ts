/**
 * The compile image of the Go sample, built FROM scratch (no pulls are possible here): the host's
 * Go toolchain (`$(go env GOROOT)`, without its tests and docs) and Debian's busybox-static for
 * `sh`. Its environment sends every module fetch to the bench's proxy and keeps Go's caches under
 * HOME=/cache/home, the agent's per-config cache. Built once and kept (it is not what is timed).
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readProgress } from '../../../services/builder-agent/src/steps/docker.ts';
import type { docker as harnessDocker } from '../../../services/builder-agent/test/harness.ts';

export function goEnv(name: string): string {
  return execFileSync('go', ['env', name]).toString().trim();
}

type Docker = typeof harnessDocker;

/** Parts of GOROOT a build does not read. */
const SKIP = ['./go/test', './go/doc', './go/api', './go/misc', 'testdata', '*_test.go'];

export async function goCompileImage(docker: Docker): Promise<string> {
  const goroot = goEnv('GOROOT');
  const version = goEnv('GOVERSION');
  const tag = `berth-bench/go:${version}`;
  try {
    await docker.getImage(tag).inspect();
    return tag;
  } catch {
    // build it
  }
  if (!existsSync('/bin/busybox')) throw new Error('/bin/busybox is missing: apt-get install busybox-static');
  const dir = mkdtempSync(join(tmpdir(), 'bench-go-image-'));
  try {
    mkdirSync(join(dir, 'bin'));
    execFileSync('cp', ['/bin/busybox', join(dir, 'bin/busybox')]);
    symlinkSync(goroot, join(dir, 'go'));
    writeFileSync(
      join(dir, 'Dockerfile'),
      [
        'FROM scratch',
        'COPY bin /bin',
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]',
        'RUN mkdir -p /tmp && chmod 1777 /tmp',
        'COPY go /usr/local/go',
        'ENV PATH=/usr/local/go/bin:/bin GOTOOLCHAIN=local GOFLAGS=-mod=mod GOSUMDB=off CGO_ENABLED=0 \\',
        '    GOMODCACHE=/cache/home/go/pkg/mod GOCACHE=/cache/home/.cache/go-build',
        '',
      ].join('\n'),
    );
    // GNU tar follows the symlink to GOROOT (-h) and leaves out what a build does not read.
    const tar = spawn('tar', ['-C', dir, '-ch', ...SKIP.map((p) => `--exclude=${p}`), '.'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const context = tar.stdout;
    const stream = await docker.buildImage(context, { t: tag, rm: true, forcerm: true });
    await readProgress(stream, () => undefined);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return tag;
}
