/**
 * The Docker side of a run, through dockerode on the build machine's Docker Engine:
 *
 * - compile: a container of the compile image, the workspace at /workspace and the cache at
 *   /cache (HOME=/cache/home), the script run with `sh -c`, its output streamed; exit ≠ 0 fails.
 * - build: `POST /build` (the classic builder) with a tar of the context built here (tar-fs,
 *   .dockerignore respected); every line of the answer is parsed, and an `error`/`errorDetail`
 *   line fails the step with Docker's message, though the answer was a 200.
 * - push: `POST /images/{name}/push`, its stream parsed the same way, the digest taken from the
 *   `aux` message.
 *
 * Every request takes the step's AbortSignal: aborting closes the request (dockerd cancels the
 * build) or kills the container.
 */
import { readFile } from 'node:fs/promises';
import { matchesGlob, posix, relative, resolve, sep } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { BerthError } from '@berth/shared/errors';
import Docker from 'dockerode';
import { pack } from 'tar-fs';
import type { LogStream } from '../logs/build-log.ts';

export class DockerStepError extends BerthError {
  constructor(message: string) {
    super(message, { code: 'docker-failed' });
  }
}

export type Output = (stream: LogStream, text: string) => void;

export type RegistryAuth = { username: string; password: string; serveraddress: string };

/** A Docker client for DOCKER_HOST (`unix:///path`, `tcp://host:port`), or dockerode's default. */
export function createDocker(dockerHost: string | undefined): Docker {
  if (!dockerHost) return new Docker();
  if (dockerHost.startsWith('unix://')) return new Docker({ socketPath: dockerHost.slice('unix://'.length) });
  const url = new URL(dockerHost.replace(/^tcp:/, 'http:'));
  return new Docker({ host: url.hostname, port: Number(url.port || 2375), protocol: 'http' });
}

/**
 * Reads a JSON-lines progress stream (build, push, pull) to its end. Each message goes to
 * `onMessage`; an `error` or `errorDetail` rejects with Docker's message once the stream ends.
 */
export function readProgress(
  stream: NodeJS.ReadableStream,
  onMessage: (msg: Record<string, unknown>) => void,
  signal?: AbortSignal,
): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    let buffer = '';
    let error: string | undefined;
    const handle = (line: string) => {
      if (!line.trim()) return;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        msg = { stream: `${line}\n` };
      }
      const detail = msg.errorDetail as { message?: string } | undefined;
      if ((msg.error || detail) && error === undefined) {
        error = String(detail?.message ?? msg.error ?? 'unknown error');
      }
      onMessage(msg);
    };
    const onAbort = () => {
      (stream as Readable).destroy?.();
      reject(signal?.reason ?? new DockerStepError('aborted'));
    };
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    stream.on('data', (chunk: Buffer) => {
      buffer += chunk.toString();
      const lines = buffer.split('\n');
      buffer = lines.pop() ?? '';
      for (const line of lines) handle(line);
    });
    stream.on('error', (err: Error) => {
      signal?.removeEventListener('abort', onAbort);
      reject(signal?.aborted ? (signal.reason ?? err) : err);
    });
    stream.on('end', () => {
      signal?.removeEventListener('abort', onAbort);
      handle(buffer);
      if (signal?.aborted) reject(signal.reason);
      else if (error !== undefined) reject(new DockerStepError(error));
      else resolvePromise();
    });
  });
}

/** .dockerignore, simply: one pattern a line, `#` comments, `!` re-includes, `**` globs. */
export async function dockerignore(contextDir: string): Promise<(relPath: string) => boolean> {
  let text = '';
  try {
    text = await readFile(resolve(contextDir, '.dockerignore'), 'utf8');
  } catch {
    return () => false;
  }
  const rules = text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => {
      const negate = l.startsWith('!');
      const pattern = posix.normalize((negate ? l.slice(1) : l).trim().replace(/^\/+/, '')).replace(/\/+$/, '');
      return { negate, pattern };
    });
  return (relPath) => {
    let ignored = false;
    for (const { negate, pattern } of rules) {
      // A pattern matches the path or one of its parent directories.
      const parts = relPath.split('/');
      let hit = false;
      for (let i = parts.length; i > 0 && !hit; i--) hit = matchesGlob(parts.slice(0, i).join('/'), pattern);
      if (hit) ignored = !negate;
    }
    return ignored;
  };
}

