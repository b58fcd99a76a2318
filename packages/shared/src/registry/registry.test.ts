import { describe, expect, it } from 'vitest';
import {
  cellPullCredential,
  deriveAgentKey,
  deriveCellsKey,
  parseRobotName,
  robotKeySchema,
  robotPasswordMatches,
  runPushCredential,
} from './index.ts';

const master = robotKeySchema.parse('11'.repeat(32));

describe('robot credentials', () => {
  it('names each robot so that parsing gives back what it names, and no user name parses', () => {
    const cell = cellPullCredential(deriveCellsKey(master), 'local', 'cell-a');
    expect(parseRobotName(cell.username)).toEqual({ kind: 'cell', region: 'local', cell: 'cell-a' });
    const run = runPushCredential(deriveAgentKey(master, 'b1'), 'abcdefabcdef0123', 3);
    expect(parseRobotName(run.username)).toEqual({ kind: 'build', runId: 'abcdefabcdef0123', attempt: 3 });
    for (const name of ['admin', 'cell-a', 'cell@', 'cell@local', 'build@short.1', 'build@abcdefabcdef0123.0']) {
      expect(parseRobotName(name), name).toBeUndefined();
    }
  });

  it('gives every cell, agent, run and attempt its own password', () => {
    const cells = deriveCellsKey(master);
    const a = cellPullCredential(cells, 'local', 'cell-a');
    expect(robotPasswordMatches(a.password, cellPullCredential(cells, 'local', 'cell-a'))).toBe(true);
    expect(robotPasswordMatches(a.password, cellPullCredential(cells, 'local', 'cell-b'))).toBe(false);
    expect(robotPasswordMatches(a.password, cellPullCredential(cells, 'other', 'cell-a'))).toBe(false);
    const agent = deriveAgentKey(master, 'b1');
    const run = runPushCredential(agent, 'abcdefabcdef0123', 1);
    expect(robotPasswordMatches(run.password, runPushCredential(agent, 'abcdefabcdef0123', 2))).toBe(false);
    expect(
      robotPasswordMatches(run.password, runPushCredential(deriveAgentKey(master, 'b2'), 'abcdefabcdef0123', 1)),
    ).toBe(false);
    expect(robotPasswordMatches('short', run)).toBe(false);
    // The derived keys are not the master and not each other.
    expect(cells.equals(master)).toBe(false);
    expect(agent.equals(cells)).toBe(false);
  });

  it('accepts a key of 64 hex digits or more and refuses anything else', () => {
    expect(robotKeySchema.parse(` ${'ab'.repeat(32)}\n`).length).toBe(32);
    expect(robotKeySchema.safeParse('ab'.repeat(16)).success).toBe(false);
    expect(robotKeySchema.safeParse('zz'.repeat(32)).success).toBe(false);
  });
});
