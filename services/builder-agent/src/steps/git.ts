/**
 * The clone step's git: a bare mirror per repository under the data dir (`git clone --mirror`
 * once, `git fetch --prune` after), the ref resolved to a commit, and that commit's tree written
 * into a fresh workspace with `git archive | tar -x` (no .git in the build context).
 *
 * Credentials never reach a URL, an argument or a log: an `http.extraHeader` passed through
 * git's GIT_CONFIG_* environment, and every line of git's output masked before it is logged.
 * `file://` URLs and absolute local paths work (repositories on the build machine, tests).
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { BerthError } from '@berth/shared/errors';
import type { LogStream } from '../logs/build-log.ts';

export type GitCredential = { username: string; password: string };

export class GitError extends BerthError {
  constructor(message: string) {
    super(message, { code: 'git-failed' });
  }
}

export type GitOutput = (stream: LogStream, chunk: Buffer | string) => void;

type RunOptions = { cwd?: string; signal: AbortSignal; output?: GitOutput; env?: NodeJS.ProcessEnv };

/** Runs a command; resolves with its stdout (when not streamed), rejects with its last stderr line. */
function run(cmd: string, args: string[], options: RunOptions, capture = false): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: options.cwd,
      env: { ...process.env, GIT_TERMINAL_PROMPT: '0', GIT_ASKPASS: 'true', ...options.env },
      signal: options.signal,
      killSignal: 'SIGKILL',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let lastErr = '';
    child.stdout.on('data', (d: Buffer) => {
      if (capture) out += d.toString();
      else options.output?.('stdout', d);
    });
    child.stderr.on('data', (d: Buffer) => {
      const text = d.toString();
      const lines = text.split(/[\r\n]+/).filter((l) => l.trim());
      if (lines.length) lastErr = lines[lines.length - 1] ?? lastErr;
      options.output?.('stderr', d);
    });
    child.on('error', (err) => reject(err));
    child.on('close', (code, sig) => {
      if (code === 0) resolve(out);
      else reject(new GitError(`${cmd} ${args[0] ?? ''} failed (${sig ?? `exit ${code}`}): ${lastErr || 'no output'}`));
    });
  });
}

export type GitMirrorsOptions = { dir: string };

export class GitMirrors {
  readonly #dir: string;
  /** One fetch at a time per mirror. */
  readonly #locks = new Map<string, Promise<unknown>>();

  constructor(options: GitMirrorsOptions) {
    this.#dir = options.dir;
  }

  mirrorPath(url: string): string {
    return join(this.#dir, `${createHash('sha256').update(url).digest('hex').slice(0, 24)}.git`);
  }

  /** Brings the mirror of `url` up to date (cloned the first time); resolves with its path. */
  async update(
    url: string,
    options: { signal: AbortSignal; output?: GitOutput; credential?: GitCredential | undefined },
  ): Promise<string> {
    const mirror = this.mirrorPath(url);
    const env = credentialEnv(options.credential);
    const previous = this.#locks.get(mirror) ?? Promise.resolve();
    const current = previous
      .catch(() => undefined)
      .then(async () => {
        const exists = await stat(join(mirror, 'HEAD')).then(
          () => true,
          () => false,
        );
        const base = { signal: options.signal, env, ...(options.output ? { output: options.output } : {}) };
        if (!exists) {
          await mkdir(this.#dir, { recursive: true });
          const tmp = `${mirror}.tmp-${process.pid}-${Date.now()}`;
          try {
            await run('git', ['clone', '--mirror', '--no-hardlinks', '--', url, tmp], base);
            await rename(tmp, mirror);
          } finally {
            await rm(tmp, { recursive: true, force: true });
          }
        } else {
          await run('git', ['remote', 'set-url', 'origin', url], { ...base, cwd: mirror });
          await run('git', ['fetch', '--prune', 'origin'], { ...base, cwd: mirror });
        }
      });
    this.#locks.set(mirror, current);
    try {
      await current;
    } finally {
      if (this.#locks.get(mirror) === current) this.#locks.delete(mirror);
    }
    return mirror;
  }

  /** Resolves `ref` (a branch, a tag, `refs/…` or a commit) to a commit, and says which it was. */
  resolve(
    mirror: string,
    ref: string,
    signal: AbortSignal,
  ): Promise<{ commit: string; branch?: string; tag?: string }> {
    return resolveRef(mirror, ref, signal);
  }

  /** Writes the tree of `commit` into `dir` (created). */
  async checkout(mirror: string, commit: string, dir: string, signal: AbortSignal): Promise<void> {
    await mkdir(dir, { recursive: true });
    await new Promise<void>((resolve, reject) => {
      const archive = spawn('git', ['archive', '--format=tar', commit], {
        cwd: mirror,
        signal,
        killSignal: 'SIGKILL',
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const tar = spawn('tar', ['-x', '-f', '-', '-C', dir], {
        signal,
        killSignal: 'SIGKILL',
        stdio: ['pipe', 'ignore', 'pipe'],
      });
      archive.stdout.pipe(tar.stdin);
      let err = '';
      archive.stderr.on('data', (d: Buffer) => {
        err += d.toString();
      });
      tar.stderr.on('data', (d: Buffer) => {
        err += d.toString();
      });
      let pending = 2;
      let failed: Error | undefined;
      const done = (what: string) => (code: number | null) => {
        if (code !== 0 && !failed)
          failed = new GitError(`${what} failed (exit ${code}): ${err.trim().split('\n').pop() ?? ''}`);
        if (--pending === 0) {
          if (failed) reject(failed);
          else resolve();
        }
      };
      archive.on('error', reject);
      tar.on('error', reject);
      archive.on('close', done('git archive'));
      tar.on('close', done('tar -x'));
    });
  }
}

async function resolveRef(
  mirror: string,
  ref: string,
  signal: AbortSignal,
): Promise<{ commit: string; branch?: string; tag?: string }> {
  const opts = { cwd: mirror, signal };
  const tryRev = (name: string) =>
    run('git', ['rev-parse', '--verify', '--quiet', `${name}^{commit}`], opts, true).then(
      (s) => s.trim(),
      () => undefined,
    );
  const short = ref.replace(/^refs\/(heads|tags)\//, '');
  if (!ref.startsWith('refs/tags/')) {
    const branch = await tryRev(`refs/heads/${short}`);
    if (branch) return { commit: branch, branch: short };
  }
  if (!ref.startsWith('refs/heads/')) {
    const tag = await tryRev(`refs/tags/${short}`);
    if (tag) return { commit: tag, tag: short };
  }
  if (/^[0-9a-f]{7,40}$/.test(ref)) {
    const commit = await tryRev(ref);
    if (commit) return { commit };
  }
  throw new GitError(`ref "${ref}" is not a branch, a tag or a commit of the repository`);
}

/** git config through the environment (GIT_CONFIG_COUNT…): never on a command line or in a URL. */
function credentialEnv(credential: GitCredential | undefined): NodeJS.ProcessEnv {
  if (!credential) return {};
  const basic = Buffer.from(`${credential.username}:${credential.password}`).toString('base64');
  return {
    GIT_CONFIG_COUNT: '1',
    GIT_CONFIG_KEY_0: 'http.extraHeader',
    GIT_CONFIG_VALUE_0: `Authorization: Basic ${basic}`,
  };
}

/** The strings a credential could appear as in output: masked in logs. */
export function credentialMasks(credential: GitCredential | undefined): string[] {
  if (!credential) return [];
  return [credential.password, Buffer.from(`${credential.username}:${credential.password}`).toString('base64')];
}