/** The build context as a tar stream; the Dockerfile and .dockerignore are always sent. */
export async function contextTar(contextDir: string, dockerfile: string): Promise<Readable> {
  const ignored = await dockerignore(contextDir);
  const keep = new Set([dockerfile, '.dockerignore']);
  return pack(contextDir, {
    ignore: (name: string) => {
      const rel = relative(contextDir, name).split(sep).join('/');
      if (!rel || keep.has(rel)) return false;
      return ignored(rel);
    },
  }) as unknown as Readable;
}

export type CompileOptions = {
  image: string;
  script: string;
  workspace: string;
  cacheDir: string;
  output: Output;
  signal: AbortSignal;
  /** Shown as the container's name prefix, for whoever lists containers. */
  name: string;
  /** The agent running it: its leftovers are removed when it starts again. */
  builderId: string;
};

export type BuildOptions = {
  contextDir: string;
  dockerfile: string;
  /** `registry/group/repo:tag` */
  reference: string;
  labels: Record<string, string>;
  /** `--build-arg`s: what the run knows (BERTH_IMAGE_TAG, BERTH_GIT_COMMIT, BERTH_GIT_REF). */
  buildArgs?: Record<string, string>;
  output: Output;
  signal: AbortSignal;
};

export type PushOptions = {
  repository: string;
  tag: string;
  auth?: RegistryAuth | undefined;
  output: Output;
  signal: AbortSignal;
};

export class DockerImageBuilder {
  readonly docker: Docker;

  constructor(docker: Docker) {
    this.docker = docker;
  }

  async ping(): Promise<void> {
    await this.docker.ping();
  }

