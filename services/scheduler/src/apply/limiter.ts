/**
 * How many writes one cell's API server gets at once, adapted to its answers (AIMD, as TCP's
 * congestion window): slow start from `initial`, doubling after each round of fast answers up to
 * `max`; halved when the server says it is overloaded (429, 5xx), does not answer (timeout,
 * connection error), or answers much slower than usual (`slowFactor` × an EWMA of its recent
 * latencies); never below 1. After the first halving it grows by one a round (additive increase).
 *
 * One object never has two writes in flight: a write of an object that is being written waits
 * for it, and writes queued behind it coalesce (the latest desired state wins; every caller gets
 * the answer of the write that was sent).
 */
import { kubeErrorStatus } from '@berth/shared/kube';
import { Gauge, type Registry } from 'prom-client';

export type CellWriteLimiterOptions = {
  cell: string;
  /** Limit at start (slow start begins here). */
  initial?: number;
  /** The limit never grows above this. */
  max?: number;
  /** An answer slower than this many times the usual latency means the server is struggling. */
  slowFactor?: number;
  /** Answers faster than this are never "slow", however fast the usual is (a GC pause is not overload). */
  slowFloorMs?: number;
  /** Weight of the newest latency in the EWMA. */
  ewmaWeight?: number;
  /** Latencies seen before "slow" is judged at all. */
  warmupAnswers?: number;
  /** Milliseconds, monotonic; injected by tests. */
  now?: () => number;
  /** Registry for the limit and in-flight gauges (the scheduler's `runtime.metrics`). */
  metrics?: Registry;
};

/** What an answer says about the server's load. */
export type Verdict = 'fast' | 'slow' | 'overloaded' | 'neutral';

type Waiter = () => void;
type Queued = {
  write: () => Promise<unknown>;
  callers: { resolve: (v: unknown) => void; reject: (e: unknown) => void }[];
};

export class CellWriteLimiter {
  readonly cell: string;
  readonly #max: number;
  readonly #slowFactor: number;
  readonly #slowFloorMs: number;
  readonly #ewmaWeight: number;
  readonly #warmup: number;
  readonly #now: () => number;
  readonly #limitGauge?: Gauge<'cell'>;
  readonly #inflightGauge?: Gauge<'cell'>;

  #limit: number;
  #inflight = 0;
  /** Doubling below this, +1 a round above it (TCP's ssthresh). */
  #threshold: number;
  /** Fast answers counted towards the next increase. */
  #fastInRound = 0;
  /** Bumped at each decrease: answers to writes sent before it do not halve again (one cut a round). */
  #epoch = 0;
  #usualMs: number | undefined;
  #answers = 0;
  readonly #slots: Waiter[] = [];
  /** Objects with a write in flight → the write queued behind it, if any. */
  readonly #objects = new Map<string, { next?: Queued }>();

