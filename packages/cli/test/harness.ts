/** Running `berth` (from its source) and other commands the way a user's shell does, for the CLI's suites. */
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** The CLI's entry, run by this Node. */
export const ENTRY = fileURLToPath(new URL('../src/index.ts', import.meta.url));

export type Run = { code: number | null; stdout: string; stderr: string };
export type Started = {
  child: ChildProcessWithoutNullStreams;
  out: { stdout: string; stderr: string };
  done: Promise<Run>;
};

/**
 * Starts `cmd` with a HOME of the test's (so its own berth config) and only PATH besides; stdout
 * and stderr are collected in `out` as they come, `done` settles when the process has closed.
 */
export function start(cmd: string, args: string[], o: { home: string; env?: Record<string, string> }): Started {
  const child = spawn(cmd, args, {
    env: { PATH: process.env.PATH, HOME: o.home, XDG_CONFIG_HOME: o.home, ...o.env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const out = { stdout: '', stderr: '' };
  child.stdout.on('data', (d) => {
    out.stdout += d;
  });
  child.stderr.on('data', (d) => {
    out.stderr += d;
  });
  const done = new Promise<Run>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, ...out }));
  });
  return { child, out, done };
}

/** `berth ARGS` started, with `input` on its stdin (then end of file). */
export function startBerth(args: string[], o: { home: string; input?: string; env?: Record<string, string> }): Started {
  const started = start(process.execPath, [ENTRY, ...args], o);
  started.child.stdin.end(o.input ?? '');
  return started;
}

/** `berth ARGS` to its end. */
export function berth(args: string[], o: { home: string; input?: string; env?: Record<string, string> }): Promise<Run> {
  return startBerth(args, o).done;
}

/** Settles with the run, or fails after `ms` (and interrupts the child). */
export async function within(ms: number, what: string, p: Started): Promise<Run> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      p.child.kill('SIGINT');
      reject(new Error(`timed out waiting for ${what}; so far: ${JSON.stringify(p.out)}`));
    }, ms);
  });
  try {
    return await Promise.race([p.done, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The first value `probe` gives that is not undefined, asked again every `intervalMs` until `ms` pass. */
export async function until<T>(
  what: string,
  ms: number,
  probe: () => Promise<T | undefined> | T | undefined,
  intervalMs = 250,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
