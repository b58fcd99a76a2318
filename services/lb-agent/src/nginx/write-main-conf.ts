/**
 * `node services/lb-agent/src/nginx/write-main-conf.ts --prefix DIR --listen ADDR --pid FILE
 * --error-log FILE [--access-log FILE] [--workers N] [--user NAME]`: writes an lb-agent host's
 * nginx main config (infra/region.sh runs it before it starts nginx). Prints the config's path.
 */
import { parseArgs } from 'node:util';
import { writeMainConfig } from './main-conf.ts';

const { values } = parseArgs({
  options: {
    prefix: { type: 'string' },
    listen: { type: 'string' },
    pid: { type: 'string' },
    'error-log': { type: 'string' },
    'access-log': { type: 'string' },
    workers: { type: 'string' },
    user: { type: 'string' },
  },
});
for (const required of ['prefix', 'listen', 'pid', 'error-log'] as const) {
  if (!values[required]) {
    process.stderr.write(`write-main-conf: --${required} is required\n`);
    process.exit(2);
  }
}
const workers = values.workers === undefined || values.workers === 'auto' ? values.workers : Number(values.workers);
if (typeof workers === 'number' && !(Number.isInteger(workers) && workers >= 1)) {
  process.stderr.write('write-main-conf: --workers must be a positive integer or auto\n');
  process.exit(2);
}
const conf = await writeMainConfig({
  prefix: values.prefix as string,
  listen: values.listen as string,
  pidFile: values.pid as string,
  errorLog: values['error-log'] as string,
  ...(values['access-log'] ? { accessLog: values['access-log'] } : {}),
  ...(workers !== undefined ? { workerProcesses: workers as number | 'auto' } : {}),
  ...(values.user ? { user: values.user } : {}),
});
process.stdout.write(`${conf}\n`);
