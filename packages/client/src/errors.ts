/**
 * The API's errors are RFC 9457 problem+json: `title`, `status`, an optional `detail`, and for a
 * refused body or query the bad fields by JSON path (`errors: [{ path, message }]`). One class
 * carries them to the caller, with a one-line message naming the problem and its fields.
 */
export type FieldProblem = { path: string; message: string };

export type Problem = {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  instance?: string;
  errors?: FieldProblem[];
  [extension: string]: unknown;
};

export class BerthApiError extends Error {
  readonly status: number;
  readonly title: string;
  readonly detail: string | undefined;
  readonly fields: FieldProblem[];
  readonly problem: Problem;

  constructor(status: number, problem: Problem) {
    const title = problem.title ?? `HTTP ${status}`;
    super(oneLine(status, title, problem.detail, problem.errors ?? []));
    this.name = 'BerthApiError';
    this.status = status;
    this.title = title;
    this.detail = problem.detail;
    this.fields = problem.errors ?? [];
    this.problem = problem;
  }

  /** Reads a failed response: problem+json when the API sent one, else its status and text. */
  static async fromResponse(response: Response, body?: unknown): Promise<BerthApiError> {
    let parsed = body;
    if (parsed === undefined) {
      const text = await response.text().catch(() => '');
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = text.trim() ? text.trim().split('\n')[0] : '';
      }
    }
    return new BerthApiError(response.status, asProblem(parsed, response.statusText));
  }
}

/** The request never got an answer: the API is down, the address wrong, a proxy cut it off. */
export class BerthConnectionError extends Error {
  readonly url: string;
  constructor(url: string, cause: unknown) {
    const reason = (cause as { cause?: { code?: string; message?: string } })?.cause;
    super(`cannot reach the API at ${url}: ${reason?.code ?? reason?.message ?? (cause as Error)?.message ?? cause}`, {
      cause,
    });
    this.name = 'BerthConnectionError';
    this.url = url;
  }
}

function asProblem(body: unknown, statusText: string): Problem {
  if (body && typeof body === 'object' && !Array.isArray(body)) {
    const p = body as Problem;
    return { ...p, ...(Array.isArray(p.errors) ? {} : { errors: undefined }) };
  }
  if (typeof body === 'string' && body.trim()) return { title: statusText || undefined, detail: body.trim() };
  return { title: statusText || undefined };
}

function oneLine(status: number, title: string, detail: string | undefined, fields: FieldProblem[]): string {
  const parts = [detail && detail !== title ? `${title}: ${detail}` : title];
  // A detail often already names the field; list only the paths it does not mention.
  const extra = fields.filter((f) => !detail?.includes(f.path));
  if (extra.length) parts.push(`(${extra.map((f) => `${f.path}: ${f.message}`).join('; ')})`);
  return `${parts.join(' ')} [${status}]`.replace(/\s*\n\s*/g, ' ');
}
