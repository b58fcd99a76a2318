/**
 * Service lifecycle: components start in dependency order and stop in reverse; one shutdown
 * manager owns SIGTERM/SIGINT; `runService` is the whole of a service's `main`: parse config
 * (one line per bad variable, exit 78), make the logger, log the effective config with secrets
 * removed, set up tracing, build the service, start it, and stop it gracefully on a signal.
 */
import type { z } from 'zod';
import { effectiveConfig, parseEnv } from '../config/index.ts';
import { BerthError, ConfigError } from '../errors/index.ts';
import { createLogger, type Logger, type LogLevel } from '../logging/index.ts';
import { startTelemetry } from '../telemetry/index.ts';

export { type Deferred, deferred } from './deferred.ts';

/** Something with a start and a stop, both safe to call twice. */
export type Component = {
  readonly name: string;
  start?(): Promise<void> | void;
  stop?(): Promise<void> | void;
};

/**
 * An ordered set of components. start() starts them in order; if one fails, the ones already
 * started are stopped (in reverse) and the error is thrown. stop() stops in reverse order, each
 * with a deadline, and goes on past a component that fails or hangs.
 */
export class Lifecycle {
  readonly #components: Component[] = [];
  readonly #started: Component[] = [];
  readonly #logger: Logger;
  readonly #stopTimeoutMs: number;
  #state: 'new' | 'starting' | 'started' | 'stopping' | 'stopped' = 'new';
  #stopping: Promise<void> | undefined;

  constructor(logger: Logger, options: { stopTimeoutMs?: number } = {}) {
    this.#logger = logger.child({ component: 'lifecycle' });
    this.#stopTimeoutMs = options.stopTimeoutMs ?? 10_000;
  }

  add(component: Component): this {
    if (this.#state !== 'new') throw new BerthError(`cannot add ${component.name} after start`);
    this.#components.push(component);
    return this;
  }

  get state(): string {
    return this.#state;
  }

  async start(): Promise<void> {
    if (this.#state !== 'new') return;
    this.#state = 'starting';
    for (const component of this.#components) {
      if (this.#state !== 'starting') return; // stop() was called meanwhile
      try {
        await component.start?.();
        this.#started.push(component);
        this.#logger.debug({ name: component.name }, 'started');
      } catch (err) {
        this.#logger.error({ err, name: component.name }, 'component failed to start; stopping the rest');
        await this.stop();
        throw err;
      }
    }
    this.#state = 'started';
  }

  stop(): Promise<void> {
    this.#stopping ??= this.#stopAll();
    return this.#stopping;
  }

  async #stopAll(): Promise<void> {
    this.#state = 'stopping';
    for (const component of [...this.#started].reverse()) {
      const started = performance.now();
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          Promise.resolve().then(() => component.stop?.()),
          new Promise((_, reject) => {
            timer = setTimeout(
              () => reject(new BerthError(`did not stop in ${this.#stopTimeoutMs} ms`, { code: 'stop-timeout' })),
              this.#stopTimeoutMs,
            );
          }),
        ]);
        this.#logger.debug({ name: component.name, ms: Math.round(performance.now() - started) }, 'stopped');
      } catch (err) {
        this.#logger.error({ err, name: component.name }, 'component failed to stop cleanly');
      } finally {
        clearTimeout(timer);
      }
    }
    this.#started.length = 0;
    this.#state = 'stopped';
  }
}

/**
 * Owns the process's signals. The first SIGTERM/SIGINT runs every registered handler (last
 * registered first) within the timeout, then exits 0; a second signal exits 1 at once.
 */
export class ShutdownManager {
  readonly #handlers: { name: string; fn: () => Promise<void> | void }[] = [];
  readonly #logger: Logger;
  readonly #timeoutMs: number;
  #shuttingDown: Promise<void> | undefined;
  #exit: (code: number) => void;

  constructor(logger: Logger, options: { timeoutMs?: number; exit?: (code: number) => void } = {}) {
    this.#logger = logger.child({ component: 'shutdown' });
    this.#timeoutMs = options.timeoutMs ?? 20_000;
    this.#exit = options.exit ?? ((code) => process.exit(code));
  }

