/**
 * OpenTelemetry tracing, set up once per process from config. Spans are always created and trace
 * context always propagates (HTTP headers, NATS headers, event envelopes), so a trace id links a
 * CLI call to the API to the scheduler; spans are exported only when an OTLP endpoint is
 * configured.
 *
 * We use the trace SDK directly rather than @opentelemetry/sdk-node: sdk-node loads every
 * exporter and starts the ones the OTEL_* environment names (OTLP by default), and we want
 * exactly one exporter, and none unless asked (docs/decisions.md).
 */
import {
  type Attributes,
  type Context,
  context,
  propagation,
  type Span,
  SpanKind,
  SpanStatusCode,
  type TextMapGetter,
  type TextMapSetter,
  trace,
} from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, type SpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';

export { type Context, context, propagation, type Span, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';

export type TelemetryConfig = {
  serviceName: string;
  serviceVersion?: string;
  /** OTLP/HTTP base URL (…:4318); `/v1/traces` is appended. No exporter when unset. */
  otlpEndpoint?: string | undefined;
  /** Extra processors (tests pass one with an in-memory exporter). */
  spanProcessors?: SpanProcessor[];
};

export type Telemetry = {
  readonly exporting: boolean;
  shutdown(): Promise<void>;
};

let active: { provider: TracerProvider; contextManager: AsyncLocalStorageContextManager } | undefined;

/** Sets up the global tracer provider, context manager and W3C propagator. Idempotent per process. */
export function startTelemetry(config: TelemetryConfig): Telemetry {
  const processors: SpanProcessor[] = [...(config.spanProcessors ?? [])];
  if (config.otlpEndpoint) {
    const url = `${config.otlpEndpoint.replace(/\/$/, '')}/v1/traces`;
    processors.push(new BatchSpanProcessor({ exporter: new OTLPTraceExporter({ url }) }));
  }
  if (active) {
    trace.disable();
    context.disable();
    propagation.disable();
  }
  const provider = new TracerProvider({
    resource: resourceFromAttributes({
      'service.name': config.serviceName,
      ...(config.serviceVersion ? { 'service.version': config.serviceVersion } : {}),
    }),
    spanProcessors: processors,
  });
  const contextManager = new AsyncLocalStorageContextManager().enable();
  context.setGlobalContextManager(contextManager);
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  trace.setGlobalTracerProvider(provider);
  active = { provider, contextManager };
  return {
    exporting: Boolean(config.otlpEndpoint),
    shutdown: async () => {
      await provider.shutdown();
      if (active?.provider === provider) {
        trace.disable();
        context.disable();
        propagation.disable();
        active = undefined;
      }
    },
  };
}

export function tracer(name = 'berth'): ReturnType<typeof trace.getTracer> {
  return trace.getTracer(name);
}

/** Runs `fn` in a new span (child of the active one); records errors and ends the span. */
export async function withSpan<T>(
  name: string,
  fn: (span: Span) => Promise<T> | T,
  options: { attributes?: Attributes; kind?: SpanKind; parent?: Context } = {},
): Promise<T> {
  const parent = options.parent ?? context.active();
  return tracer().startActiveSpan(
    name,
    { kind: options.kind ?? SpanKind.INTERNAL, ...(options.attributes ? { attributes: options.attributes } : {}) },
    parent,
    async (span) => {
      try {
        return await fn(span);
      } catch (err) {
        span.recordException(err as Error);
        span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
        throw err;
      } finally {
        span.end();
      }
    },
  );
}

// ---- Carriers ---------------------------------------------------------------------------------

type HeaderRecord = Record<string, string | string[] | undefined>;

const recordGetter: TextMapGetter<HeaderRecord> = {
  keys: (carrier) => Object.keys(carrier),
  get: (carrier, key) => {
    const value = carrier[key] ?? carrier[key.toLowerCase()];
    return Array.isArray(value) ? value[0] : value;
  },
};

const recordSetter: TextMapSetter<Record<string, string>> = {
  set: (carrier, key, value) => {
    carrier[key] = value;
  },
};

/** Trace headers (`traceparent`, `tracestate`) for an outgoing HTTP request or message. */
export function traceHeaders(ctx: Context = context.active()): Record<string, string> {
  const carrier: Record<string, string> = {};
  propagation.inject(ctx, carrier, recordSetter);
  return carrier;
}

/** The context carried by incoming headers (HTTP request headers or a plain record). */
export function contextFromHeaders(headers: HeaderRecord, base: Context = context.active()): Context {
  return propagation.extract(base, headers, recordGetter);
}

/** A minimal header map interface that NATS MsgHdrs satisfies. */
export type HeaderMap = { get(key: string): string; set(key: string, value: string): void; keys(): string[] };

/** Writes the active trace context into NATS message headers. */
export function injectIntoHeaderMap(headers: HeaderMap, ctx: Context = context.active()): void {
  for (const [key, value] of Object.entries(traceHeaders(ctx))) headers.set(key, value);
}

/** Reads the trace context from NATS message headers. */
export function contextFromHeaderMap(headers: HeaderMap | undefined, base: Context = context.active()): Context {
  if (!headers) return base;
  const record: Record<string, string> = {};
  for (const key of headers.keys()) record[key.toLowerCase()] = headers.get(key);
  return propagation.extract(base, record, recordGetter);
}

/** The active span's context as an event envelope's `trace` field, or undefined when there is none. */
export function currentTraceContext(
  ctx: Context = context.active(),
): { traceparent: string; tracestate?: string } | undefined {
  const headers = traceHeaders(ctx);
  if (!headers.traceparent) return undefined;
  return headers.tracestate
    ? { traceparent: headers.traceparent, tracestate: headers.tracestate }
    : { traceparent: headers.traceparent };
}
