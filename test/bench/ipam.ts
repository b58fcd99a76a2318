/**
 * IPAM benchmark, side by side in one run:
 *  1. ADD+DEL through the plugin binaries, as a container runtime calls them (a process per
 *     call, the network conf on stdin, started from Go as containerd starts them:
 *     test/bench/cni-driver), at concurrency 1, 8, 32 and 64: Berth's thin berth-ipam
 *     answered by a resident allocator (a cni-ipam daemon this bench starts from the source, on
 *     its own socket), the same binary with no daemon (it falls back to the direct plugin, which
 *     allocates over etcd itself), and Debian's host-local (files on local disk).
 *  2. A pod storm: ADDs alone at concurrency 64 (allocations/s, duplicates), then their DELs.
 *  3. `cnictl check` over 10,000 allocations and 10,000 pods (pods in a KWOK cell's API server).
 * Run: node test/bench/ipam.ts   (after make up; BENCH_SKIP_CHECK=1 leaves out 3; BENCH_ALLOCATIONS=10000 BENCH_PAIRS=64,160,320,640
 * BENCH_STORM=1000 BENCH_FALLBACK=1 to measure the fallback at every concurrency)
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BerthKeys, cidrToKey } from '@berth/shared/keys';
import { loadCellClient } from '@berth/shared/kube';
import { GatewayBackend } from '@berth/shared/store/lite';
import { REPO_ROOT, regionCredentials, regionEnv, regionIpamAuth, uniqueId, waitFor } from '@berth/shared/testing';
import { daemonStats } from '../../services/cni-ipam/src/daemon/client.ts';
import { Pools } from '../../services/cni-ipam/src/ipam/pools.ts';
import { startIpamDaemon } from '../../services/cni-ipam/test/harness.ts';

const env = regionEnv();
const endpoints = (env.ETCD_ENDPOINTS ?? '').split(',');
const id = uniqueId(6);
const keys = new BerthKeys(`/bench-${id}`);
const store = new GatewayBackend(endpoints, regionCredentials(env).etcd);
/** The thin plugin infra/ipam.sh installs (what containerd executes). */
const BERTH_IPAM = join(REPO_ROOT, '.local/bin/berth-ipam');
const HOST_LOCAL = '/usr/lib/cni/host-local';
const [C1, C8, C32, C64] = (process.env.BENCH_PAIRS ?? '64,160,320,640').split(',').map(Number) as [
  number,
  number,
  number,
  number,
];
const STORM = Number(process.env.BENCH_STORM ?? 1000);
const ALLOCATIONS = Number(process.env.BENCH_ALLOCATIONS ?? 10_000);

/**
 * The runtime's side: test/bench/cni-driver, built here, starts a process per call with Go's
 * os/exec as containerd does (forking this Node process for each call would measure Node's fork,
 * not the plugins). Writes the conf to a file it reads.
 */
const DRIVER = join(REPO_ROOT, '.local/lib/cni-bench-driver');
{
  const cache = join(process.env.HOME ?? '/root', '.cache/berth/go');
  const built = spawnSync(
    existsSync('/usr/local/go/bin/go') ? '/usr/local/go/bin/go' : 'go',
    ['build', '-trimpath', '-buildvcs=false', '-o', DRIVER, '.'],
    {
      cwd: join(REPO_ROOT, 'test/bench/cni-driver'),
      encoding: 'utf8',
      env: {
        ...process.env,
        GOCACHE: join(cache, 'build'),
        GOMODCACHE: join(cache, 'mod'),
        GOFLAGS: '-mod=mod',
        GOTOOLCHAIN: 'local',
        CGO_ENABLED: '0',
      },
    },
  );
  if (built.status !== 0) throw new Error(`building test/bench/cni-driver failed: ${built.stderr}`);
}

type DriverResult = { seconds: number; p50Ms: number; p99Ms: number; addresses: number; distinct: number };

