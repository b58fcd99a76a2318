import { CommanderError } from 'commander';
import { describeError, EXIT_USAGE } from './errors.ts';
import { buildProgram, type Io } from './program.ts';

/** Runs `berth` with `argv` (without node and the script) and resolves with the exit code. */
export async function run(argv: string[], io: Io): Promise<number> {
  const dashes = argv.indexOf('--');
  const before = dashes < 0 ? argv : argv.slice(0, dashes);
  const after = dashes < 0 ? [] : argv.slice(dashes + 1);
  const program = buildProgram(io, after);
  program.exitOverride();
  for (const cmd of allCommands(program)) cmd.exitOverride();
  try {
    await program.parseAsync(before, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and --version "fail" with code 0; every other commander error is a usage error,
      // already printed on one line by commander.
      if (err.exitCode === 0 || err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return 0;
      if (err.code === 'commander.help') return 0;
      return EXIT_USAGE;
    }
    const { line, code } = describeError(err);
    io.stderr.write(`${line}\n`);
    return code;
  }
}

function allCommands(cmd: import('commander').Command): import('commander').Command[] {
  return cmd.commands.flatMap((c) => [c, ...allCommands(c)]);
}
