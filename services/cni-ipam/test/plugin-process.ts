/** Runs a CNI plugin as containerd does: a process per call, the network conf on stdin, CNI_* in its environment. */
import { spawn } from 'node:child_process';

export type PluginRun = { code: number; out: string };

/**
 * `command` is the plugin's binary, or a program and its arguments (`[node, main.ts]`). The
 * environment is PATH, `CNI_IFNAME=eth0`, `CNI_NETNS=/x` and `env` over them; stderr goes to the
 * test's. Resolves when the process has exited and its stdout is read to the end.
 */
export function runPluginProcess(
  command: string | readonly string[],
  env: Record<string, string>,
  conf: unknown,
): Promise<PluginRun> {
  const [bin, ...args] = typeof command === 'string' ? [command] : command;
  return new Promise((resolve, reject) => {
    const child = spawn(bin as string, args, {
      env: { PATH: process.env.PATH, CNI_IFNAME: 'eth0', CNI_NETNS: '/x', ...env },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
    });
    child.on('error', reject);
    // 'close', not 'exit': under load the answer can still be in the pipe when the process exits.
    child.on('close', (code) => resolve({ code: code ?? -1, out }));
    child.stdin.on('error', () => {}); // a plugin that exits before reading all of stdin
    child.stdin.end(typeof conf === 'string' ? conf : JSON.stringify(conf));
  });
}
