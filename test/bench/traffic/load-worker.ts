/**
 * The traffic benchmark's load, in a worker thread so that the agent's event loop (in the main
 * thread) is not the one serving thousands of requests a second: the loopback backends (each
 * answers its name) and the closed-loop client. Times are absolute (`timeOrigin + now()`), so
 * the main thread compares them with its own.
 */
import { Agent, createServer, request, type Server } from 'node:http';
import { parentPort } from 'node:worker_threads';
import type { LoadCommand, LoadReply } from './load.ts';

const port = parentPort;
if (!port) throw new Error('load-worker.ts runs as a worker thread');

const now = () => performance.timeOrigin + performance.now();
const servers: Server[] = [];
let running = false;
let loops: Promise<void>[] = [];
let agent: Agent | undefined;
const samples = { start: [] as number[], end: [] as number[], status: [] as number[], peer: [] as number[] };
const reply = (r: LoadReply) => port.postMessage(r);

async function startBackends(n: number): Promise<void> {
  const names: string[] = [];
  const ports: number[] = [];
  for (let i = 0; i < n; i++) {
    const name = `p${i}`;
    const server = createServer((_req, res) => {
      res.setHeader('content-type', 'text/plain');
      res.end(name);
    });
    server.keepAliveTimeout = 65_000;
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    servers.push(server);
    names.push(name);
    ports.push((server.address() as { port: number }).port);
  }
  reply({ type: 'backends', names, ports });
}

function once(url: string, host: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const req = request(url, { agent, headers: { host }, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => {
        body += d;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', () => resolve({ status: 0, body: '' }));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', () => resolve({ status: 0, body: '' }));
    req.end();
  });
}

function start(url: string, host: string, concurrency: number, names: string[]): void {
  const index = new Map(names.map((name, i) => [name, i]));
  agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  for (const k of Object.values(samples)) k.length = 0;
  running = true;
  loops = Array.from({ length: concurrency }, async () => {
    while (running) {
      const t = now();
      const r = await once(url, host);
      samples.start.push(t);
      samples.end.push(now());
      samples.status.push(r.status);
      samples.peer.push(r.status === 200 ? (index.get(r.body) ?? -1) : -1);
    }
  });
  reply({ type: 'started' });
}

async function stop(): Promise<void> {
  running = false;
  await Promise.all(loops);
  agent?.destroy();
  reply({
    type: 'samples',
    start: Float64Array.from(samples.start),
    end: Float64Array.from(samples.end),
    status: Int32Array.from(samples.status),
    peer: Int32Array.from(samples.peer),
  });
}

port.on('message', (m: LoadCommand) => {
  if (m.type === 'backends') void startBackends(m.n);
  else if (m.type === 'start') start(m.url, m.host, m.concurrency, m.names);
  else if (m.type === 'stop') void stop();
  else if (m.type === 'close') {
    for (const s of servers) {
      s.close();
      s.closeAllConnections();
    }
    reply({ type: 'closed' });
    port.close();
  }
});
