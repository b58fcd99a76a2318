/**
 * One run of a build, start to end, on this machine: clone → compile (skipped without a compile
 * image) → build → push (confirmed in the registry by digest). Each step is a state change of the
 * run (compare-and-set, fenced by the attempt, with its `build` event) and a step record with its
 * start, end and duration; each step has its own timeout; the run's AbortSignal (cancel, lost
 * lock, shutdown) stops whatever the step runs.
 */
import { readFile, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import {
  BUILD_STEPS,
  type BuildConfig,
  type BuildRun,
  type BuildState,
  type BuildStepName,
  buildRunSchema,
  FINAL_BUILD_STATES,
} from '@berth/shared/builds';
import { UnavailableError } from '@berth/shared/errors';
import type { Etcd3 } from '@berth/shared/etcd';
import type { EventSubjects } from '@berth/shared/events';
import type { BerthKeys } from '@berth/shared/keys';
import type { Logger } from '@berth/shared/logging';
import type { EventsComponent, JetStreamClient } from '@berth/shared/nats';
import type { Store } from '@berth/shared/store';
import type { BuildCache } from '../cache/build-cache.ts';
import { BuildLog } from '../logs/build-log.ts';
import type { DockerImageBuilder } from '../steps/docker.ts';
import { credentialMasks, type GitCredential, type GitMirrors } from '../steps/git.ts';
import { type PushCredentials, pullCredential } from '../steps/push-credentials.ts';
import type { RegistryClient } from '../steps/registry.ts';
import { finish, RunRecord, runEvent, StaleAttemptError } from './run-store.ts';

/** Why a run's signal was aborted. */
export type AbortKind = 'cancelled' | 'lock-lost' | 'shutdown' | 'superseded';

export class RunAborted extends Error {
  readonly kind: AbortKind;
  constructor(kind: AbortKind, message?: string) {
    super(message ?? kind);
    this.kind = kind;
  }
}

class StepTimeout extends Error {}

export type StepTimeouts = Record<BuildStepName, number>;

export type BuildRunnerOptions = {
  etcd: Etcd3;
  store: Store;
  keys: BerthKeys;
  events?: EventsComponent | undefined;
  js: () => JetStreamClient;
  subjects: EventSubjects;
  git: GitMirrors;
  docker: DockerImageBuilder;
  registry: RegistryClient;
  cache: BuildCache;
  dataDir: string;
  registryAddr: string;
  /** The registry credential of one attempt of a run (push, compile image pull, confirm). */
  registryAuth: PushCredentials;
  credentialsDir?: string | undefined;
  timeouts: StepTimeouts;
  agentId: string;
  logger: Logger;
  /** A step ended (metrics). */
  onStep?: (step: BuildStepName, result: string, seconds: number) => void;
  /** Log batches flushed at most this often (tests). */
  logFlushMs?: number;
};

export type RunOutcome =
  | { result: 'succeeded' | 'failed' | 'cancelled'; run: BuildRun }
  | { result: 'stale'; why: string }
  /** The run could not be read (etcd unavailable): nothing was started; try again later. */
  | { result: 'unavailable'; why: string }
  | { result: 'abandoned'; why: string };

const STATE_OF_STEP: Record<BuildStepName, BuildState> = {
  clone: 'cloning',
  compile: 'compiling',
  build: 'building',
  push: 'pushing',
};

/** `{branch}`, `{sha7}`, `{sha}`, `{tag}`, `{run}` replaced; the result made a valid Docker tag. */
export function renderTag(
  template: string,
  values: { branch?: string | undefined; sha: string; tag?: string | undefined; run: number },
): string {
  const out = template
    .replaceAll('{branch}', values.branch ?? '')
    .replaceAll('{sha7}', values.sha.slice(0, 7))
    .replaceAll('{sha}', values.sha)
    .replaceAll('{tag}', values.tag ?? '')
    .replaceAll('{run}', String(values.run))
    .replace(/[^A-Za-z0-9_.-]+/g, '-')
    .replace(/^[.-]+/, '')
    .replace(/-+$/, '')
    .slice(0, 128);
  return out || values.sha.slice(0, 12);
}

export class BuildRunner {
  readonly #o: BuildRunnerOptions;
  readonly #log: Logger;

  constructor(options: BuildRunnerOptions) {
    this.#o = options;
    this.#log = options.logger.child({ component: 'build-runner' });
  }

  /** Runs attempt `attempt` of run `runId` until it ends, is cancelled, or turns out stale. */
  async run(runId: string, attempt: number, outer: AbortSignal): Promise<RunOutcome> {
    let loaded: Awaited<ReturnType<typeof RunRecord.load>>;
    try {
      loaded = await RunRecord.load({
        store: this.#o.store,
        keys: this.#o.keys,
        runId,
        attempt,
        events: this.#o.events,
        actor: 'builder-agent',
      });
    } catch (err) {
      if (err instanceof UnavailableError) return { result: 'unavailable', why: err.message };
      throw err;
    }
    if ('stale' in loaded) return { result: 'stale', why: loaded.stale };
    const { record, config } = loaded;
    const log = this.#o.logger.child({ runId, attempt });
    const registryAuth = this.#o.registryAuth(runId, attempt);
    const buildLog = new BuildLog({
      js: this.#o.js(),
      subjects: this.#o.subjects,
      runId,
      attempt,
      logger: log,
      masks: registryAuth ? [registryAuth.password] : [],
      ...(this.#o.logFlushMs ? { flushMs: this.#o.logFlushMs } : {}),
    });
    const workspace = join(this.#o.dataDir, 'workspaces', `${runId}-${attempt}`);
    // A newer attempt, or an end written by someone else (the API's agent-lost), stops the run
    // at once, not only at its next write.
    const superseded = new AbortController();
    const signal = AbortSignal.any([outer, superseded.signal]);
    const watcher = await this.#o.etcd
      .watch()
      .key(this.#o.keys.buildRun(runId))
      .create()
      .catch(() => undefined);
    watcher?.on('put', (kv) => {
      const parsed = buildRunSchema.safeParse(JSON.parse(kv.value.toString()));
      if (!parsed.success || FINAL_BUILD_STATES.includes(record.run.state)) return;
      const now = parsed.data;
      if (now.attempt !== attempt || FINAL_BUILD_STATES.includes(now.state)) {
        superseded.abort(new RunAborted('superseded', `the run is at attempt ${now.attempt}, ${now.state}`));
      }
    });
    watcher?.on('delete', () => superseded.abort(new RunAborted('superseded', 'the run was deleted')));
    watcher?.on('error', () => undefined);
    let cacheRelease: (() => Promise<void>) | undefined;
    try {
      await rm(workspace, { recursive: true, force: true });
      // Start over: a run taken again after this agent restarted begins at the clone.
      await record.update({
        apply: (r) => {
          r.steps = BUILD_STEPS.map((name) => ({
            name,
            state: 'pending' as const,
            startedAt: null,
            finishedAt: null,
            durationMs: null,
          }));
          r.cache = { enabled: config.cache, hit: null };
          r.reason = null;
          return r;
        },
      });
      buildLog.system(`agent ${this.#o.agentId} runs attempt ${attempt} of run ${runId}`);

      // ---- clone
      const source = await this.#step(record, buildLog, 'clone', signal, async (s) => {
        const credential = await this.#credential(config);
        for (const mask of credentialMasks(credential)) buildLog.mask(mask);
        const pinned = record.run.commit;
        buildLog.system(`fetching ${safeUrl(config.git.url)} (${record.run.ref}${pinned ? ` at ${pinned}` : ''})`);
        const mirror = await this.#o.git.update(config.git.url, {
          signal: s,
          output: (stream, chunk) => buildLog.write(stream, chunk),
          credential,
        });
        // A pinned commit (a webhook's) is built as is; the ref still names the branch or tag.
        const named = await this.#o.git.resolve(mirror, record.run.ref, s).catch((err: unknown) => {
          if (pinned) return {} as { commit?: string; branch?: string; tag?: string };
          throw err;
        });
        const got = pinned ? await this.#o.git.resolve(mirror, pinned, s) : { commit: named.commit as string };
        buildLog.system(`commit ${got.commit}`);
        await this.#o.git.checkout(mirror, got.commit, workspace, s);
        await record.update({
          apply: (r) => {
            r.commit = got.commit;
            return r;
          },
        });
        return {
          commit: got.commit,
          branch: named.branch ?? (named.tag ? undefined : config.git.branch),
          tag: named.tag,
        };
      });

      // ---- compile
      const cache = await this.#o.cache.acquire(config.id, config.cache, runId);
      cacheRelease = cache.release;
      await record.update({
        apply: (r) => {
          r.cache = { enabled: config.cache, hit: config.cache ? cache.hit : false };
          return r;
        },
      });
      const compile = config.compile;
      try {
        if (compile) {
          await this.#step(record, buildLog, 'compile', signal, async (s) => {
            buildLog.system(
              `compile in ${compile.image} (cache ${config.cache ? (cache.hit ? 'hit' : 'cold') : 'off'})`,
            );
            const output = (stream: 'stdout' | 'stderr' | 'system', text: string) => buildLog.write(stream, text);
            await this.#o.docker.ensureImage(
              compile.image,
              output,
              s,
              pullCredential(compile.image, this.#o.registryAddr, registryAuth),
            );
            await this.#o.docker.compile({
              image: compile.image,
              script: compile.script,
              workspace,
              cacheDir: cache.dir,
              output,
              signal: s,
              name: `berth-build-${runId}-${attempt}`,
              builderId: this.#o.agentId,
            });
          });
        } else {
          await record.update({
            apply: (r) => {
              const step = r.steps.find((x) => x.name === 'compile');
              if (step) step.state = 'skipped';
              return r;
            },
          });
        }
      } finally {
        // The cache serves the compile step alone: it is let go before the run can end, so a
        // clear-cache asked once the run shows its end finds no build holding it.
        const release = cacheRelease;
        cacheRelease = undefined;
        await release?.().catch(() => undefined);
      }

      // ---- build
      const repository = `${this.#o.registryAddr}/${config.target}`;
      // A tag the API pinned when it made the run (a git tag push is tagged with the git tag)
      // wins over the config's template.
      const tag =
        record.run.image?.tag || renderTag(config.tag, { ...source, sha: source.commit, run: record.run.number });
      await this.#step(record, buildLog, 'build', signal, async (s) => {
        const contextDir = resolve(workspace, config.context);
        if (!contextDir.startsWith(workspace)) throw new Error(`context ${config.context} is outside the repository`);
        buildLog.system(`docker build ${config.context} -f ${config.dockerfile} -t ${repository}:${tag}`);
        await this.#o.docker.build({
          contextDir,
          dockerfile: relativeDockerfile(workspace, contextDir, config.dockerfile),
          reference: `${repository}:${tag}`,
          labels: { 'berth.run': runId, 'berth.config': config.id, 'berth.commit': source.commit },
          // A Dockerfile that declares these gets them (`ARG BERTH_IMAGE_TAG`); others ignore them.
          buildArgs: { BERTH_IMAGE_TAG: tag, BERTH_GIT_COMMIT: source.commit, BERTH_GIT_REF: record.run.ref },
          output: (stream, text) => buildLog.write(stream, text),
          signal: s,
        });
      });

      // ---- push
      await this.#step(record, buildLog, 'push', signal, async (s) => {
        buildLog.system(`docker push ${repository}:${tag}`);
        const digest = await this.#o.docker.push({
          repository,
          tag,
          auth: registryAuth,
          output: (stream, text) => buildLog.write(stream, text),
          signal: s,
        });
        await this.#o.registry.confirmManifest(config.target, digest, s, registryAuth);
        buildLog.system(`confirmed ${config.target}@${digest} in the registry`);
        // The repository as Berth names it (`group/repo`, an app's `image`), without the
        // registry's address: autoDeploy and the token server compare it with those.
        await record.update({
          apply: (r) => {
            r.image = { repository: config.target, tag, digest };
            return r;
          },
        });
      });

      buildLog.system(`succeeded: ${repository}:${tag}`);
      // The log is stored before the final state: a reader who sees the end has every line.
      await buildLog.close();
      const run = await record.update({ apply: (r) => finish(r, 'succeeded', null), event: runEvent });
      return { result: 'succeeded', run };
    } catch (err) {
      return await this.#ended(record, buildLog, err, signal, log);
    } finally {
      await watcher?.cancel().catch(() => undefined);
      await cacheRelease?.().catch(() => undefined);
      await rm(workspace, { recursive: true, force: true }).catch(() => undefined);
      await buildLog.close();
    }
  }

  async #ended(
    record: RunRecord,
    buildLog: BuildLog,
    err: unknown,
    signal: AbortSignal,
    log: Logger,
  ): Promise<RunOutcome> {
    if (err instanceof StaleAttemptError) {
      buildLog.system(`stopped: ${err.message}`);
      log.warn({ why: err.message }, 'run moved on without this agent; stopped');
      return { result: 'stale', why: err.message };
    }
    const reason = signal.aborted ? signal.reason : undefined;
    if (reason instanceof RunAborted && reason.kind === 'superseded') {
      buildLog.system(`stopped: ${reason.message}`);
      log.warn({ why: reason.message }, 'run moved on without this agent; stopped');
      return { result: 'stale', why: reason.message };
    }
    if (reason instanceof RunAborted && reason.kind === 'lock-lost') {
      // The stalled checker hands the job out again; nothing is written for this attempt here.
      buildLog.system('stopped: the job lock was lost');
      return { result: 'abandoned', why: 'lock lost' };
    }
    const cancelled = reason instanceof RunAborted && reason.kind === 'cancelled';
    const message =
      reason instanceof RunAborted
        ? reason.kind === 'cancelled'
          ? 'cancelled'
          : 'agent-shutdown: the agent stopped before the build ended'
        : oneLine(err);
    buildLog.system(cancelled ? 'cancelled' : `failed: ${message}`);
    await buildLog.close();
    try {
      const run = await record.update({
        apply: (r) => finish(r, cancelled ? 'cancelled' : 'failed', message),
        event: runEvent,
      });
      return { result: cancelled ? 'cancelled' : 'failed', run };
    } catch (writeErr) {
      if (writeErr instanceof StaleAttemptError) return { result: 'stale', why: writeErr.message };
      throw writeErr;
    }
  }

  /** One step: its state, its record, its timeout; its error becomes the step's and the run's. */
  async #step<T>(
    record: RunRecord,
    buildLog: BuildLog,
    name: BuildStepName,
    runSignal: AbortSignal,
    body: (signal: AbortSignal) => Promise<T>,
  ): Promise<T> {
    if (runSignal.aborted) throw runSignal.reason;
    const startedAt = new Date();
    buildLog.setStep(name);
    await record.update({
      apply: (r) => {
        r.state = STATE_OF_STEP[name];
        const step = r.steps.find((s) => s.name === name);
        if (step)
          Object.assign(step, {
            state: 'running',
            startedAt: startedAt.toISOString(),
            finishedAt: null,
            durationMs: null,
          });
        return r;
      },
      event: runEvent,
    });
    const timeoutMs = this.#o.timeouts[name];
    const timer = new AbortController();
    const handle = setTimeout(
      () => timer.abort(new StepTimeout(`timeout: the ${name} step took longer than ${Math.round(timeoutMs / 1000)}s`)),
      timeoutMs,
    );
    const signal = AbortSignal.any([runSignal, timer.signal]);
    let result: 'succeeded' | 'failed' | 'cancelled' = 'failed';
    let error: string | undefined;
    try {
      const value = await body(signal);
      result = 'succeeded';
      return value;
    } catch (err) {
      if (runSignal.aborted) {
        result = 'cancelled';
        throw runSignal.reason;
      }
      if (timer.signal.aborted) {
        error = (timer.signal.reason as Error).message;
        throw timer.signal.reason;
      }
      if (err instanceof StaleAttemptError) throw err;
      error = oneLine(err);
      throw err;
    } finally {
      clearTimeout(handle);
      const finishedAt = new Date();
      const durationMs = finishedAt.getTime() - startedAt.getTime();
      this.#o.onStep?.(name, result, durationMs / 1000);
      if (error) buildLog.system(`${name} failed: ${error}`);
      const reason = runSignal.reason;
      if (!(reason instanceof RunAborted && (reason.kind === 'lock-lost' || reason.kind === 'superseded'))) {
        await record
          .update({
            apply: (r) => {
              const step = r.steps.find((s) => s.name === name);
              if (step) {
                Object.assign(step, { state: result, finishedAt: finishedAt.toISOString(), durationMs });
                if (error) step.error = error.slice(0, 4096);
              }
              return r;
            },
          })
          .catch((err: unknown) => {
            if (!(err instanceof StaleAttemptError)) this.#log.warn({ err }, 'step record not written');
          });
      }
    }
  }

  async #credential(config: BuildConfig): Promise<GitCredential | undefined> {
    const ref = config.git.credentialsRef;
    if (!ref) return undefined;
    if (!this.#o.credentialsDir) throw new Error(`credential "${ref}" is unknown: this agent has no credentials dir`);
    const file = join(this.#o.credentialsDir, ref.replace(/[^A-Za-z0-9_.-]/g, '_'));
    const text = (
      await readFile(file, 'utf8').catch(() => {
        throw new Error(`credential "${ref}" is unknown on this agent`);
      })
    ).trim();
    const colon = text.indexOf(':');
    return colon > 0
      ? { username: text.slice(0, colon), password: text.slice(colon + 1) }
      : { username: 'git', password: text };
  }
}

function relativeDockerfile(workspace: string, contextDir: string, dockerfile: string): string {
  // The config names the Dockerfile from the repository's root.
  const abs = resolve(workspace, dockerfile);
  return abs.startsWith(`${contextDir}/`) ? abs.slice(contextDir.length + 1) : dockerfile;
}

function safeUrl(url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//');
}

function oneLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.replace(/\s+/g, ' ').trim().slice(0, 4096) || 'unknown error';
}
