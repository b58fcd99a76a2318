/**
 * Traffic benchmark (issue 11): how fast an endpoint change in etcd reaches nginx's routing, and
 * what it costs the traffic, with the lb-agent's two appliers side by side in one run:
 *   - lua: the production path, the routing document pushed to nginx's Lua (no reload);
 *   - reload: the baseline, a reload per change (upstream blocks with their peers rendered in,
 *     `nginx -t`, HUP), test/bench/traffic/reload-applier.ts, behind the same RouteApplier.
 * Each applier gets a fresh private nginx (the agent's main config, 2 workers), the same agent
 * code in this process, the same 8 loopback backends and the same closed-loop client (both in a
 * worker thread, test/bench/traffic/load-worker.ts, off the agent's event loop) and the same
 * change schedule: one app `web` with 4 peers, one peer swapped per change (remove the oldest,
 * then add the one out longest), written to `upstreams/web` as discovery does. Matrix: changes
 * at 0.2, 1 and 5 per second, with 1 and 1000 domains (1000 apps with a domain each; the changes
 * are on one of them).
 * Figures per cell: etcd write (the put's answer) → the agent's push accepted (Lua's answer, or
 * the reload confirmed), → first response from the added peer and → the last request the removed
 * peer answered (p50/p99/max); failed requests (status ≠ 200 or a transport error); request
 * latency p99 with no change vs during the changes; nginx reloads; nginx's RSS (master and
 * workers, VmRSS) steady and at its peak. Then the issue's goals for the Lua path, met or not
 * (the exit status is 0 either way: this is a measurement; non-zero only on errors).
 * Run: node test/bench/traffic.ts   (about 3.5 min; the region's etcd: `make up`, or ETCD_ENDPOINTS)
 * Env: BENCH_TRAFFIC_SECONDS (15: changes per rate cell), BENCH_TRAFFIC_STEADY_SECONDS (5),
 *   BENCH_TRAFFIC_RATES (0.2,1,5), BENCH_TRAFFIC_DOMAINS (1,1000), BENCH_TRAFFIC_CONCURRENCY (4).
 */
import { spawnSync } from 'node:child_process';
import { loadavg } from 'node:os';
import { createEtcdClient } from '@berth/shared/etcd';
import { createMetricsRegistry } from '@berth/shared/http';
import { BerthKeys } from '@berth/shared/keys';
import { createLogger } from '@berth/shared/logging';
import type { UpstreamEndpoint } from '@berth/shared/model';
import { regionEnv, uniqueId, uniquePrefix, waitFor } from '@berth/shared/testing';
import { LbAgent } from '../../services/lb-agent/src/agent.ts';
import { ControlClient } from '../../services/lb-agent/src/nginx/control-client.ts';
import { paths } from '../../services/lb-agent/src/nginx/main-conf.ts';
import { LuaRouteApplier, type RouteApplier } from '../../services/lb-agent/src/routing/applier.ts';
import {
  domainRecord,
  get,
  removeNginx,
  SlbWriter,
  startNginx,
  type TestNginx,
  upstreamsRecord,
} from '../../services/lb-agent/test/harness.ts';
import { now, rssSampler, type Samples, sentBetween, startLoadWorker, summary } from './traffic/load.ts';
import { ReloadRouteApplier, SerializedConfigManager } from './traffic/reload-applier.ts';

const SECONDS = Number(process.env.BENCH_TRAFFIC_SECONDS ?? 15);
const STEADY_SECONDS = Number(process.env.BENCH_TRAFFIC_STEADY_SECONDS ?? 5);
const RATES = (process.env.BENCH_TRAFFIC_RATES ?? '0.2,1,5').split(',').map(Number);
const DOMAIN_COUNTS = (process.env.BENCH_TRAFFIC_DOMAINS ?? '1,1000').split(',').map(Number);
const CONCURRENCY = Number(process.env.BENCH_TRAFFIC_CONCURRENCY ?? 4);
const BACKENDS = 8;
const PEERS = 4;
const APP = 'web';
const HOST = 'web.bench.test';
/** A removed peer answering a request sent this close to its re-add is counted as never drained. */
const CENSOR_MS = 50;
/** An added peer that answered a request sent this shortly before its addition was never removed: not timed. */
const OVERLAP_MS = 100;
const MODES = ['lua', 'reload'] as const;
type Mode = (typeof MODES)[number];