function drive(
  bin: string,
  conf: string,
  mode: 'pairs' | 'add' | 'del',
  concurrency: number,
  count: number,
  tag: string,
): DriverResult {
  const confFile = join(socketDir, `${tag}.conf`);
  writeFileSync(confFile, conf);
  const res = spawnSync(
    DRIVER,
    [
      '-plugin',
      bin,
      '-conf',
      confFile,
      '-mode',
      mode,
      '-concurrency',
      String(concurrency),
      '-count',
      String(count),
      '-tag',
      tag,
    ],
    { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 },
  );
  if (res.status !== 0) throw new Error(`cni-driver ${bin} ${mode} c=${concurrency}: ${res.stderr}`);
  return JSON.parse(res.stdout) as DriverResult;
}

/** `pairs` ADD+DEL pairs, `concurrency` at a time. */
function addDel(bin: string, conf: string, concurrency: number, pairs: number, tag: string) {
  const r = drive(bin, conf, 'pairs', concurrency, pairs, tag);
  return { pairsPerSecond: pairs / r.seconds, p50: r.p50Ms, p99: r.p99Ms };
}

/** ADDs alone, then their DELs: allocations per second, and whether any address went out twice. */
function storm(bin: string, conf: string, concurrency: number, count: number, tag: string) {
  const adds = drive(bin, conf, 'add', concurrency, count, tag);
  const dels = drive(bin, conf, 'del', concurrency, count, tag);
  return {
    addsPerSecond: count / adds.seconds,
    delsPerSecond: count / dels.seconds,
    duplicates: adds.addresses - adds.distinct,
  };
}

const ms = (v: number) => v.toFixed(1);

// ---- 1. ADD+DEL ---------------------------------------------------------------------------------
const cell = 'cell-bench';
await new Pools(store, keys, cell).add('198.19.40.0/22');
const socketDir = mkdtempSync(join(tmpdir(), 'ipam-bench-'));
const socket = join(socketDir, 'ipam.sock');
const berthConf = (sock: string) =>
  JSON.stringify({
    cniVersion: '1.0.0',
    name: 'bench',
    ipam: {
      type: 'berth-ipam',
      etcdEndpoints: endpoints.join(','),
      ...regionIpamAuth(env),
      cell,
      etcdPrefix: keys.prefix,
      node: 'bench-node',
      socket: sock,
    },
  });
const daemonConf = berthConf(socket);
const fallbackConf = berthConf(join(socketDir, 'none', 'ipam.sock'));
const dataDir = mkdtempSync(join(tmpdir(), 'host-local-'));
const hostLocalConf = JSON.stringify({
  cniVersion: '1.0.0',
  name: 'bench',
  ipam: { type: 'host-local', dataDir, ranges: [[{ subnet: '198.19.44.0/22' }]] },
});
const daemon = await startIpamDaemon(socket);
// One pair each, not measured: a node's daemon has watched its cells since it started, and every
// plugin's first call pays for what it loads once (the daemon's first list of the cell).
for (const [bin, conf] of [
  [BERTH_IPAM, daemonConf],
  [HOST_LOCAL, hostLocalConf],
] as const) {
  drive(bin, conf, 'pairs', 1, 1, 'warm');
}

