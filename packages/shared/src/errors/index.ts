/**
 * Berth's typed errors. Every error a caller can act on is one of these; errors from outside
 * systems are parsed into them at the client boundary. The HTTP layer maps them to RFC 9457
 * problem+json in one place (see ../http/problem.ts).
 *
 * Sort by what the caller should do (Calico's ipam_errors.go):
 * - InputError: fix the request; carries the field path of each bad field.
 * - NotFoundError / ConflictError / PreconditionFailedError: re-read and re-evaluate.
 * - UnavailableError: a dependency is down; retry later (transient errors are retried inside
 *   and only surface once retries are spent).
 */

export type FieldIssue = {
  /** JSONPath of the bad field, e.g. `$.healthCheck.port`; `$` for the whole body. */
  path: string;
  message: string;
};

export type ErrorOptions = {
  cause?: unknown;
  /** Extra members of the problem document (RFC 9457 extension members). */
  extensions?: Record<string, unknown>;
};

export class BerthError extends Error {
  /** HTTP status this error maps to. */
  readonly status: number = 500;
  /** Short stable code, the last segment of the problem `type` URI. */
  readonly code: string = 'internal';
  readonly extensions: Record<string, unknown>;

  constructor(message: string, options: ErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.extensions = options.extensions ?? {};
  }
}

export class InputError extends BerthError {
  override readonly status = 400;
  override readonly code = 'invalid-input';
  readonly issues: FieldIssue[];

  constructor(message: string, issues: FieldIssue[] = [], options: ErrorOptions = {}) {
    super(message, options);
    this.issues = issues;
  }
}

export class UnauthorizedError extends BerthError {
  override readonly status = 401;
  override readonly code = 'unauthorized';
}

export class ForbiddenError extends BerthError {
  override readonly status = 403;
  override readonly code = 'forbidden';
}

export class NotFoundError extends BerthError {
  override readonly status = 404;
  override readonly code = 'not-found';
}

export class ConflictError extends BerthError {
  override readonly status = 409;
  override readonly code = 'conflict';
}

export class PreconditionFailedError extends BerthError {
  override readonly status = 412;
  override readonly code = 'precondition-failed';
}

export class PayloadTooLargeError extends BerthError {
  override readonly status = 413;
  override readonly code = 'payload-too-large';
}

export class UnsupportedMediaTypeError extends BerthError {
  override readonly status = 415;
  override readonly code = 'unsupported-media-type';
}

export class RateLimitedError extends BerthError {
  override readonly status = 429;
  override readonly code = 'rate-limited';
}

export class UnavailableError extends BerthError {
  override readonly status = 503;
  override readonly code = 'unavailable';
}

/** Configuration that failed validation at start; one line per bad variable. */
export class ConfigError extends BerthError {
  override readonly code = 'invalid-config';
  readonly issues: FieldIssue[];

  constructor(issues: FieldIssue[]) {
    super(`invalid configuration:\n${issues.map((i) => `  ${i.path}: ${i.message}`).join('\n')}`);
    this.issues = issues;
  }
}

export function isBerthError(err: unknown): err is BerthError {
  return err instanceof BerthError;
}

/** JSONPath (`$.a.b[0]`) of a path as zod reports it. */
export function jsonPath(path: readonly PropertyKey[]): string {
  let out = '$';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (typeof seg === 'string' && /^[A-Za-z_$][\w$]*$/.test(seg)) out += `.${seg}`;
    else out += `[${JSON.stringify(String(seg))}]`;
  }
  return out;
}

type ZodLikeIssue = { path: readonly PropertyKey[]; message: string; code?: string; keys?: string[] };

/** Turns zod issues into field issues; an unknown key is reported at its own path. */
export function fieldIssuesFromZod(issues: readonly ZodLikeIssue[]): FieldIssue[] {
  const out: FieldIssue[] = [];
  for (const issue of issues) {
    if (issue.code === 'unrecognized_keys' && issue.keys) {
      for (const key of issue.keys) {
        out.push({ path: jsonPath([...issue.path, key]), message: 'unknown field' });
      }
    } else {
      out.push({ path: jsonPath(issue.path), message: issue.message });
    }
  }
  return out;
}

/** An InputError listing every bad field of a failed zod parse. */
export function inputErrorFromZod(error: { issues: readonly ZodLikeIssue[] }, what = 'request body'): InputError {
  const issues = fieldIssuesFromZod(error.issues);
  const first = issues[0];
  const summary = issues.length === 1 && first ? `${first.path}: ${first.message}` : `${issues.length} invalid fields`;
  return new InputError(`invalid ${what}: ${summary}`, issues);
}