  constructor(options: CellWriteLimiterOptions) {
    this.cell = options.cell;
    this.#max = Math.max(1, options.max ?? 64);
    this.#limit = Math.min(this.#max, Math.max(1, options.initial ?? 8));
    this.#threshold = this.#max;
    this.#slowFactor = options.slowFactor ?? 3;
    this.#slowFloorMs = options.slowFloorMs ?? 100;
    this.#ewmaWeight = options.ewmaWeight ?? 0.2;
    this.#warmup = options.warmupAnswers ?? 5;
    this.#now = options.now ?? (() => performance.now());
    if (options.metrics) {
      this.#limitGauge = gauge(options.metrics, 'berth_scheduler_cell_write_limit', 'Writes a cell may have in flight');
      this.#inflightGauge = gauge(
        options.metrics,
        'berth_scheduler_cell_writes_inflight',
        'Writes in flight to a cell',
      );
    }
    this.#publish();
  }

  get limit(): number {
    return this.#limit;
  }

  get inflight(): number {
    return this.#inflight;
  }

  /** The EWMA of recent answer latencies (ms), once there is one. */
  get usualMs(): number | undefined {
    return this.#usualMs;
  }

  /** The object `key` has a write in flight or waiting. */
  busy(key: string): boolean {
    return this.#objects.has(key);
  }

  /**
   * Runs `write` for the object `key` (namespace/kind/name) when the object has no write in flight
   * and the cell has a free slot. A write queued behind an in-flight one is replaced by a later
   * write of the same object, and its callers get the later write's answer.
   */
  run<T>(key: string, write: () => Promise<T>): Promise<T> {
    const busy = this.#objects.get(key);
    if (busy) {
      return new Promise<T>((resolve, reject) => {
        const callers = busy.next?.callers ?? [];
        callers.push({ resolve: resolve as (v: unknown) => void, reject });
        busy.next = { write, callers };
      });
    }
    this.#objects.set(key, {});
    return this.#runObject(key, write);
  }

  async #runObject<T>(key: string, write: () => Promise<T>): Promise<T> {
    try {
      return await this.#withSlot(write);
    } finally {
      this.#afterObject(key);
    }
  }

  #afterObject(key: string): void {
    const state = this.#objects.get(key);
    const next = state?.next;
    if (!state || !next) {
      this.#objects.delete(key);
      return;
    }
    state.next = undefined;
    this.#runObject(key, next.write).then(
      (v) => {
        for (const c of next.callers) c.resolve(v);
      },
      (e) => {
        for (const c of next.callers) c.reject(e);
      },
    );
  }

  async #withSlot<T>(write: () => Promise<T>): Promise<T> {
    await this.#acquire();
    // A round of answers counts towards growth only if the limit was in use when they were sent:
    // a limit never reached is not known to be safe.
    const limited = this.#inflight * 2 >= this.#limit;
    const epoch = this.#epoch;
    const started = this.#now();
    try {
      const result = await write();
      this.#observe(this.#judge(this.#now() - started), epoch, limited);
      return result;
    } catch (err) {
      this.#observe(
        verdictOfError(err, this.#now() - started, (ms) => this.#judge(ms)),
        epoch,
        limited,
      );
      throw err;
    } finally {
      this.#inflight--;
      this.#pump();
    }
  }

  /** Takes a slot, waiting for one if the cell is at its limit (the releaser counts it for us). */
  async #acquire(): Promise<void> {
    if (this.#inflight < this.#limit && this.#slots.length === 0) {
      this.#inflight++;
      this.#publish();
      return;
    }
    await new Promise<void>((resolve) => this.#slots.push(resolve));
  }

  /** Fast or slow, judged against the usual latency, which the answer then joins. */
  #judge(ms: number): Verdict {
    const usual = this.#usualMs;
    const slow =
      usual !== undefined && this.#answers >= this.#warmup && ms > this.#slowFloorMs && ms > usual * this.#slowFactor;
    this.#usualMs = usual === undefined ? ms : usual + this.#ewmaWeight * (ms - usual);
    this.#answers++;
    return slow ? 'slow' : 'fast';
  }

  #observe(verdict: Verdict, epoch: number, limited: boolean): void {
    // Answers to writes sent before the last cut say nothing about the limit since: the cut
    // already answered a bad one, and a good one came from the load the cut relieved.
    if (epoch !== this.#epoch) return;
    if (verdict === 'slow' || verdict === 'overloaded') {
      this.#epoch++;
      this.#limit = Math.max(1, Math.floor(this.#limit / 2));
      this.#threshold = this.#limit;
      this.#fastInRound = 0;
      this.#publish();
      return;
    }
    if (verdict !== 'fast' || !limited || this.#limit >= this.#max) return;
    this.#fastInRound++;
    if (this.#fastInRound < this.#limit) return;
    this.#fastInRound = 0;
    this.#limit = Math.min(this.#max, this.#limit < this.#threshold ? this.#limit * 2 : this.#limit + 1);
    this.#publish();
    this.#pump();
  }

  /** Hands free slots to waiting writes, first come first served. */
  #pump(): void {
    while (this.#slots.length > 0 && this.#inflight < this.#limit) {
      this.#inflight++;
      (this.#slots.shift() as Waiter)();
    }
    this.#publish();
  }

  #publish(): void {
    this.#limitGauge?.set({ cell: this.cell }, this.#limit);
    this.#inflightGauge?.set({ cell: this.cell }, this.#inflight);
  }
}

/**
 * 429 and 5xx say "overloaded"; no status at all means no answer (timeout, refused, reset), which
 * is treated the same. Other statuses (404, 409, 422) are answers about the object, not the load.
 */
export function verdictOfError(err: unknown, ms: number, judge: (ms: number) => Verdict): Verdict {
  const status = kubeErrorStatus(err);
  if (status === undefined || status === 429 || status >= 500) return 'overloaded';
  return judge(ms) === 'slow' ? 'slow' : 'neutral';
}

function gauge(registry: Registry, name: string, help: string): Gauge<'cell'> {
  return (registry.getSingleMetric(name) ??
    new Gauge({ name, help, labelNames: ['cell'], registers: [registry] })) as Gauge<'cell'>;
}
