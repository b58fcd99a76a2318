/**
 * `cnictl`: IP pools, blocks and addresses of a cell, for node operators.
 *
 *   cnictl --cell cell-a pool add|list|drain|activate|remove
 *   cnictl --cell cell-a block list [--node N]
 *   cnictl --cell cell-a ip list [--node N]
 *   cnictl --cell cell-a check [--json]
 *   cnictl --cell cell-a release <ip>… | release --leaked [--older-than 1h] [--dry-run]
 *   cnictl --cell cell-a stats [--socket PATH]   (with the node's resident allocator's counters)
 *
 * Reads ETCD_ENDPOINTS (and ETCD_PREFIX); `check` and `release --leaked` read the cell's pods
 * through `--kubeconfig` (default `<KUBECONFIG_DIR or .local/cells>/<cell>.kubeconfig`).
 * Errors: one line on stderr, exit 2 (usage) or 1; `check` exits 1 when it finds a problem.
 * `check` is one-shot: the checker daemon (src/index.ts) is what checks a cell continuously.
 */
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseDuration } from '@berth/shared/config';
import { BerthError } from '@berth/shared/errors';
import { BerthKeys } from '@berth/shared/keys';
import { GatewayBackend } from '@berth/shared/store/lite';
import { Command, CommanderError } from 'commander';
import { type CheckReport, checkCell, listAllocations, listPods, problems, releaseLeaks } from '../checker/check.ts';
import { daemonStats } from '../daemon/client.ts';
import { type DaemonStats, DEFAULT_SOCKET } from '../daemon/protocol.ts';
import { Allocator } from '../ipam/allocator.ts';
import { ipToInt, parseCidr } from '../ipam/cidr.ts';
import { parseBlock } from '../ipam/model.ts';
import { Pools } from '../ipam/pools.ts';
import type { FallbackCount } from '../plugin/fallback.ts';

/** A wrong command line: exit 2. */
export class UsageError extends BerthError {
  static readonly CODE = 'usage';
}

type Globals = { cell: string; kubeconfig?: string; json?: boolean };

function durationFlag(flag: string, text: string): number {
  const ms = parseDuration(text);
  if (ms === undefined) throw new UsageError(`${flag}: not a duration: "${text}" (use e.g. 30s, 10m, 1h, 7d)`);
  return ms;
}

