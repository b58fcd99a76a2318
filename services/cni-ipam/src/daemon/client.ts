/** Asks the resident allocator for its counters over its socket (`cnictl stats`). */
import { createConnection } from 'node:net';
import { type DaemonResponse, type DaemonStats, PROTOCOL_VERSION } from './protocol.ts';

/** The daemon's counters, or undefined when nothing answers on the socket within `timeoutMs`. */
export function daemonStats(socket: string, timeoutMs = 2000): Promise<DaemonStats | undefined> {
  return new Promise((resolve) => {
    const conn = createConnection(socket);
    let out = '';
    const done = (stats: DaemonStats | undefined) => {
      conn.destroy();
      resolve(stats);
    };
    conn.setTimeout(timeoutMs, () => done(undefined));
    conn.on('error', () => done(undefined));
    conn.on('data', (d) => {
      out += d;
    });
    conn.on('end', () => {
      try {
        const answer = JSON.parse(out) as DaemonResponse;
        done(answer.exitCode === 0 ? (JSON.parse(answer.stdout) as DaemonStats) : undefined);
      } catch {
        done(undefined);
      }
    });
    conn.end(`${JSON.stringify({ v: PROTOCOL_VERSION, stats: true })}\n`);
  });
}
