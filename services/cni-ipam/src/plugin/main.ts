/**
 * `berth-ipam`: a CNI IPAM plugin (spec 1.0.0: ADD, DEL, CHECK, VERSION). `main` only dispatches
 * on CNI_COMMAND (./commands.ts does the work, ./config.ts reads stdin and the environment) and
 * maps errors to the spec's `{cniVersion, code, msg, details}` on stdout, exit 1. This is the
 * direct plugin (allocating over etcd itself); containerd runs the thin Go plugin
 * (services/cni-ipam/thin), which asks the node's resident allocator and runs this one when that
 * does not answer, with BERTH_IPAM_FALLBACK set (counted by ./fallback.ts).
 */
import { isBerthError } from '@berth/shared/errors';
import { BerthKeys } from '@berth/shared/keys';
import type { GatewayBackend } from '@berth/shared/store/lite';
import {
  type AllocatorFor,
  addAddress,
  checkAddress,
  closeNeighbours,
  directAllocator,
  directBackend,
  releaseAddress,
  versionResult,
} from './commands.ts';
import { type CommandInput, type NetConf, readCommandInput, requireEnv } from './config.ts';
import { CniError } from './errors.ts';
import { countFallback, fallbackReason } from './fallback.ts';

/**
 * The one table from Berth's error codes to the spec's error codes (and the `details` an error
 * does not carry itself). Anything else is 999, the spec's generic failure.
 */
export const CNI_ERROR_CODES: Readonly<Record<string, { code: number; details: string }>> = {
  'cni-incompatible-version': { code: 1, details: '' },
  'cni-invalid-environment': { code: 4, details: '' },
  'cni-decode-failure': { code: 6, details: '' },
  'invalid-netconf': { code: 7, details: '' },
  // etcd is down or unreachable: the runtime tries again later.
  unavailable: { code: 11, details: 'etcd unreachable' },
  // Other writers won every attempt (a pod storm on one node): the runtime tries again later.
  conflict: { code: 11, details: 'too many concurrent changes' },
  'pool-exhausted': { code: 999, details: 'pool exhausted' },
  'allocation-not-found': { code: 999, details: 'no allocation' },
  'allocation-mismatch': { code: 999, details: 'another address' },
  'corrupt-value': { code: 999, details: 'unreadable IPAM record' },
  // etcd refused the plugin's credentials or a key outside its cell's IPAM prefix: no retry helps.
  forbidden: { code: 999, details: 'etcd refused the IPAM identity' },
};
const GENERIC = 999;

const COMMANDS: Record<string, (input: CommandInput, allocatorFor: AllocatorFor) => Promise<string | undefined>> = {
  ADD: addAddress,
  DEL: releaseAddress,
  CHECK: checkAddress,
};

/**
 * Runs one CNI command; returns what to print on stdout (undefined: nothing). The direct plugin
 * allocates over etcd itself; the resident daemon passes its own allocators.
 */
export async function runCommand(
  env: NodeJS.ProcessEnv,
  stdin: () => Promise<string>,
  allocatorFor: AllocatorFor = directAllocator,
): Promise<string | undefined> {
  const command = requireEnv(env, 'CNI_COMMAND');
  if (command === 'VERSION') return versionResult();
  const run = COMMANDS[command];
  if (!run) {
    throw new CniError(
      'cni-invalid-environment',
      `CNI_COMMAND ${command} is not supported (ADD, DEL, CHECK, VERSION are)`,
    );
  }
  return run(await readCommandInput(env, stdin), allocatorFor);
}

/** Maps any error to the CNI error object. */
export function errorJson(
  err: unknown,
  cniVersion = '1.0.0',
): { cniVersion: string; code: number; msg: string; details: string } {
  const msg = (err as Error)?.message ?? String(err);
  const mapped = isBerthError(err) ? CNI_ERROR_CODES[err.code] : undefined;
  const details = err instanceof CniError && err.details ? err.details : (mapped?.details ?? '');
  return { cniVersion, code: mapped?.code ?? GENERIC, msg, details };
}

/**
 * One CNI call, start to end: what to print on stdout and the exit code. The error object names
 * the conf's own CNI version when stdin has one. The daemon answers each socket request with it.
 */
export async function runPlugin(
  env: NodeJS.ProcessEnv,
  stdin: string,
  allocatorFor: AllocatorFor = directAllocator,
): Promise<{ exitCode: number; stdout: string }> {
  let version = '1.0.0';
  try {
    version = (JSON.parse(stdin) as { cniVersion?: string })?.cniVersion ?? version;
  } catch {
    // reported by parseNetConf
  }
  try {
    const out = await runCommand(env, async () => stdin, allocatorFor);
    return { exitCode: 0, stdout: out ?? '' };
  } catch (err) {
    return { exitCode: 1, stdout: JSON.stringify(errorJson(err, typeof version === 'string' ? version : '1.0.0')) };
  }
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

if (import.meta.main) {
  // The command's etcd connection, kept to count a fallback over it (./fallback.ts).
  let used: { conf: NetConf; backend: GatewayBackend } | undefined;
  const { exitCode, stdout } = await runPlugin(process.env, await readStdin(), (conf) => {
    used = { conf, backend: directBackend(conf) };
    return directAllocator(conf, used.backend);
  });
  if (stdout) process.stdout.write(`${stdout}\n`);
  process.exitCode = exitCode;
  // Run by the thin plugin because the resident allocator did not answer: count it (best effort).
  const reason = fallbackReason(process.env);
  if (reason && used) {
    const { conf, backend } = used;
    await countFallback(backend, new BerthKeys(conf.ipam.etcdPrefix), conf.ipam, reason);
  }
  await closeNeighbours();
}