function table(rows: (string | number)[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => String(r[i] ?? '').length))) ?? [];
  return rows
    .map((r) =>
      r
        .map((c, i) => String(c).padEnd(widths[i] ?? 0))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** ETCD_USERNAME with ETCD_PASSWORD or ETCD_PASSWORD_FILE (what .local/env names), when set. */
function etcdCredentials(env: NodeJS.ProcessEnv): { username?: string; password?: string } {
  if (!env.ETCD_USERNAME) return {};
  if (env.ETCD_PASSWORD !== undefined || !env.ETCD_PASSWORD_FILE) {
    return { username: env.ETCD_USERNAME, password: env.ETCD_PASSWORD ?? '' };
  }
  try {
    return {
      username: env.ETCD_USERNAME,
      password: readFileSync(env.ETCD_PASSWORD_FILE, 'utf8').replace(/\r?\n$/, ''),
    };
  } catch (err) {
    throw new UsageError(
      `cannot read ETCD_PASSWORD_FILE ${env.ETCD_PASSWORD_FILE}: ${(err as NodeJS.ErrnoException).code}`,
    );
  }
}

export type CnictlIo = { out: (s: string) => void; err: (s: string) => void; env: NodeJS.ProcessEnv };

export async function cnictl(argv: string[], io: CnictlIo): Promise<number> {
  const env = io.env;
  const endpoints = (env.ETCD_ENDPOINTS ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const keys = new BerthKeys(env.ETCD_PREFIX || '/berth');
  let exitCode = 0;

  const program = new Command('cnictl')
    .description("Berth's IP pools, blocks and addresses of one cell")
    .requiredOption('--cell <cell>', 'the cell (e.g. cell-a)')
    .option('--kubeconfig <path>', "the cell's kubeconfig (check, release --leaked)")
    .option('--json', 'machine-readable output')
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.out(s.trimEnd()), writeErr: (s) => io.err(s.trimEnd()) })
    .showHelpAfterError(false);

  const ctx = () => {
    const g = program.opts<Globals>();
    if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(g.cell))
      throw new UsageError(`--cell must be a cell name like cell-a (got "${g.cell}")`);
    if (endpoints.length === 0)
      throw new UsageError('ETCD_ENDPOINTS is not set (e.g. http://127.0.0.1:2379): source .local/env');
    const backend = new GatewayBackend(endpoints, etcdCredentials(env));
    return {
      g,
      backend,
      allocator: new Allocator({ backend, keys, cell: g.cell }),
      pools: new Pools(backend, keys, g.cell),
    };
  };
  const podsOf = async (g: Globals) => {
    const { KubeConfig, CoreV1Api } = await import('@kubernetes/client-node');
    const dir = env.KUBECONFIG_DIR ?? join(env.BERTH_ROOT ?? process.cwd(), '.local/cells');
    const path = resolve(g.kubeconfig ?? join(dir, `${g.cell}.kubeconfig`));
    const kc = new KubeConfig();
    try {
      kc.loadFromFile(path);
    } catch (err) {
      throw new UsageError(`cannot read the kubeconfig of ${g.cell} at ${path}: ${(err as Error).message}`);
    }
    const core = kc.makeApiClient(CoreV1Api);
    return () => listPods(core);
  };
  const print = (g: Globals, json: unknown, text: () => string) =>
    io.out(g.json ? JSON.stringify(json, null, 2) : text());

  const pool = program.command('pool').description('IP pools of the cell');
  pool
    .command('add <cidr>')
    .description('add a pool')
    .action(async (cidr: string) => {
      const { pools } = ctx();
      const p = await pools.add(cidr);
      io.out(`pool ${p.cidr} added to ${program.opts<Globals>().cell}`);
    });
  pool
    .command('list')
    .description('pools with their use')
    .action(async () => {
      const { g, pools } = ctx();
      const list = await pools.list();
      print(g, list, () =>
        table([
          ['POOL', 'STATE', 'BLOCKS', 'ALLOCATED', 'CAPACITY'],
          ...list.map((p) => [p.cidr, p.state, p.blocks, p.allocated, p.capacity]),
        ]),
      );
    });
  pool
    .command('drain <cidr>')
    .description('hand out no new addresses from a pool')
    .action(async (cidr: string) => {
      const p = await ctx().pools.setState(cidr, 'draining');
      io.out(`pool ${p.cidr} is draining: it hands out no new addresses`);
    });
  pool
    .command('activate <cidr>')
    .description('hand out addresses from a drained pool again')
    .action(async (cidr: string) => {
      const p = await ctx().pools.setState(cidr, 'active');
      io.out(`pool ${p.cidr} is active`);
    });
  pool
    .command('remove <cidr>')
    .description('remove a pool (refused while any of its addresses is allocated)')
    .action(async (cidr: string) => {
      await ctx().pools.remove(cidr);
      io.out(`pool ${parseCidr(cidr).text} removed`);
    });

  program
    .command('block')
    .description('blocks of 16 addresses')
    .command('list')
    .option('--node <node>', 'only this node')
    .action(async (o: { node?: string }) => {
      const { g, backend } = ctx();
      const blocks = (await backend.range(keys.ipamBlocks(g.cell)))
        .map(parseBlock)
        .filter((b) => !o.node || b.node === o.node)
        .sort((a, b) => parseCidr(a.cidr).base - parseCidr(b.cidr).base);
      print(g, blocks, () =>
        table([
          ['BLOCK', 'POOL', 'NODE', 'ALLOCATED', 'CLAIMED', 'EMPTY SINCE'],
          ...blocks.map((b) => [
            b.cidr,
            b.pool,
            b.node,
            Object.keys(b.allocations).length,
            b.claimedAt,
            b.emptySince ?? '-',
          ]),
        ]),
      );
    });

  program
    .command('ip')
    .description('allocated addresses')
    .command('list')
    .option('--node <node>', 'only this node')
    .action(async (o: { node?: string }) => {
      const { g, backend } = ctx();
      const ips = (await listAllocations(backend, keys, g.cell))
        .filter((a) => !o.node || a.node === o.node)
        .sort((a, b) => ipToInt(a.ip) - ipToInt(b.ip));
      print(g, ips, () =>
        table([
          ['IP', 'NODE', 'POD', 'CONTAINER', 'IF', 'ALLOCATED'],
          ...ips.map((a) => [
            a.ip,
            a.node,
            a.namespace ? `${a.namespace}/${a.pod}` : '-',
            a.containerId.slice(0, 12),
            a.ifName,
            a.allocatedAt,
          ]),
        ]),
      );
    });

  const renderReport = (r: CheckReport) => {
    const lines = [`cell ${r.cell}: ${r.allocations} allocations, ${r.pods} pods, checked ${r.checkedAt}`];
    if (problems(r) === 0) lines.push('no problems');
    if (r.leaked.length) {
      lines.push(`\nleaked (${r.leaked.length}): held in etcd for no running pod`);
      lines.push(
        table([
          ['IP', 'NODE', 'POD', 'ALLOCATED', 'WHY'],
          ...r.leaked.map((l) => [l.ip, l.node, `${l.namespace}/${l.pod}`, l.allocatedAt, l.reason]),
        ]),
      );
    }
    if (r.unknown.length) {
      lines.push(`\nunknown (${r.unknown.length}): pods with a pool address Berth did not allocate`);
      lines.push(table([['IP', 'NODE', 'POD'], ...r.unknown.map((u) => [u.ip, u.node, `${u.namespace}/${u.pod}`])]));
    }
    if (r.duplicates.length) {
      lines.push(`\nduplicates (${r.duplicates.length}): one address, several pods`);
      lines.push(table([['IP', 'PODS'], ...r.duplicates.map((d) => [d.ip, d.pods.join(', ')])]));
    }
    return lines.join('\n');
  };

  program
    .command('check')
    .description('compare allocations with the pods of the cell: leaked, unknown, duplicate addresses')
    .action(async () => {
      const { g, backend } = ctx();
      const report = await checkCell({ backend, keys, cell: g.cell, pods: await podsOf(g) });
      print(g, report, () => renderReport(report));
      exitCode = problems(report) > 0 ? 1 : 0;
    });

  program
    .command('release [ips...]')
    .description('free addresses: the ones named, or every leaked one with --leaked')
    .option('--leaked', 'every address `check` reports as leaked')
    .option('--older-than <duration>', 'with --leaked: only allocations older than this')
    .option('--dry-run', 'say what would be released, release nothing')
    .action(async (ips: string[], o: { leaked?: boolean; olderThan?: string; dryRun?: boolean }) => {
      const { g, backend, allocator } = ctx();
      if (!o.leaked && ips.length === 0) throw new UsageError('name the addresses to release, or use --leaked');
      if (o.leaked && ips.length > 0) throw new UsageError('use either addresses or --leaked, not both');
      if (o.leaked) {
        const report = await checkCell({ backend, keys, cell: g.cell, pods: await podsOf(g) });
        const minAge = o.olderThan ? durationFlag('--older-than', o.olderThan) : 0;
        const leaks = report.leaked.filter((l) => Date.now() - Date.parse(l.allocatedAt) >= minAge);
        if (o.dryRun) {
          print(g, leaks, () =>
            leaks.length ? leaks.map((l) => `would release ${l.ip} (${l.reason})`).join('\n') : 'nothing to release',
          );
          return;
        }
        const released = await releaseLeaks(allocator, leaks);
        print(g, released, () =>
          released.length ? released.map((ip) => `released ${ip}`).join('\n') : 'nothing to release',
        );
        return;
      }
      for (const ip of ips) ipToInt(ip);
      for (const ip of ips) {
        if (o.dryRun) {
          io.out(`would release ${ip}`);
          continue;
        }
        const r = await allocator.releaseIp(ip);
        if (!r) {
          io.err(`cnictl: ${ip} is not allocated in ${g.cell}`);
          exitCode = 1;
        } else io.out(`released ${ip} (${r.namespace ? `${r.namespace}/${r.pod}` : r.containerId})`);
      }
    });

  program
    .command('stats')
    .description("use per pool and per node, the node's resident allocator's counters, and fallbacks")
    .option('--socket <path>', "the resident allocator's socket (default $IPAM_SOCKET or /run/berth/ipam.sock)")
    .action(async (opts: { socket?: string }) => {
      const { g, backend, pools } = ctx();
      const socket = opts.socket ?? env.IPAM_SOCKET ?? DEFAULT_SOCKET;
      const [list, blockKvs, fallbackKvs, daemon] = await Promise.all([
        pools.list(),
        backend.range(keys.ipamBlocks(g.cell)),
        backend.range(keys.ipamFallbacksAll(g.cell)),
        daemonStats(socket),
      ]);
      const nodes = new Map<string, { blocks: number; allocated: number }>();
      for (const b of blockKvs.map(parseBlock)) {
        const n = nodes.get(b.node) ?? { blocks: 0, allocated: 0 };
        n.blocks++;
        n.allocated += Object.keys(b.allocations).length;
        nodes.set(b.node, n);
      }
      const byNode = [...nodes]
        .map(([node, n]) => ({ node, ...n, free: n.blocks * 16 - n.allocated }))
        .sort((a, b) => (a.node < b.node ? -1 : 1));
      const fallbacks = fallbackKvs.map((kv) => ({
        node: kv.key.slice(keys.ipamFallbacksAll(g.cell).length),
        ...parseFallbacks(kv.value),
      }));
      print(g, { pools: list, nodes: byNode, daemon: daemon ?? null, fallbacks }, () =>
        [
          table([
            ['POOL', 'STATE', 'ALLOCATED', 'CAPACITY', 'USE'],
            ...list.map((p) => [
              p.cidr,
              p.state,
              p.allocated,
              p.capacity,
              `${((100 * p.allocated) / p.capacity).toFixed(1)}%`,
            ]),
          ]),
          '',
          table([
            ['NODE', 'BLOCKS', 'ALLOCATED', 'FREE IN BLOCKS'],
            ...byNode.map((n) => [n.node, n.blocks, n.allocated, n.free]),
          ]),
          '',
          daemonText(socket, daemon),
          ...(fallbacks.length > 0
            ? [
                '',
                table([
                  ['NODE', 'FALLBACKS', 'LAST', 'WHY'],
                  ...fallbacks.map((f) => [f.node, f.count ?? '?', f.lastAt ?? '-', f.lastReason ?? '-']),
                ]),
              ]
            : []),
        ].join('\n'),
      );
    });

  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.exitCode === 0) return 0;
      return 2;
    }
    const message = (err as Error).message.split('\n')[0];
    io.err(`cnictl: ${message}`);
    return err instanceof UsageError ? 2 : 1;
  }
  return exitCode;
}

