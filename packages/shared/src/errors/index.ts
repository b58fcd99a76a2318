/**
 * Berth's error catalogue. Every error Berth throws is a BerthError with a stable `code`; errors
 * from outside systems are parsed into them at the client boundary. No error knows an HTTP status
 * or a CNI code: each edge maps codes in one table (../http/problem.ts, the CNI plugin's main).
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

/**
 * The stable codes of every error Berth throws. A code names what happened, never how an edge
 * answers it: the API maps codes to HTTP statuses in one table (`HTTP_STATUS_BY_CODE` in
 * ../http/problem.ts), the CNI plugin maps them to CNI error codes in one table (its main).
 */
export type ErrorCode =
  | 'internal'
  | 'invalid-input'
  | 'invalid-config'
  | 'unauthorized'
  | 'forbidden'
  | 'not-found'
  | 'method-not-allowed'
  | 'conflict'
  | 'precondition-failed'
  | 'idempotency-mismatch'
  | 'payload-too-large'
  | 'unsupported-media-type'
  | 'rate-limited'
  | 'unavailable'
  | 'compare-failed'
  | 'not-leader'
  | 'compacted'
  | 'corrupt-value'
  | (string & {});

export class BerthError extends Error {
  /** Short stable code, the last segment of the problem `type` URI. */
  readonly code: ErrorCode;
  readonly extensions: Record<string, unknown>;

  constructor(message: string, options: ErrorOptions & { code?: ErrorCode } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = options.code ?? (new.target as unknown as { CODE?: ErrorCode }).CODE ?? 'internal';
    this.extensions = options.extensions ?? {};
  }
}

/** Fix the request; carries the field path of each bad field. */
export class InputError extends BerthError {
  static readonly CODE = 'invalid-input';
  readonly issues: FieldIssue[];

  constructor(message: string, issues: FieldIssue[] = [], options: ErrorOptions = {}) {
    super(message, options);
    this.issues = issues;
  }
}

export class UnauthorizedError extends BerthError {
  static readonly CODE = 'unauthorized';
}

export class ForbiddenError extends BerthError {
  static readonly CODE = 'forbidden';
}

export class NotFoundError extends BerthError {
  static readonly CODE = 'not-found';
}

/** A known resource answered a method it does not support; `allow` lists the ones it does. */
export class MethodNotAllowedError extends BerthError {
  static readonly CODE = 'method-not-allowed';
  readonly allow: string[];

  constructor(message: string, allow: string[]) {
    super(message);
    this.allow = allow;
  }
}

export class ConflictError extends BerthError {
  static readonly CODE = 'conflict';
}

export class PreconditionFailedError extends BerthError {
  static readonly CODE = 'precondition-failed';
}

/** An Idempotency-Key was used before with another request. */
export class IdempotencyMismatchError extends BerthError {
  static readonly CODE = 'idempotency-mismatch';
}

export class PayloadTooLargeError extends BerthError {
  static readonly CODE = 'payload-too-large';
}

export class UnsupportedMediaTypeError extends BerthError {
  static readonly CODE = 'unsupported-media-type';
}

export class RateLimitedError extends BerthError {
  static readonly CODE = 'rate-limited';
}

/** A dependency is down; retry later (transient errors are retried inside first). */
export class UnavailableError extends BerthError {
  static readonly CODE = 'unavailable';
}

/**
 * A transaction's compare did not hold: someone wrote a key in between. `failedKeys` says which,
 * so a caller can answer 409 (created meanwhile) or 412 (changed meanwhile), or re-read and retry.
 */
export class CompareFailedError extends BerthError {
  static readonly CODE = 'compare-failed';
  readonly failedKeys: string[];

  constructor(failedKeys: string[], options: ErrorOptions = {}) {
    super(`changed meanwhile: ${failedKeys.join(', ') || '(unknown key)'}`, options);
    this.failedKeys = failedKeys;
  }
}

/** A write fenced by a leader election was refused: this process no longer leads. */
export class NotLeaderError extends BerthError {
  static readonly CODE = 'not-leader';
}

/** A watch asked for a revision etcd has compacted: list again, then watch from there. */
export class CompactedError extends BerthError {
  static readonly CODE = 'compacted';
  readonly compactRevision: number;

  constructor(compactRevision: number) {
    super(`revision compacted (oldest available ${compactRevision}); list again`);
    this.compactRevision = compactRevision;
  }
}

/** A stored value that cannot be decoded: named by its key, never guessed around. */
export class CorruptValueError extends BerthError {
  static readonly CODE = 'corrupt-value';
}

/** Configuration that failed validation at start; one line per bad variable. */
export class ConfigError extends BerthError {
  static readonly CODE = 'invalid-config';
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

type ZodLikeIssue = {
  path: readonly PropertyKey[];
  message: string;
  code?: string;
  keys?: string[];
  expected?: string;
};

/** What to send for a missing field, by the type zod expected there. */
const SEND_BY_TYPE: Record<string, string> = {
  string: 'a string',
  number: 'a number',
  int: 'an integer',
  boolean: 'true or false',
  array: 'an array',
  object: 'an object',
  record: 'an object',
};

/**
 * Turns zod issues into field issues; an unknown key is reported at its own path, and a missing
 * field says it is required and what to send, where zod's own text ("expected array, received
 * undefined") left a new user guessing. JSON has no undefined, so "received undefined" is always
 * a field left out (zod's issues do not carry the input, only this text).
 */
export function fieldIssuesFromZod(issues: readonly ZodLikeIssue[]): FieldIssue[] {
  const out: FieldIssue[] = [];
  for (const issue of issues) {
    if (issue.code === 'unrecognized_keys' && issue.keys) {
      for (const key of issue.keys) {
        out.push({ path: jsonPath([...issue.path, key]), message: 'unknown field' });
      }
    } else if (issue.code === 'invalid_type' && issue.expected && issue.message.endsWith('received undefined')) {
      const send = SEND_BY_TYPE[issue.expected] ?? `a value of type ${issue.expected}`;
      out.push({ path: jsonPath(issue.path), message: `required: send ${send}` });
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