if (process.env.BENCH_SKIP_ADD_DEL !== '1') {
  const withFallback = process.env.BENCH_FALLBACK === '1';
  console.log('ADD+DEL pairs through the plugin binaries (a process per call)');
  console.log(
    '| concurrency | pairs | berth-ipam pairs/s | host-local pairs/s | ratio | berth-ipam p50 / p99 ms | host-local p50 / p99 ms | p50 ratio | p99 ratio | fallback pairs/s | fallback p50 / p99 ms |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const [concurrency, pairs] of [
    [1, C1],
    [8, C8],
    [32, C32],
    [64, C64],
  ] as const) {
    const berth = addDel(BERTH_IPAM, daemonConf, concurrency, pairs, `d${concurrency}`);
    const host = addDel(HOST_LOCAL, hostLocalConf, concurrency, pairs, `h${concurrency}`);
    // The fallback (today's direct plugin) at 1 and 8 only unless asked: it is the slow path.
    const fallback =
      withFallback || concurrency <= 8
        ? addDel(BERTH_IPAM, fallbackConf, concurrency, Math.min(pairs, 64), `f${concurrency}`)
        : undefined;
    console.log(
      `| ${concurrency} | ${pairs} | ${berth.pairsPerSecond.toFixed(1)} | ${host.pairsPerSecond.toFixed(1)} | ${(berth.pairsPerSecond / host.pairsPerSecond).toFixed(2)} | ${ms(berth.p50)} / ${ms(berth.p99)} | ${ms(host.p50)} / ${ms(host.p99)} | ${(berth.p50 / host.p50).toFixed(2)} | ${(berth.p99 / host.p99).toFixed(2)} | ${fallback ? fallback.pairsPerSecond.toFixed(1) : '-'} | ${fallback ? `${ms(fallback.p50)} / ${ms(fallback.p99)}` : '-'} |`,
    );
  }

  const own = await daemonStats(socket);
  console.log(
    `\nThe resident allocator's own time per request over the table (its counters, as cnictl stats shows them): ${Object.entries(
      own?.commands ?? {},
    )
      .map(([command, c]) => `${command} p50 ${c.p50Ms} ms, p99 ${c.p99Ms} ms (${c.requests} requests)`)
      .join(
        '; ',
      )}; ${own?.batches.transactions ?? 0} transactions carried more than one request (largest ${own?.batches.largest ?? 0})`,
  );

  console.log(`\nA pod storm: ${STORM} ADDs at concurrency 64, then their DELs`);
  console.log('| plugin | ADDs/s | DELs/s | duplicate addresses |');
  console.log('| --- | --- | --- | --- |');
  const stormBerth = storm(BERTH_IPAM, daemonConf, 64, STORM, 'sd');
  const stormHost = storm(HOST_LOCAL, hostLocalConf, 64, STORM, 'sh');
  for (const [name, r] of [
    ['berth-ipam (resident allocator)', stormBerth],
    ['host-local', stormHost],
  ] as const) {
    console.log(`| ${name} | ${r.addsPerSecond.toFixed(1)} | ${r.delsPerSecond.toFixed(1)} | ${r.duplicates} |`);
  }
  if (stormBerth.duplicates > 0) {
    console.error(`berth-ipam handed out ${stormBerth.duplicates} addresses twice`);
    process.exitCode = 1;
  }
}
await daemon.stop();
rmSync(dataDir, { recursive: true, force: true });
rmSync(socketDir, { recursive: true, force: true });

