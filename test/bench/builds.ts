/**
 * Builds benchmark (issue 12), side by side in one run:
 *  1. Cold vs warm: a Go program importing a few real modules (cobra, x/text, uuid, yaml.v3 and
 *     their dependencies), built through a real builder-agent (in this process) from a local bare
 *     repository: cache off, cold (empty cache), warm (same commit), warm after a one-line change.
 *     The modules were fetched once on the host with `go mod download`; the compile container
 *     gets them only from a GOPROXY this bench serves from the host's module cache and counts:
 *     requests per run are the noise-free figure (warm ≈ 0).
 *  2. Affinity: N configs × M runs over 3 stable agents placed with `rank()` (as the API's
 *     dispatcher does) vs at random: share of runs landing on an agent that holds the config's cache.
 *  3. Share of configs that move when one of 4 agents leaves, over 10,000 config ids.
 * Run: node test/bench/builds.ts   (after make up; BENCH_REPS=3 BENCH_SKIP_BUILDS=1 BENCH_KEEP_IMAGE=1
 *      BENCH_CONFIGS=1000 BENCH_RUNS=10 BENCH_MOVE_CONFIGS=10000)
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import type { BuildConfig, BuildRun } from '@berth/shared/builds';
import {
  docker,
  gitRepo,
  openWorld,
  putConfig,
  queueRun,
  startAgent,
  waitForState,
} from '../../services/builder-agent/test/harness.ts';
import { goCompileImage, goEnv } from './builds/go-image.ts';
import { CountingGoProxy, type ProxyCounts } from './builds/goproxy.ts';
import {
  affinityHitRate,
  agents,
  byRandom,
  byRank,
  configIds,
  movesWhenOneLeaves,
  seeded,
} from './builds/placement.ts';
import { SAMPLE_FILES, sampleMain } from './builds/sample.ts';

const REPS = Number(process.env.BENCH_REPS ?? 3);
const CONFIGS = Number(process.env.BENCH_CONFIGS ?? 1000);
const RUNS = Number(process.env.BENCH_RUNS ?? 10);
const MOVE_CONFIGS = Number(process.env.BENCH_MOVE_CONFIGS ?? 10_000);

const STEPS = ['clone', 'compile', 'build', 'push'] as const;
type Scenario = 'cache off' | 'cold' | 'warm' | 'warm + 1-line change';
type Measured = {
  scenario: Scenario;
  steps: Record<string, number>;
  totalMs: number;
  hit: boolean | null;
} & ProxyCounts;

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? ((s[(s.length - 1) >> 1] as number) + (s[s.length >> 1] as number)) / 2 : Number.NaN;
};
const secs = (ms: number) => (ms / 1000).toFixed(2);

// ---- 1. Cold vs warm ------------------------------------------------------------------------------
async function coldVsWarm(): Promise<void> {
  const world = await openWorld();
  let proxy: CountingGoProxy | undefined;
  let agent: Awaited<ReturnType<typeof startAgent>> | undefined;
  let image: string | undefined;
  // Once, from the end of the run or from Ctrl-C: the agent, the proxy, the world's etcd prefix,
  // queues, streams, images and temp dir, and the compile image.
  let cleaning: Promise<void> | undefined;
  const cleanup = () => {
    cleaning ??= (async () => {
      await agent?.service.stop();
      await proxy?.close();
      await world.close();
      if (image && process.env.BENCH_KEEP_IMAGE !== '1')
        await docker
          .getImage(image)
          .remove({ force: true })
          .catch(() => undefined);
    })();
    return cleaning;
  };
  const onSignal = (signal: NodeJS.Signals) => {
    console.error(`${signal}: cleaning up`);
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
  try {
    // The modules, fetched once with the ordinary client (through the Go module proxy) into the
    // host's module cache; go.mod and go.sum are committed with the sample.
    const sampleDir = join(world.tmp, 'sample');
    mkdirSync(sampleDir);
    for (const [path, text] of Object.entries(SAMPLE_FILES)) writeFileSync(join(sampleDir, path), text);
    execFileSync('go', ['mod', 'tidy'], { cwd: sampleDir, stdio: 'pipe' });
    execFileSync('go', ['mod', 'download', 'all'], { cwd: sampleDir, stdio: 'pipe' });
    const files: Record<string, string> = {};
    for (const path of [...Object.keys(SAMPLE_FILES), 'go.mod', 'go.sum'])
      files[path] = readFileSync(join(sampleDir, path), 'utf8');
    const modules = execFileSync('go', ['list', '-m', 'all'], { cwd: sampleDir }).toString().trim().split('\n');

    // The compile container sits on Docker's bridge; the proxy listens on the bridge's gateway,
    // the host's own address on that network (the agent has no host-network option).
    const bridge = await docker.getNetwork('bridge').inspect();
    const gateway = (bridge.IPAM?.Config?.[0]?.Gateway as string | undefined) ?? '172.17.0.1';
    proxy = await CountingGoProxy.start(join(goEnv('GOMODCACHE'), 'cache/download'), gateway);
    const t0 = performance.now();
    const compileImage = await goCompileImage(docker);
    image = compileImage;
    const imageMs = performance.now() - t0;

    const repo = gitRepo(world, files);
    agent = await startAgent(world, { BUILDER_SLOTS: '1', BUILD_COMPILE_TIMEOUT: '10m' });
    const compile = {
      image: compileImage,
      script: `export GOPROXY=${proxy.url}; go version && go build -trimpath -o app . && ./app --help | head -1`,
    };
    const running = agent;
    const activeProxy = proxy;
    const measure = async (scenario: Scenario, config: BuildConfig): Promise<Measured> => {
      activeProxy.take();
      const queued = await queueRun(world, config, running.id);
      const run: BuildRun = await waitForState(world, queued.id, ['succeeded', 'failed', 'cancelled'], 600_000);
      if (run.state !== 'succeeded') throw new Error(`${scenario}: run ${run.id} ${run.state}: ${run.reason}`);
      const steps: Record<string, number> = {};
      for (const step of run.steps) steps[step.name] = step.durationMs ?? 0;
      const totalMs =
        Date.parse(run.finishedAt ?? run.updatedAt) - Date.parse(run.steps[0]?.startedAt ?? run.createdAt);
      return { scenario, steps, totalMs, hit: run.cache.hit, ...activeProxy.take() };
    };

    console.log(
      `Cold vs warm: Go sample (${modules.length - 1} modules: ${modules.slice(1).join(', ')}), ` +
        `compile image ${compileImage} (${imageMs > 1000 ? `built in ${secs(imageMs)} s, ` : ''}not timed), ` +
        `proxy ${proxy.url}, ${REPS} rep(s), one agent (1 slot)`,
    );
    const results: Measured[] = [];
    // Not timed: the agent's first clone of the repository makes its mirror.
    const warmup = await putConfig(world, {
      git: { url: repo.url, branch: 'main' },
      compile: { image: compileImage, script: ': > app' },
      cache: false,
    });
    await measure('cache off', warmup);
    let line = 0;
    for (let rep = 0; rep < REPS; rep++) {
      const off = await putConfig(world, { git: { url: repo.url, branch: 'main' }, compile, cache: false });
      results.push(await measure('cache off', off));
      const on = await putConfig(world, { git: { url: repo.url, branch: 'main' }, compile, cache: true });
      results.push(await measure('cold', on));
      results.push(await measure('warm', on));
      line++;
      writeFileSync(join(repo.work, 'main.go'), sampleMain(`berth sample, change ${line}`));
      const git = (...args: string[]) =>
        execFileSync('git', ['-c', 'user.name=b', '-c', 'user.email=b@b', ...args], { cwd: repo.work, stdio: 'pipe' });
      git('commit', '-qam', `change ${line}`);
      git('push', '-q', 'origin', 'main');
      results.push(await measure('warm + 1-line change', on));
    }

    console.log(
      '| scenario | cache hit | clone s | compile s | build s | push s | total s | proxy requests | proxy MB |',
    );
    console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
    const scenarios: Scenario[] = ['cache off', 'cold', 'warm', 'warm + 1-line change'];
    const med = (s: Scenario, f: (m: Measured) => number) => median(results.filter((m) => m.scenario === s).map(f));
    for (const s of scenarios) {
      const hits = results.filter((m) => m.scenario === s).map((m) => String(m.hit));
      console.log(
        `| ${s} | ${[...new Set(hits)].join('/')} | ${STEPS.map((step) => secs(med(s, (m) => m.steps[step] ?? 0))).join(' | ')} | ${secs(med(s, (m) => m.totalMs))} | ${med(s, (m) => m.requests)} | ${(med(s, (m) => m.bytes) / 1e6).toFixed(2)} |`,
      );
    }
    const cold = med('cold', (m) => m.steps.compile ?? 0);
    const warm = med('warm', (m) => m.steps.compile ?? 0);
    const changed = med('warm + 1-line change', (m) => m.steps.compile ?? 0);
    console.log(
      `compile step warm/cold: ${(warm / cold).toFixed(3)} (goal ≤ 0.1), warm+change/cold: ${(changed / cold).toFixed(3)}; ` +
        `total warm/cold: ${(med('warm', (m) => m.totalMs) / med('cold', (m) => m.totalMs)).toFixed(3)}; ` +
        `proxy requests warm: ${med('warm', (m) => m.requests)} (goal 0), cold: ${med('cold', (m) => m.requests)}, not found: ${results.reduce((n, m) => n + m.notFound, 0)}` +
        (REPS > 1 ? ` (medians of ${REPS})` : ''),
    );
  } finally {
    await cleanup();
    process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
  }
}

// ---- 2. Affinity hit rate ---------------------------------------------------------------------------
function affinity(): void {
  const pool = agents(3);
  const ids = configIds(CONFIGS);
  const ranked = affinityHitRate(ids, RUNS, byRank(pool));
  const random = affinityHitRate(ids, RUNS, byRandom(pool, seeded(12)));
  const secondRuns = (place: Parameters<typeof affinityHitRate>[2]) => affinityHitRate(ids, 2, place);
  console.log(
    `\nAffinity: ${CONFIGS} configs × ${RUNS} runs over 3 stable agents (weight 2 each); a run after a config's first is a hit when its agent holds the config's cache`,
  );
  console.log('| placement | runs after the first | hits | hit rate | hit rate of second runs | caches per config |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  console.log(
    `| rank() (affinity) | ${ranked.runs} | ${ranked.hits} | ${(ranked.rate * 100).toFixed(1)} % | ${(secondRuns(byRank(pool)).rate * 100).toFixed(1)} % | ${ranked.copies.toFixed(2)} |`,
  );
  console.log(
    `| random | ${random.runs} | ${random.hits} | ${(random.rate * 100).toFixed(1)} % | ${(secondRuns(byRandom(pool, seeded(12))).rate * 100).toFixed(1)} % | ${random.copies.toFixed(2)} |`,
  );
  console.log(`affinity/random hit rate: ${(ranked.rate / random.rate).toFixed(2)} (goal: affinity 100 %)`);
}

// ---- 3. Moves when one of 4 agents leaves -----------------------------------------------------------
function moves(): void {
  const ids = configIds(MOVE_CONFIGS);
  console.log(`\nMoves: ${MOVE_CONFIGS} config ids, 4 agents, one leaves (goal: share ≈ 1/4, 0 among the others)`);
  console.log('| weights | leaver (weight) | its configs | moved | share moved | moved among the others |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const weights of [
    [2, 2, 2, 2],
    [4, 2, 1, 1],
  ]) {
    const pool = agents(4).map((a, i) => ({ ...a, weight: weights[i] as number }));
    for (const leaver of [pool[0], pool[3]]) {
      if (!leaver) continue;
      const m = movesWhenOneLeaves(ids, pool, leaver);
      console.log(
        `| ${weights.join(',')} | ${leaver.id.slice(0, 7)} (${leaver.weight}) | ${m.ofLeaver} | ${m.moved} | ${m.share.toFixed(4)} (weight share ${(leaver.weight / weights.reduce((a, b) => a + b, 0)).toFixed(4)}) | ${m.movedAmongOthers} |`,
      );
    }
  }
}

const load = () =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');
console.log(`builds bench: ${cpus().length} cores, load average ${load()}`);
if (process.env.BENCH_SKIP_BUILDS !== '1') await coldVsWarm();
affinity();
moves();
console.log(`\nload average at the end: ${load()}`);