  /** Makes sure the compile image is there, pulling it (the region's registry) when it is not. */
  async ensureImage(image: string, output: Output, signal: AbortSignal, auth?: RegistryAuth): Promise<void> {
    try {
      await this.docker.getImage(image).inspect();
      return;
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode !== 404) throw err;
    }
    output('system', `pulling ${image}`);
    const stream = (await this.docker.pull(image, {
      abortSignal: signal,
      ...(auth ? { authconfig: auth } : {}),
    })) as NodeJS.ReadableStream;
    await readProgress(stream, (msg) => progressLine(msg, output), signal);
  }

  /** Runs the compile script; rejects with the exit code when it fails. */
  async compile(o: CompileOptions): Promise<void> {
    const uid = process.getuid?.() ?? 0;
    const gid = process.getgid?.() ?? 0;
    const container = await this.docker.createContainer({
      name: `${o.name}-${Date.now().toString(36)}`,
      Image: o.image,
      Cmd: ['sh', '-c', o.script],
      WorkingDir: '/workspace',
      User: `${uid}:${gid}`,
      Env: ['HOME=/cache/home', 'CI=true'],
      Labels: { 'berth.build': o.name, 'berth.builder': o.builderId },
      AttachStdout: true,
      AttachStderr: true,
      Tty: false,
      HostConfig: { Binds: [`${o.workspace}:/workspace`, `${o.cacheDir}:/cache`], AutoRemove: false },
    });
    const kill = () => {
      container.kill({ signal: 'SIGKILL' }).catch(() => undefined);
    };
    try {
      const attached = (await container.attach({ stream: true, stdout: true, stderr: true })) as NodeJS.ReadableStream;
      const stdout = new PassThrough();
      const stderr = new PassThrough();
      stdout.on('data', (d: Buffer) => o.output('stdout', d.toString()));
      stderr.on('data', (d: Buffer) => o.output('stderr', d.toString()));
      this.docker.modem.demuxStream(attached, stdout, stderr);
      const ended = new Promise<void>((r) => {
        attached.on('end', () => r());
        attached.on('close', () => r());
      });
      if (o.signal.aborted) throw o.signal.reason;
      o.signal.addEventListener('abort', kill, { once: true });
      await container.start();
      const result = (await container.wait()) as { StatusCode: number };
      await Promise.race([ended, new Promise((r) => setTimeout(r, 2000).unref())]);
      if (o.signal.aborted) throw o.signal.reason;
      if (result.StatusCode !== 0) throw new DockerStepError(`the compile script exited with ${result.StatusCode}`);
    } finally {
      o.signal.removeEventListener('abort', kill);
      await container.remove({ force: true }).catch(() => undefined);
    }
  }

  /** Builds the image; resolves with its id. */
  async build(o: BuildOptions): Promise<string | undefined> {
    const dockerfileRel = relative(o.contextDir, resolve(o.contextDir, o.dockerfile)).split(sep).join('/');
    const tar = await contextTar(o.contextDir, dockerfileRel);
    const stream = (await this.docker.buildImage(tar, {
      t: o.reference,
      dockerfile: dockerfileRel,
      labels: o.labels,
      ...(o.buildArgs ? { buildargs: o.buildArgs } : {}),
      rm: true,
      forcerm: true,
      abortSignal: o.signal,
    } as Docker.ImageBuildOptions)) as NodeJS.ReadableStream;
    let imageId: string | undefined;
    await readProgress(
      stream,
      (msg) => {
        const aux = msg.aux as { ID?: string } | undefined;
        if (aux?.ID) imageId = aux.ID;
        progressLine(msg, o.output);
      },
      o.signal,
    );
    return imageId;
  }

  /** Pushes `repository:tag`; resolves with the manifest digest Docker reports. */
  async push(o: PushOptions): Promise<string> {
    const image = this.docker.getImage(o.repository);
    const stream = (await image.push({
      tag: o.tag,
      abortSignal: o.signal,
      ...(o.auth ? { authconfig: o.auth } : {}),
    } as Parameters<Docker.Image['push']>[0])) as NodeJS.ReadableStream;
    let digest: string | undefined;
    await readProgress(
      stream,
      (msg) => {
        const aux = msg.aux as { Digest?: string } | undefined;
        if (aux?.Digest) digest = aux.Digest;
        progressLine(msg, o.output);
      },
      o.signal,
    );
    if (!digest) throw new DockerStepError('the push ended without a digest');
    return digest;
  }

  /** Removes compile containers an earlier process of this agent left (it was killed). */
  async removeLeftovers(builderId: string): Promise<number> {
    const left = await this.docker.listContainers({ all: true, filters: { label: [`berth.builder=${builderId}`] } });
    for (const c of left)
      await this.docker
        .getContainer(c.Id)
        .remove({ force: true })
        .catch(() => undefined);
    return left.length;
  }

  async removeImage(reference: string): Promise<void> {
    await this.docker
      .getImage(reference)
      .remove({ noprune: false })
      .catch(() => undefined);
  }
}

/** One progress message as a log line (push/pull progress bars are skipped: status lines only). */
function progressLine(msg: Record<string, unknown>, output: Output): void {
  const detail = msg.errorDetail as { message?: string } | undefined;
  if (msg.error || detail) {
    output('stderr', `${String(detail?.message ?? msg.error)}\n`);
    return;
  }
  if (typeof msg.stream === 'string') {
    output('stdout', msg.stream);
    return;
  }
  if (typeof msg.status === 'string' && !msg.progressDetail) {
    output('stdout', `${msg.id ? `${String(msg.id)}: ` : ''}${msg.status}\n`);
    return;
  }
  if (typeof msg.status === 'string' && msg.progressDetail && Object.keys(msg.progressDetail).length === 0) {
    output('stdout', `${msg.id ? `${String(msg.id)}: ` : ''}${msg.status}\n`);
  }
}