const env = regionEnv();
const etcd = createEtcdClient({ endpoints: (env.ETCD_ENDPOINTS ?? '').split(',') });
const prefix = uniquePrefix();
const keys = new BerthKeys(prefix);
const id = uniqueId(6);
const logger = createLogger({ service: 'lb-agent', level: 'warn', destination: process.stderr });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const until = (t: number) => sleep(Math.max(0, t - now()));

/** `sent`: when the put was sent; `at`: when etcd answered it (what is measured from). */
type Change = { kind: 'add' | 'remove'; peer: number; sent: number; at: number; revision: number; windowEnd: number };

type Cell = {
  domains: number;
  rate: number;
  mode: Mode;
  changes: number;
  routed: number[];
  /** etcd write → the agent's push accepted (Lua's answer, or the reload confirmed). */
  toApplied: number[];
  toNew: number[];
  toRemoved: number[];
  unconverged: number;
  failed: number;
  requests: number;
  p99Steady: number;
  p99Changes: number;
  reloads: number;
  rssPeak: number;
  /** nginx's peak RSS in the steady phase before the changes (same for every rate of a run). */
  rssSteady: number;
  reloadMs: number[];
};

/** An agent in this process driving `nginx` through `mode`'s applier, its config calls serialized and counted. */
async function startAgent(mode: Mode, nginx: TestNginx, group: string) {
  const control = new ControlClient(paths(nginx.prefix).controlSocket);
  const options = { nginxBin: 'nginx', main: nginx.main, control, logger, render: { listen: [nginx.main.listen] } };
  let applier: RouteApplier;
  let config: SerializedConfigManager;
  if (mode === 'lua') {
    config = new SerializedConfigManager(options);
    applier = new LuaRouteApplier(control);
  } else {
    ({ applier, config } = ReloadRouteApplier.create(options));
  }
  // When each document was accepted (Lua answered, or the reload was confirmed): the agent's share.
  const applied: { revision: number; at: number }[] = [];
  const inner = applier;
  const timed: RouteApplier = {
    async push(doc, body, o) {
      const r = await inner.push(doc, body, o);
      if (r.ok) applied.push({ revision: doc.revision, at: now() });
      return r;
    },
    remove: (app, revision, o) => inner.remove(app, revision, o),
    routes: () => inner.routes(),
  };
  const agent = new LbAgent({
    etcd,
    keys,
    group,
    host: 'bench',
    control,
    applier: timed,
    config,
    logger,
    metrics: createMetricsRegistry('lb-agent'),
    debounceMs: 50,
    // The drift check is the same for both and not what is measured: out of the way.
    digestIntervalMs: 60_000,
    leaseTtlSeconds: 10,
  });
  await agent.start();
  return { agent, applier, config, applied };
}

/** The routing figures of one change, from what the client saw. */
function measure(s: Samples, c: Change): { value: number; converged: boolean } {
  if (c.kind === 'add') {
    for (let i = 0; i < s.start.length; i++) {
      // Still answering from its earlier removal not applied yet: this addition cannot be timed.
      const start = s.start[i] as number;
      if (s.peer[i] === c.peer && start >= c.sent - OVERLAP_MS && start < c.sent) {
        return { value: Number.NaN, converged: false };
      }
    }
    for (let i = 0; i < s.start.length; i++) {
      const end = s.end[i] as number;
      if (s.peer[i] === c.peer && end >= c.at && (s.start[i] as number) < c.windowEnd) {
        return { value: Math.max(0, end - c.at), converged: true };
      }
    }
    return { value: c.windowEnd - c.at, converged: false };
  }
  let last = -1;
  for (let i = 0; i < s.start.length; i++) {
    const start = s.start[i] as number;
    if (s.peer[i] === c.peer && start >= c.at && start < c.windowEnd) last = Math.max(last, start);
  }
  if (last < 0) return { value: 0, converged: true };
  return { value: last - c.at, converged: c.windowEnd - last > CENSOR_MS };
}