  register(name: string, fn: () => Promise<void> | void): void {
    this.#handlers.push({ name, fn });
  }

  listen(): void {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      process.on(signal, () => {
        if (this.#shuttingDown) {
          this.#logger.warn({ signal }, 'second signal: exiting now');
          this.#exit(1);
          return;
        }
        void this.shutdown(signal, 0);
      });
    }
  }

  get shuttingDown(): boolean {
    return this.#shuttingDown !== undefined;
  }

  shutdown(reason: string, exitCode: number): Promise<void> {
    this.#shuttingDown ??= this.#run(reason, exitCode);
    return this.#shuttingDown;
  }

  async #run(reason: string, exitCode: number): Promise<void> {
    this.#logger.info({ reason }, 'shutting down');
    const timer = setTimeout(() => {
      this.#logger.error({ timeoutMs: this.#timeoutMs }, 'shutdown timed out; exiting');
      this.#exit(1);
    }, this.#timeoutMs);
    timer.unref();
    for (const { name, fn } of [...this.#handlers].reverse()) {
      try {
        await fn();
      } catch (err) {
        this.#logger.error({ err, name }, 'shutdown step failed');
        exitCode = exitCode || 1;
      }
    }
    clearTimeout(timer);
    this.#logger.info({ exitCode }, 'stopped');
    this.#exit(exitCode);
  }
}

/** What a service's class offers to runService. */
export type RunnableService = { start(): Promise<void>; stop(): Promise<void> };

export type RunServiceOptions<S extends z.ZodObject> = {
  /** Service name: `service` on every log line, `service.name` in traces. */
  name: string;
  version?: string;
  envSchema: S;
  create: (config: z.output<S>, logger: Logger) => Promise<RunnableService> | RunnableService;
  env?: Record<string, string | undefined>;
};

type BaseConfig = {
  LOG_LEVEL?: LogLevel;
  BERTH_REGION?: string;
  SHUTDOWN_TIMEOUT?: number;
  OTEL_EXPORTER_OTLP_ENDPOINT?: string | undefined;
};

/** The whole `main` of a long-running service. */
export async function runService<S extends z.ZodObject>(options: RunServiceOptions<S>): Promise<void> {
  let config: z.output<S>;
  try {
    config = parseEnv(options.envSchema, options.env ?? process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${options.name}: ${err.message}\n`);
      process.exit(78); // EX_CONFIG
    }
    throw err;
  }
  const base = config as BaseConfig;
  const logger = createLogger({
    service: options.name,
    level: base.LOG_LEVEL ?? 'info',
    base: base.BERTH_REGION ? { region: base.BERTH_REGION } : {},
  });
  logger.info({ config: effectiveConfig(options.envSchema, config) }, 'starting');

  const telemetry = startTelemetry({
    serviceName: options.name,
    otlpEndpoint: base.OTEL_EXPORTER_OTLP_ENDPOINT,
    ...(options.version ? { serviceVersion: options.version } : {}),
  });
  const shutdown = new ShutdownManager(logger, { timeoutMs: base.SHUTDOWN_TIMEOUT ?? 20_000 });
  shutdown.register('telemetry', () => telemetry.shutdown());
  shutdown.listen();
  process.on('unhandledRejection', (reason) => {
    logger.fatal({ err: reason }, 'unhandled promise rejection');
    void shutdown.shutdown('unhandled rejection', 1);
  });
  process.on('uncaughtException', (err) => {
    logger.fatal({ err }, 'uncaught exception');
    void shutdown.shutdown('uncaught exception', 1);
  });

  let service: RunnableService;
  try {
    service = await options.create(config, logger);
    shutdown.register(options.name, () => service.stop());
    await service.start();
  } catch (err) {
    logger.fatal({ err }, 'failed to start');
    await shutdown.shutdown('start failed', 1);
    return;
  }
  logger.info('started');
}
