/**
 * The integration project's global setup (vitest.config.ts): runs once before the integration
 * tests and fails fast, naming the server, when the region is not up. `make test` brings the
 * region up first; running vitest by hand needs `make up` (or the servers' addresses in the
 * environment). The unit project has no global setup and needs none of this.
 */
import { connect } from 'node:net';
import { regionEnv } from '@berth/shared/testing';

function reachable(url: string): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = connect({ host: hostname, port: Number(port), timeout: 1000 });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
    socket.once('timeout', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

export default async function setup(): Promise<void> {
  const env = regionEnv();
  const servers: [string, string][] = [
    ['etcd', (env.ETCD_ENDPOINTS ?? '').split(',')[0] ?? ''],
    ['NATS', env.NATS_URL ?? ''],
    ['Redis', env.REDIS_URL ?? ''],
  ];
  const down: string[] = [];
  for (const [name, url] of servers) {
    if (!(await reachable(url))) down.push(`${name} at ${url}`);
  }
  if (down.length > 0) {
    throw new Error(
      `the local region is not up (${down.join(', ')} unreachable): run \`make up\` or \`make test\` (the unit tests alone need no region: \`make test-unit\`)`,
    );
  }
  for (const [key, value] of Object.entries(env)) process.env[key] ??= value;
}
