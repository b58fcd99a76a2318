/**
 * Robot credentials of the region's registry: what the cells pull with and what a build pushes
 * with. Neither is stored anywhere: each is an HMAC the API's token server recomputes from one
 * master key (`REGISTRY_ROBOT_KEY`), and each service holds only the key derived for it
 * (docs/registry.md, "Robot credentials"):
 *
 *   master ──HMAC("cells")──────────────▶ cells key   (the scheduler)
 *          └─HMAC("builder\0" + agentId)─▶ agent key   (one builder-agent)
 *
 *   cell pull password  = HMAC(cells key, "{region}/{cell}")          user `cell@{region}/{cell}`
 *   run push password   = HMAC(agent key, "{runId}\0{attempt}")       user `build@{runId}.{attempt}`
 *
 * A cell's credential pulls any repository of an existing image group and pushes nothing. A run's
 * pushes to its own repository only, and only while that attempt of the run is placed on that
 * agent and not finished: a leaked one dies with its build, and an agent cannot mint one for a run
 * it does not hold. `@` is not allowed in user names, so no user can be mistaken for a robot.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';

/**
 * A robot key as configured (`…_KEY` or `…_KEY_FILE`): at least 64 hex digits (32 bytes), the
 * master as `openssl rand -hex 32` makes it and every derived key as `deriveKeyHex` prints it.
 */
export const robotKeySchema = z
  .string()
  .trim()
  .regex(/^([0-9a-f]{2}){32,}$/i, 'expected at least 64 hex digits (openssl rand -hex 32)')
  .transform((hex) => Buffer.from(hex, 'hex'));

function hmac(key: Buffer, message: string): Buffer {
  return createHmac('sha256', key).update(message).digest();
}

/** The scheduler's key: every cell's pull password follows from it, nothing else does. */
export function deriveCellsKey(master: Buffer): Buffer {
  return hmac(master, 'cells');
}

/** One build machine's key: push passwords of the runs placed on it follow from it. */
export function deriveAgentKey(master: Buffer, agentId: string): Buffer {
  return hmac(master, `builder\0${agentId}`);
}

export type RobotCredential = { username: string; password: string };

export function cellPullCredential(cellsKey: Buffer, region: string, cell: string): RobotCredential {
  return { username: `cell@${region}/${cell}`, password: hmac(cellsKey, `${region}/${cell}`).toString('hex') };
}

export function runPushCredential(agentKey: Buffer, runId: string, attempt: number): RobotCredential {
  return { username: `build@${runId}.${attempt}`, password: hmac(agentKey, `${runId}\0${attempt}`).toString('hex') };
}

export type RobotName =
  | { kind: 'cell'; region: string; cell: string }
  | { kind: 'build'; runId: string; attempt: number };

/** A robot user name → what it names; undefined for anything else (a person's name). */
export function parseRobotName(username: string): RobotName | undefined {
  const cell = /^cell@([a-z0-9-]{1,63})\/([a-z0-9-]{1,63})$/.exec(username);
  if (cell) return { kind: 'cell', region: cell[1] as string, cell: cell[2] as string };
  const build = /^build@([a-z0-9]{16,32})\.([1-9][0-9]{0,5})$/.exec(username);
  if (build) return { kind: 'build', runId: build[1] as string, attempt: Number(build[2]) };
  return undefined;
}

/** Constant-time comparison of a presented password with the expected one. */
export function robotPasswordMatches(presented: string, expected: RobotCredential): boolean {
  const a = Buffer.from(presented);
  const b = Buffer.from(expected.password);
  return a.length === b.length && timingSafeEqual(a, b);
}
