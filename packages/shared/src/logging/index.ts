import { type DestinationStream, type Logger, type LoggerOptions, pino } from 'pino';
import { errorToObject, redactSecrets, scrubSecrets } from './redact.ts';

export type { Logger } from 'pino';
export { isSecretKey, REDACTED, redactSecrets, redactUrl, registerSecret, scrubSecrets } from './redact.ts';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export type LoggerConfig = {
  /** The service name, on every line as `service`. */
  service: string;
  level?: LogLevel;
  /** Where lines go; stdout by default. Tests pass a stream to read the output. */
  destination?: DestinationStream;
  /** Extra fields on every line (region, host, agent id…). */
  base?: Record<string, unknown>;
};

/**
 * The one way a Berth process makes its logger: JSON lines (pino), `service` on every line,
 * `component` on children (`logger.child({ component: 'block-allocator' })`), and secrets cut
 * out twice: by field name in every logged object, and by value in the final line.
 */
export function createLogger(config: LoggerConfig): Logger {
  const options: LoggerOptions = {
    level: config.level ?? 'info',
    base: { service: config.service, pid: process.pid, ...config.base },
    timestamp: pino.stdTimeFunctions.isoTime,
    messageKey: 'msg',
    formatters: {
      level: (label) => ({ level: label }),
      // Objects passed to a log call, and the bindings of child loggers, lose secret fields.
      log: (object) => redactSecrets(object),
      bindings: (bindings) => redactSecrets(bindings),
    },
    serializers: {
      err: serializeError,
      error: serializeError,
    },
    hooks: {
      // The last net: known secret values never leave the process, wherever they hide.
      streamWrite: (line) => scrubSecrets(line),
    },
  };
  return config.destination ? pino(options, config.destination) : pino(options);
}

function serializeError(err: unknown): unknown {
  return redactSecrets(err instanceof Error ? errorToObject(err) : err);
}
