/**
 * A run's log: lines stamped with their step and stream, batched (at most 100 ms or 16 KB) into
 * `BuildLogBatch` messages on JetStream subject `{root}.builds.{runId}.log`, published in order
 * (one publish at a time) with a message id per batch, so a retried publish is stored once.
 * A publish that fails is logged and dropped: a build never fails because its log could not be
 * stored.
 */
import type { BuildLogBatch, BuildStepName } from '@berth/shared/builds';
import type { EventSubjects } from '@berth/shared/events';
import type { Logger } from '@berth/shared/logging';
import type { JetStreamClient } from '@berth/shared/nats';

export type LogStream = 'stdout' | 'stderr' | 'system';

export type BuildLogOptions = {
  js: JetStreamClient;
  subjects: EventSubjects;
  runId: string;
  attempt: number;
  logger: Logger;
  /** Strings never to publish (a credential): replaced by `***`. */
  masks?: readonly string[];
  flushMs?: number;
  maxBytes?: number;
};

const MAX_LINE = 8192;

export class BuildLog {
  readonly #o: BuildLogOptions;
  readonly #subject: string;
  #step: BuildStepName = 'clone';
  #lines: BuildLogBatch['lines'] = [];
  #bytes = 0;
  #seq = 0;
  #timer: NodeJS.Timeout | undefined;
  #chain: Promise<void> = Promise.resolve();
  /** A partial line per stream, waiting for its newline. */
  readonly #partial = new Map<LogStream, string>();
  readonly #masks: string[];
  /** Every line published (tests, and a step's last words in its error). */
  readonly tail: string[] = [];

  constructor(options: BuildLogOptions) {
    this.#o = options;
    this.#subject = options.subjects.buildLog(options.runId);
    this.#masks = [...(options.masks ?? [])];
  }

  /** A string never to publish from now on (a credential read during the run). */
  mask(secret: string): void {
    if (secret) this.#masks.push(secret);
  }

  /** Lines written from now on belong to `step` (a batch never mixes steps). */
  setStep(step: BuildStepName): void {
    if (step === this.#step) return;
    this.#flushPartials();
    this.#flush();
    this.#step = step;
  }

  /** A line of the agent's own (step started, failed, …). */
  system(text: string): void {
    this.#add('system', text);
  }

  /** Output of a process or of Docker: split into lines; a partial line waits for the rest. */
  write(stream: LogStream, chunk: string | Buffer): void {
    const text = (this.#partial.get(stream) ?? '') + chunk.toString();
    const parts = text.split(/\r?\n/);
    this.#partial.set(stream, parts.pop() ?? '');
    for (const line of parts) this.#add(stream, line);
  }

  /** Publishes what is buffered and waits for every publish so far (before a final state). */
  async close(): Promise<void> {
    this.#flushPartials();
    this.#flush();
    await this.#chain;
  }

  #flushPartials(): void {
    for (const [stream, rest] of this.#partial) {
      if (rest) this.#add(stream, rest);
    }
    this.#partial.clear();
  }

  #add(stream: LogStream, raw: string): void {
    let text = raw.length > MAX_LINE ? `${raw.slice(0, MAX_LINE)}…` : raw;
    for (const mask of this.#masks) text = text.split(mask).join('***');
    this.#lines.push({ ts: new Date().toISOString(), stream, text });
    this.tail.push(text);
    if (this.tail.length > 200) this.tail.shift();
    this.#bytes += text.length + 48;
    if (this.#bytes >= (this.#o.maxBytes ?? 16 * 1024)) {
      this.#flush();
    } else {
      this.#timer ??= setTimeout(() => this.#flush(), this.#o.flushMs ?? 100);
    }
  }

  #flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#lines.length === 0) return;
    const batch: BuildLogBatch = {
      runId: this.#o.runId,
      attempt: this.#o.attempt,
      step: this.#step,
      seq: ++this.#seq,
      lines: this.#lines,
    };
    this.#lines = [];
    this.#bytes = 0;
    const msgID = `${batch.runId}-${batch.attempt}-${batch.seq}`;
    this.#chain = this.#chain.then(async () => {
      try {
        await this.#o.js.publish(this.#subject, JSON.stringify(batch), { msgID });
      } catch (err) {
        this.#o.logger.warn(
          { err: (err as Error).message, runId: batch.runId, seq: batch.seq },
          'build log batch lost',
        );
      }
    });
  }
}
