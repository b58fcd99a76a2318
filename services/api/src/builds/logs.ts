/**
 * A run's log, as the agent publishes it (`BuildLogBatch` JSON on `{root}.builds.{runId}.log` in the
 * build-logs stream), read back with an ordered consumer filtered to the run's subject: as
 * Server-Sent Events (each batch one `log` event whose `id:` is its stream sequence, so a client
 * resumes with `Last-Event-ID`; replay, then follow; `: ping` comments keep proxies from closing an
 * idle stream; an `end` event with the final state once the run is final and its log drained), or
 * as plain text of all lines so far.
 */
import { type BuildLogBatch, type BuildRun, buildLogBatchSchema } from '@berth/shared/builds';
import type { Logger } from '@berth/shared/logging';
import type { EventSubjects, NatsComponent } from '@berth/shared/nats';
import type { Request, Response } from 'express';

export type BuildLogsOptions = {
  nats: NatsComponent;
  subjects: EventSubjects;
  logger: Logger;
  /** Between `: ping` comments. Default 15 s. */
  heartbeatMs?: number;
  /** Between checks whether the run has ended. Default 1 s. */
  endCheckMs?: number;
};

export type LogEntry = { seq: number; batch: BuildLogBatch };

export class BuildLogs {
  readonly #nats: NatsComponent;
  readonly #subjects: EventSubjects;
  readonly #logger: Logger;
  readonly #heartbeatMs: number;
  readonly #endCheckMs: number;

  constructor(options: BuildLogsOptions) {
    this.#nats = options.nats;
    this.#subjects = options.subjects;
    this.#logger = options.logger.child({ component: 'build-logs' });
    this.#heartbeatMs = options.heartbeatMs ?? 15_000;
    this.#endCheckMs = options.endCheckMs ?? 1000;
  }

  /** The stream sequence of the run's newest log message (0: none). */
  async lastSeq(runId: string): Promise<number> {
    const jsm = await this.#nats.client.jsm();
    const msg = await jsm.streams
      .getMessage(this.#subjects.buildLogsStream, { last_by_subj: this.#subjects.buildLog(runId) })
      .catch(() => null);
    return msg?.seq ?? 0;
  }

  /** Every batch so far, in order. */
  async all(runId: string): Promise<LogEntry[]> {
    const last = await this.lastSeq(runId);
    const out: LogEntry[] = [];
    if (last === 0) return out;
    for await (const entry of this.#read(runId, 1)) {
      if (entry) out.push(entry);
      if (!entry || entry.seq >= last) break;
    }
    return out;
  }

  /** The lines so far as text: `[step] line`. */
  async text(runId: string): Promise<string> {
    return (await this.all(runId)).flatMap((e) => e.batch.lines.map((l) => `[${e.batch.step}] ${l.text}\n`)).join('');
  }

  /**
   * Streams the log over SSE until the run is final and drained, or the client leaves.
   * `readRun` reads the run's state (the end check).
   */
  async sse(
    req: Request,
    res: Response,
    runId: string,
    readRun: () => Promise<BuildRun | undefined>,
    isFinal: (run: BuildRun) => boolean,
  ): Promise<void> {
    const lastEventId = Number(req.get('last-event-id') ?? '0');
    const from = Number.isSafeInteger(lastEventId) && lastEventId > 0 ? lastEventId + 1 : 1;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      'x-accel-buffering': 'no',
      connection: 'keep-alive',
    });
    res.flushHeaders();
    let sent = from - 1;
    let closed = false;
    const control: ReadControl = {};
    const reader = this.#read(runId, from, control);
    const stop = () => {
      closed = true;
      control.stop?.();
    };
    req.on('close', stop);
    const ping = setInterval(() => res.write(': ping\n\n'), this.#heartbeatMs);
    let checking = false;
    const check = setInterval(async () => {
      if (checking || closed) return;
      checking = true;
      try {
        const run = await readRun();
        if (!run || !isFinal(run)) return;
        if (sent < (await this.lastSeq(runId))) return;
        const end = { state: run.state, reason: run.reason, attempt: run.attempt, image: run.image };
        res.write(`event: end\ndata: ${JSON.stringify(end)}\n\n`);
        stop();
      } catch (err) {
        this.#logger.warn({ err, runId }, 'build log end check failed');
      } finally {
        checking = false;
      }
    }, this.#endCheckMs);
    try {
      for await (const entry of reader) {
        if (closed) break;
        if (!entry) continue;
        res.write(`id: ${entry.seq}\nevent: log\ndata: ${JSON.stringify(entry.batch)}\n\n`);
        sent = entry.seq;
      }
    } catch (err) {
      if (!closed) this.#logger.warn({ err, runId }, 'build log stream failed');
    } finally {
      clearInterval(ping);
      clearInterval(check);
      req.off('close', stop);
      res.end();
    }
  }

  /**
   * The run's batches from stream sequence `from`, following new ones; yields undefined when the
   * consumer has nothing pending (so a caller that only wants what exists can stop).
   */
  async *#read(
    runId: string,
    from: number,
    control: ReadControl = {},
  ): AsyncGenerator<LogEntry | undefined, void, undefined> {
    const js = this.#nats.client.js;
    // DeliverPolicy.StartSequence, without a dependency on @nats-io/jetstream for one enum.
    // One subject as a string: nats-server 2.9 knows filter_subject, not filter_subjects.
    const options: Record<string, unknown> = { filter_subjects: this.#subjects.buildLog(runId) };
    if (from > 1) Object.assign(options, { deliver_policy: 'by_start_sequence', opt_start_seq: from });
    const consumer = await js.consumers.get(this.#subjects.buildLogsStream, options);
    const messages = await consumer.consume();
    control.stop = () => messages.stop();
    try {
      for await (const m of messages) {
        const parsed = buildLogBatchSchema.safeParse(safeJson(m.string()));
        if (parsed.success) yield { seq: m.seq, batch: parsed.data };
        else this.#logger.warn({ runId, seq: m.seq }, 'a build log message does not match BuildLogBatch; skipped');
        if (m.info.pending === 0) yield undefined;
      }
    } finally {
      await messages.close().catch(() => undefined);
    }
  }
}

type ReadControl = { stop?: () => void };

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