function latencyP99(s: Samples, idx: number[]): number {
  return summary(idx.map((i) => (s.end[i] as number) - (s.start[i] as number))).p99;
}

type LoadWorker = Awaited<ReturnType<typeof startLoadWorker>>;
type Backend = LoadWorker['backends'][number];

/** An endpoint as discovery writes it, for a loopback backend. */
function peer(b: Backend): UpstreamEndpoint {
  return {
    address: '127.0.0.1',
    ports: { http: b.port },
    ready: true,
    serving: true,
    terminating: false,
    node: null,
    pod: b.name,
  };
}

/** What a rate cell recorded while it ran; the client's samples are read when the applier's run ends. */
type Pending = Omit<Cell, 'routed' | 'toNew' | 'toRemoved' | 'unconverged' | 'failed' | 'requests' | 'p99Changes'> & {
  from: number;
  to: number;
  list: Change[];
};

async function runApplier(domains: number, mode: Mode, load: LoadWorker): Promise<Cell[]> {
  const group = `tb${id}-${mode}-${domains}`;
  const w = new SlbWriter(etcd, prefix, group);
  const { backends } = load;
  const inSet = backends.slice(0, PEERS).map((_, i) => i);
  const out = backends.slice(PEERS).map((_, i) => PEERS + i);
  const writeWeb = () =>
    w.upstreams(upstreamsRecord(APP, { v1: { 'cell-a': inSet.map((i) => peer(backends[i] as Backend)) } }));
  await writeWeb();
  await w.domain(domainRecord(HOST, APP, group));
  const fillers = Array.from({ length: domains - 1 }, (_, i) => `f${String(i + 1).padStart(4, '0')}`);
  for (let i = 0; i < fillers.length; i += 64) {
    await Promise.all(
      fillers
        .slice(i, i + 64)
        .flatMap((app) => [
          w.upstreams(upstreamsRecord(app, { v1: { 'cell-a': [peer(backends[0] as Backend)] } })),
          w.domain(domainRecord(`${app}.bench.test`, app, group)),
        ]),
    );
  }
  const nginx = await startNginx({ workers: 2 });
  const url = `http://127.0.0.1:${nginx.port}/`;
  const t0 = now();
  const { agent, applier, config, applied } = await startAgent(mode, nginx, group);
  const rss = rssSampler(async () => (await nginx.pids()).master);
  const pending: Pending[] = [];
  let samples: Samples | undefined;
  let steady = { from: 0, to: 0 };
  let rssSteady = 0;
  try {
    await waitFor(
      async () => {
        const seen = new Set<string>();
        for (let i = 0; i < 40; i++) seen.add((await get(url, HOST)).body);
        return inSet.every((i) => seen.has(backends[i]?.name as string));
      },
      { timeoutMs: 120_000, intervalMs: 100, message: `${mode}: ${HOST} answered by its ${PEERS} peers` },
    );
    console.error(`# ${mode}, ${domains} domain(s): routed after ${((now() - t0) / 1000).toFixed(1)} s`);
    await load.start(url, HOST, CONCURRENCY);
    try {
      steady = { from: now() + 500, to: 0 };
      rss.take();
      await sleep(STEADY_SECONDS * 1000);
      steady.to = now();
      rssSteady = rss.take();
      for (const rate of RATES) {
        const n = Math.max(2, Math.round(SECONDS * rate));
        const reloadsBefore = config.reloads;
        const reloadMsBefore = config.reloadMs.length;
        rss.take();
        const from = now();
        const list: Change[] = [];
        for (let k = 0; k < n; k++) {
          await until(from + (k * 1000) / rate);
          // Between PEERS - 1 and PEERS peers: remove the oldest, then add the one out longest.
          let change: Pick<Change, 'kind' | 'peer'>;
          if (inSet.length === PEERS) {
            const p = inSet.shift() as number;
            out.push(p);
            change = { kind: 'remove', peer: p };
          } else {
            const p = out.shift() as number;
            inSet.push(p);
            change = { kind: 'add', peer: p };
          }
          const sent = now();
          const revision = await writeWeb();
          list.push({ ...change, sent, at: now(), revision, windowEnd: Number.POSITIVE_INFINITY });
        }
        const last = list.at(-1) as Change;
        await waitFor(async () => ((await applier.routes()).apps[APP]?.revision ?? 0) >= last.revision, {
          timeoutMs: 120_000,
          intervalMs: 5,
          message: `${mode}: the last change applied`,
        });
        await sleep(500); // requests in flight on the old routes come back
        const to = now();
        // A change's window ends when its peer's next change is sent (or at the end of the cell).
        list.forEach((c, i) => {
          const next = list.slice(i + 1).find((d) => d.peer === c.peer);
          c.windowEnd = next?.sent ?? to;
        });
        pending.push({
          domains,
          rate,
          mode,
          changes: n,
          from,
          to,
          list,
          p99Steady: 0,
          rssSteady,
          reloads: config.reloads - reloadsBefore,
          rssPeak: rss.take(),
          reloadMs: config.reloadMs.slice(reloadMsBefore),
          toApplied: list.map((c) => (applied.find((a) => a.revision >= c.revision)?.at ?? Number.NaN) - c.at),
        });
        console.error(`#   ${rate}/s: ${n} changes`);
      }
    } finally {
      samples = await load.stop();
    }
  } finally {
    await rss.stop();
    await agent.stop();
    await removeNginx(nginx);
    await etcd.delete().prefix(`${prefix}/slb/${group}/`).exec();
  }
  const s = samples;
  const p99Steady = latencyP99(s, sentBetween(s, steady.from, steady.to));
  return pending.map(({ from, to, list, ...cell }) => {
    const toNew: number[] = [];
    const toRemoved: number[] = [];
    let unconverged = 0;
    for (const c of list) {
      const m = measure(s, c);
      if (!Number.isNaN(m.value)) (c.kind === 'add' ? toNew : toRemoved).push(m.value);
      if (!m.converged) {
        unconverged++;
        console.error(
          `#   ${mode}, ${domains} domain(s), ${cell.rate}/s: ${c.kind} of p${c.peer} (revision ${c.revision}) not routed in its ${(c.windowEnd - c.at).toFixed(0)} ms window (${Number.isNaN(m.value) ? 'the peer was still answering from its removal' : `${m.value.toFixed(0)} ms`})`,
        );
      }
    }
    const idx = sentBetween(s, from, to);
    return {
      ...cell,
      p99Steady,
      routed: [...toNew, ...toRemoved],
      toNew,
      toRemoved,
      unconverged,
      failed: idx.filter((i) => s.status[i] !== 200).length,
      requests: idx.length,
      p99Changes: latencyP99(s, idx),
    };
  });
}