// ---- 2. cnictl check at scale -------------------------------------------------------------------
if (process.env.BENCH_SKIP_CHECK === '1') process.exit(process.exitCode ?? 0);
const kubeconfigDir = env.KUBECONFIG_DIR ?? join(REPO_ROOT, '.local/cells');
const cellB = loadCellClient(kubeconfigDir, 'cell-b');
const ns = `ipam-bench-${id}`;
await waitFor(async () => Boolean(await cellB.core.createNamespace({ body: { metadata: { name: ns } } })), {
  timeoutMs: 120_000,
});
try {
  let t0 = performance.now();
  // Pods for a scheduler that does not exist: the API server keeps them Pending, nothing binds or
  // starts them. (Pods bound to a missing node would be deleted by the pod GC after 40 s, and
  // the check would rightly report their addresses as leaked.)
  let made = 0;
  await Promise.all(
    Array.from({ length: 32 }, async () => {
      while (made < ALLOCATIONS) {
        const n = made++;
        // Retried: a test elsewhere may restart cell-b's API server meanwhile.
        await waitFor(
          async () => {
            await cellB.core
              .createNamespacedPod({
                namespace: ns,
                body: {
                  metadata: { name: `p${n}` },
                  spec: { schedulerName: 'berth-bench-nobody', containers: [{ name: 'c', image: 'none' }] },
                },
              })
              .catch((err: { code?: number }) => {
                if (err.code !== 409) throw err;
              });
            return true;
          },
          { timeoutMs: 120_000, intervalMs: 500 },
        );
      }
    }),
  );
  const podsSeconds = (performance.now() - t0) / 1000;
  t0 = performance.now();
  // Allocations as berth-ipam writes them (records, handles, blocks), 4 blocks per transaction
  // (116 operations: etcd refuses more than 128 in one).
  const checkCell = 'cell-check';
  await new Pools(store, keys, checkCell).add('198.18.0.0/16');
  const blocks = Math.ceil(ALLOCATIONS / 14);
  for (let b0 = 0; b0 < blocks; b0 += 4) {
    const writes: { put: string; value: string }[] = [];
    for (let b = b0; b < Math.min(blocks, b0 + 4); b++) {
      const base = 16 * (b + 1); // skip the first block (network and gateway)
      const blockCidr = `198.18.${Math.floor(base / 256)}.${base % 256}/28`;
      const allocations: Record<string, string> = {};
      for (let o = 1; o < 15 && b * 14 + o - 1 < ALLOCATIONS; o++) {
        const n = b * 14 + o - 1;
        const ip = `198.18.${Math.floor((base + o) / 256)}.${(base + o) % 256}`;
        const handle = `bench.c${n}.eth0`;
        allocations[String(o)] = handle;
        writes.push({
          put: keys.ipamIp(checkCell, ip),
          value: JSON.stringify({
            ip,
            block: blockCidr,
            pool: '198.18.0.0/16',
            node: 'n1',
            handle,
            network: 'bench',
            containerId: `c${n}`,
            ifName: 'eth0',
            namespace: ns,
            pod: `p${n}`,
            allocatedAt: new Date().toISOString(),
          }),
        });
        writes.push({ put: keys.ipamHandle(checkCell, handle), value: JSON.stringify({ ip, block: blockCidr }) });
      }
      writes.push({
        put: `${keys.ipamBlocks(checkCell)}${cidrToKey(blockCidr)}`,
        value: JSON.stringify({
          cidr: blockCidr,
          pool: '198.18.0.0/16',
          node: 'n1',
          claimedAt: new Date().toISOString(),
          allocations,
        }),
      });
    }
    await store.txn([], writes);
  }
  const allocSeconds = (performance.now() - t0) / 1000;
  const runs: number[] = [];
  let report: { allocations: number; pods: number; leaked: unknown[] } = { allocations: 0, pods: 0, leaked: [] };
  for (let i = 0; i < 3; i++) {
    t0 = performance.now();
    const res = spawnSync(
      join(REPO_ROOT, '.local/bin/cnictl'),
      ['--cell', checkCell, '--kubeconfig', join(kubeconfigDir, 'cell-b.kubeconfig'), '--json', 'check'],
      {
        encoding: 'utf8',
        maxBuffer: 256 * 1024 * 1024,
        env: { ...process.env, ETCD_PREFIX: keys.prefix, ETCD_ENDPOINTS: endpoints.join(',') },
      },
    );
    runs.push((performance.now() - t0) / 1000);
    report = JSON.parse(res.stdout);
  }
  runs.sort((a, b) => a - b);
  console.log(`\ncnictl check over ${report.allocations} allocations and ${report.pods} pods (cell-b's API server)`);
  console.log('| figure | value |');
  console.log('| --- | --- |');
  console.log(
    `| cnictl check, median of 3 (whole process: start, list etcd, list pods, compare) | ${runs[1]?.toFixed(2)} s |`,
  );
  console.log(`| leaked found (expected 0) | ${report.leaked.length} |`);
  if (report.leaked.length > 0) {
    console.error(`cnictl check reported ${report.leaked.length} leaks where every pod exists: a false positive`);
    process.exitCode = 1;
  }
  console.log(`| set-up: ${ALLOCATIONS} pods created | ${podsSeconds.toFixed(1)} s |`);
  console.log(`| set-up: ${ALLOCATIONS} allocations written | ${allocSeconds.toFixed(1)} s |`);
} finally {
  await cellB.core.deleteNamespace({ name: ns }).catch(() => undefined);
  await store.range(`${keys.prefix}/`).then(async (kvs) => {
    for (let i = 0; i < kvs.length; i += 128)
      await store.txn(
        [],
        kvs.slice(i, i + 128).map((kv) => ({ del: kv.key })),
      );
  });
}
