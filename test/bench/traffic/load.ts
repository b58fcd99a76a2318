/**
 * The traffic benchmark's client and its arithmetic. The backends (loopback HTTP servers that
 * answer their name) and the closed-loop client run in a worker thread (load-worker.ts): GETs on
 * keep-alive connections, each answer recorded with when it was sent, when it came back, its
 * status and the backend that answered. nginx's RSS comes from /proc.
 */
import { readFile } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';

/** Answers by index: `start`/`end` absolute ms (`timeOrigin + now()`), `peer` the backend's index or -1. */
export type Samples = { start: Float64Array; end: Float64Array; status: Int32Array; peer: Int32Array };

export type LoadCommand =
  | { type: 'backends'; n: number }
  | { type: 'start'; url: string; host: string; concurrency: number; names: string[] }
  | { type: 'stop' }
  | { type: 'close' };

export type LoadReply =
  | { type: 'backends'; names: string[]; ports: number[] }
  | { type: 'started' }
  | ({ type: 'samples' } & Samples)
  | { type: 'closed' };

/** The time the worker's samples are in. */
export const now = () => performance.timeOrigin + performance.now();

/** The worker thread with `n` backends `p0…p{n-1}`; start() and stop() the client as often as needed. */
export async function startLoadWorker(n: number) {
  const worker = new Worker(new URL('./load-worker.ts', import.meta.url));
  const ask = <T extends LoadReply['type']>(command: LoadCommand, want: T) =>
    new Promise<Extract<LoadReply, { type: T }>>((resolve, reject) => {
      const onMessage = (r: LoadReply) => {
        if (r.type !== want) return;
        worker.off('message', onMessage);
        worker.off('error', reject);
        resolve(r as Extract<LoadReply, { type: T }>);
      };
      worker.on('message', onMessage);
      worker.once('error', reject);
      worker.postMessage(command);
    });
  const { names, ports } = await ask({ type: 'backends', n }, 'backends');
  return {
    backends: names.map((name, i) => ({ name, port: ports[i] as number })),
    start: (url: string, host: string, concurrency: number) =>
      ask({ type: 'start', url, host, concurrency, names }, 'started').then(() => undefined),
    stop: async (): Promise<Samples> => {
      const { type: _t, ...samples } = await ask({ type: 'stop' }, 'samples');
      return samples;
    },
    close: async () => {
      await ask({ type: 'close' }, 'closed');
      await worker.terminate();
    },
  };
}

/** Indexes of the samples sent in [from, to). */
export function sentBetween(s: Samples, from: number, to: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < s.start.length; i++) {
    const t = s.start[i] as number;
    if (t >= from && t < to) out.push(i);
  }
  return out;
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number;
}

export function summary(values: readonly number[]): { p50: number; p99: number; max: number; n: number } {
  const sorted = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b);
  return {
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    max: sorted.at(-1) ?? Number.NaN,
    n: sorted.length,
  };
}

/** VmRSS of nginx's master and its children (workers, and old workers still draining), in bytes. */
export async function nginxRss(master: number): Promise<number> {
  const children = await readFile(`/proc/${master}/task/${master}/children`, 'utf8').catch(() => '');
  const pids = [master, ...children.trim().split(/\s+/).filter(Boolean).map(Number)];
  let total = 0;
  for (const pid of pids) {
    const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
    const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1];
    if (kb) total += Number(kb) * 1024;
  }
  return total;
}

/** Samples nginx's RSS every `everyMs` and keeps the largest since the last take(). */
export function rssSampler(master: () => Promise<number>, everyMs = 250) {
  let peak = 0;
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      try {
        peak = Math.max(peak, await nginxRss(await master()));
      } catch {
        // nginx between pid files: the next sample counts
      }
      await new Promise((r) => setTimeout(r, everyMs));
    }
  })();
  return {
    take(): number {
      const p = peak;
      peak = 0;
      return p;
    },
    async stop() {
      stopped = true;
      await loop;
    },
  };
}