// ---- printing ------------------------------------------------------------------------------------

const ms = (v: number) => (Number.isNaN(v) ? '—' : v < 10 ? v.toFixed(1) : v.toFixed(0));
const triple = (values: number[]) => {
  const t = summary(values);
  return `${ms(t.p50)} / ${ms(t.p99)} / ${ms(t.max)}`;
};
const mib = (b: number) => (b / 2 ** 20).toFixed(1);

function print(cells: Cell[]): void {
  console.log(
    '| domains | changes/s | applier | changes | write → applied by the agent p50 / p99 / max ms | write → routed p50 / p99 / max ms | → first from new peer p50 / p99 / max ms | → last from removed peer p50 / p99 / max ms | not routed in window | failed / requests | latency p99 steady / changes ms | reloads | nginx RSS MiB steady / peak | routed p99 reload / lua |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const c of cells) {
    const lua = cells.find((x) => x.mode === 'lua' && x.domains === c.domains && x.rate === c.rate);
    const ratio =
      c.mode === 'reload' && lua
        ? `${(summary(c.routed).p99 / Math.max(summary(lua.routed).p99, 0.1)).toFixed(0)}×`
        : '';
    console.log(
      `| ${c.domains} | ${c.rate} | ${c.mode} | ${c.changes} | ${triple(c.toApplied)} | ${triple(c.routed)} | ${triple(c.toNew)} | ${triple(c.toRemoved)} | ${c.unconverged} | ${c.failed} / ${c.requests} | ${ms(c.p99Steady)} / ${ms(c.p99Changes)} | ${c.reloads} | ${mib(c.rssSteady)} / ${mib(c.rssPeak)} | ${ratio} |`,
    );
  }
  const reloadMs = cells.filter((c) => c.mode === 'reload');
  for (const domains of DOMAIN_COUNTS) {
    const all = reloadMs.filter((c) => c.domains === domains).flatMap((c) => c.reloadMs);
    if (all.length)
      console.log(
        `\nbaseline, ${domains} domain(s): one reload (render, nginx -t, HUP, a worker on the new generation) p50 / p99 / max ${triple(all)} ms over ${all.length}`,
      );
  }
  const lua = cells.filter((c) => c.mode === 'lua');
  const worstP99 = Math.max(...lua.map((c) => summary(c.routed).p99));
  const luaReloads = lua.reduce((a, c) => a + c.reloads, 0);
  const luaFailed = lua.reduce((a, c) => a + c.failed, 0);
  const luaUnrouted = lua.reduce((a, c) => a + c.unconverged, 0);
  const ratios = lua.flatMap((l) => {
    const r = cells.find((x) => x.mode === 'reload' && x.domains === l.domains && x.rate === l.rate);
    return r ? [summary(r.routed).p99 / Math.max(summary(l.routed).p99, 0.1)] : [];
  });
  const minRatio = ratios.length ? Math.min(...ratios) : Number.NaN;
  const yes = (ok: boolean) => (ok ? 'yes' : 'no');
  console.log('\n| goal (Lua path) | measured | met? |');
  console.log('| --- | --- | --- |');
  console.log(
    `| etcd write → routed p99 < 50 ms (worst cell) | ${ms(worstP99)} ms${luaUnrouted ? ` (${luaUnrouted} not routed in window)` : ''} | ${yes(worstP99 < 50 && luaUnrouted === 0)} |`,
  );
  console.log(`| 0 reloads during changes | ${luaReloads} | ${yes(luaReloads === 0)} |`);
  console.log(`| 0 failed requests | ${luaFailed} | ${yes(luaFailed === 0)} |`);
  console.log(
    `| ≥ 20× faster than the reload baseline (routed p99, smallest ratio) | ${minRatio.toFixed(0)}× | ${yes(minRatio >= 20)} |`,
  );
}