/** A node's fallback counter (../plugin/fallback.ts writes it); what does not parse shows as unknown. */
function parseFallbacks(value: string): { count: number | null; lastAt?: string; lastReason?: string } {
  try {
    const f = JSON.parse(value) as Partial<FallbackCount>;
    return { count: typeof f.count === 'number' ? f.count : null, lastAt: f.lastAt, lastReason: f.lastReason };
  } catch {
    return { count: null };
  }
}

/** The resident allocator's counters as `cnictl stats` prints them. */
function daemonText(socket: string, stats: DaemonStats | undefined): string {
  if (!stats) return `resident allocator: none answers on ${socket} (the thin plugin allocates directly)`;
  const b = stats.batches;
  return [
    `resident allocator: ${socket}, up since ${stats.startedAt}; ${b.transactions} batched transactions carried ${b.requests} requests (largest ${b.largest})`,
    table([
      ['COMMAND', 'REQUESTS', 'FAILURES', 'P50 MS', 'P99 MS'],
      ...Object.entries(stats.commands).map(([command, c]) => [command, c.requests, c.failures, c.p50Ms, c.p99Ms]),
    ]),
  ].join('\n');
}

if (import.meta.main) {
  const code = await cnictl(process.argv.slice(2), {
    out: (s) => process.stdout.write(`${s}\n`),
    err: (s) => process.stderr.write(`${s}\n`),
    env: process.env,
  });
  process.exit(code);
}
