#!/usr/bin/env node
/** `berth`: the entry point (`pnpm berth …`, or .local/bin/berth that make up writes). */
import { run } from './main.ts';

const code = await run(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  stdin: process.stdin,
  env: process.env,
});
process.exitCode = code;
// Streams and sockets of a finished command must not keep the process alive.
if (!process.argv.includes('exec')) process.exit(code);