// ---- the run -------------------------------------------------------------------------------------

const commit = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim();
const nginxVersion = spawnSync('nginx', ['-v'], { encoding: 'utf8' }).stderr.trim();
console.log(
  `Traffic: etcd write → routed, Lua push vs reload per change (${commit}, ${nginxVersion}, ${new Date().toISOString()})`,
);
console.log(
  `${BACKENDS} backends, ${PEERS} peers, one swapped per change; ${CONCURRENCY} client loops; ${SECONDS} s per rate, ${STEADY_SECONDS} s steady; nginx 2 workers\n`,
);
const cells: Cell[] = [];
let load: LoadWorker | undefined;
try {
  load = await startLoadWorker(BACKENDS);
  for (const domains of DOMAIN_COUNTS) {
    for (const mode of MODES) cells.push(...(await runApplier(domains, mode, load)));
  }
  const order = (c: Cell) =>
    DOMAIN_COUNTS.indexOf(c.domains) * 1000 + RATES.indexOf(c.rate) * 10 + MODES.indexOf(c.mode);
  print(cells.sort((a, b) => order(a) - order(b)));
  console.log(
    `\nload average at the end: ${loadavg()
      .map((l) => l.toFixed(1))
      .join(' ')} (2 cores)`,
  );
} catch (err) {
  console.error(err);
  process.exitCode = 1;
} finally {
  await load?.close();
  await etcd
    .delete()
    .prefix(`${prefix}/`)
    .exec()
    .catch(() => undefined);
  etcd.close();
}
