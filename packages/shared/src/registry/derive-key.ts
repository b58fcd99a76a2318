/**
 * Prints a key derived from the registry's robot master key, for `make up` to hand each service
 * only what it needs (docs/registry.md, "Robot credentials"):
 *   node derive-key.ts MASTER_FILE cells        the scheduler's key (every cell's pull password)
 *   node derive-key.ts MASTER_FILE agent ID     builder-agent ID's key (its runs' push passwords)
 */
import { readFileSync } from 'node:fs';
import { deriveAgentKey, deriveCellsKey, robotKeySchema } from './index.ts';

const [file, kind, id] = process.argv.slice(2);
const usage = 'usage: derive-key.ts MASTER_FILE cells | derive-key.ts MASTER_FILE agent ID';
if (!file || (kind !== 'cells' && !(kind === 'agent' && id))) {
  console.error(usage);
  process.exit(2);
}
const parsed = robotKeySchema.safeParse(readFileSync(file, 'utf8'));
if (!parsed.success) {
  console.error(`${file}: ${parsed.error.issues[0]?.message}`);
  process.exit(1);
}
const key = kind === 'cells' ? deriveCellsKey(parsed.data) : deriveAgentKey(parsed.data, id as string);
process.stdout.write(`${key.toString('hex')}\n`);
