/**
 * RFC 9457 problem details: the one error middleware every Berth HTTP server uses. Typed errors
 * map to their status; body-parser failures map to 400/413/415; anything else is a 500 that is
 * logged (only 5xx are logged: a 4xx is the caller's business, and the response says it all).
 */
import type { ErrorRequestHandler, RequestHandler, Response } from 'express';
import {
  BerthError,
  type ErrorCode,
  type FieldIssue,
  InputError,
  MethodNotAllowedError,
  NotFoundError,
} from '../errors/index.ts';
import type { Logger } from '../logging/index.ts';

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';
export const PROBLEM_TYPE_BASE = 'https://berth.dev/problems/';

export type Problem = {
  type: string;
  title: string;
  status: number;
  detail?: string;
  instance?: string;
  /** Bad fields of an invalid request: JSONPath and message. */
  errors?: FieldIssue[];
  [extension: string]: unknown;
};

const TITLES: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  409: 'Conflict',
  412: 'Precondition Failed',
  413: 'Content Too Large',
  415: 'Unsupported Media Type',
  422: 'Unprocessable Content',
  428: 'Precondition Required',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

/**
 * The HTTP status of every error code: the one place where a Berth error becomes a status. A code
 * missing here is a 500 (and logged), so a new error class is noticed, not silently mapped.
 */
export const HTTP_STATUS_BY_CODE: Readonly<Record<string, number>> = {
  'invalid-input': 400,
  unauthorized: 401,
  forbidden: 403,
  'not-found': 404,
  'method-not-allowed': 405,
  conflict: 409,
  // A compare that kept failing after every retry: the resource kept changing.
  'compare-failed': 409,
  'precondition-failed': 412,
  'payload-too-large': 413,
  'unsupported-media-type': 415,
  'idempotency-mismatch': 422,
  'rate-limited': 429,
  unavailable: 503,
  'not-leader': 503,
  compacted: 503,
} satisfies Partial<Record<ErrorCode, number>>;

export function httpStatusOf(err: BerthError): number {
  return HTTP_STATUS_BY_CODE[err.code] ?? 500;
}

export function problemFromError(err: unknown, instance?: string): Problem {
  if (err instanceof BerthError) {
    const status = httpStatusOf(err);
    const problem: Problem = {
      ...err.extensions,
      type: `${PROBLEM_TYPE_BASE}${status === 500 ? 'internal' : err.code}`,
      title: TITLES[status] ?? 'Error',
      status,
      detail: status === 500 ? 'internal error; it has been logged' : err.message,
    };
    if (instance) problem.instance = instance;
    if (err instanceof InputError && err.issues.length > 0) problem.errors = err.issues;
    return problem;
  }
  const bodyError = bodyParserProblem(err);
  if (bodyError) return instance ? { ...bodyError, instance } : bodyError;
  return {
    type: `${PROBLEM_TYPE_BASE}internal`,
    title: TITLES[500] as string,
    status: 500,
    detail: 'internal error; it has been logged',
    ...(instance ? { instance } : {}),
  };
}

/** Errors thrown by express.json() (body-parser) carry `type` and `status`. */
function bodyParserProblem(err: unknown): Problem | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const e = err as { type?: string; status?: number; message?: string; limit?: number };
  switch (e.type) {
    case 'entity.too.large':
      return {
        type: `${PROBLEM_TYPE_BASE}payload-too-large`,
        title: TITLES[413] as string,
        status: 413,
        detail: `request body is larger than the limit of ${e.limit ?? '?'} bytes`,
      };
    case 'entity.parse.failed':
      return {
        type: `${PROBLEM_TYPE_BASE}invalid-input`,
        title: TITLES[400] as string,
        status: 400,
        detail: `request body is not valid JSON: ${e.message ?? ''}`.trim(),
        errors: [{ path: '$', message: 'not valid JSON' }],
      };
    case 'charset.unsupported':
    case 'encoding.unsupported':
      return {
        type: `${PROBLEM_TYPE_BASE}unsupported-media-type`,
        title: TITLES[415] as string,
        status: 415,
        detail: e.message ?? 'unsupported encoding',
      };
    default:
      if (typeof e.status === 'number' && e.status >= 400 && e.status < 500) {
        return {
          type: `${PROBLEM_TYPE_BASE}bad-request`,
          title: TITLES[e.status] ?? 'Bad Request',
          status: e.status,
          detail: e.message ?? 'bad request',
        };
      }
      return undefined;
  }
}

export function sendProblem(res: Response, problem: Problem): void {
  res.status(problem.status).type(PROBLEM_CONTENT_TYPE).send(JSON.stringify(problem));
}

/** The error middleware: last in every app. */
export function problemMiddleware(logger: Logger): ErrorRequestHandler {
  return (err, req, res, next) => {
    if (res.headersSent) {
      next(err);
      return;
    }
    const problem = problemFromError(err, req.originalUrl);
    if (err instanceof MethodNotAllowedError) res.setHeader('Allow', err.allow.join(', '));
    // 429 and 503 say when to come back (RFC 9110 §10.2.3).
    if (typeof problem.retryAfterSeconds === 'number') res.setHeader('Retry-After', String(problem.retryAfterSeconds));
    if (problem.status >= 500) logger.error({ err, method: req.method, url: req.originalUrl }, 'request failed');
    sendProblem(res, problem);
  };
}

/** 404 problem for any route nobody answered. */
export function notFoundHandler(): RequestHandler {
  return (req, _res, next) => next(new NotFoundError(`no route for ${req.method} ${req.path}`));
}
