/**
 * A typed client for Berth's API: the paths, parameters, bodies and responses come from the API's
 * own OpenAPI document (./schema.ts, generated; src/generate/drift.test.ts fails when it is stale), the
 * requests go through openapi-fetch, and failures become a BerthApiError carrying the problem.
 *
 *   const api = createBerthClient({ baseUrl: 'http://127.0.0.1:7070', token });
 *   const app = await call(api.GET('/api/v1/apps/{app}', { params: { path: { app: 'shop' } } }));
 */
import createClient, { type Client } from 'openapi-fetch';
import { BerthApiError, BerthConnectionError } from './errors.ts';
import type { paths } from './schema.ts';

export { BerthApiError, BerthConnectionError, type FieldProblem, type Problem } from './errors.ts';
export type { components, operations, paths } from './schema.ts';

export const API_BASE = '/api/v1';

export type BerthClient = Client<paths, 'application/json'> & {
  /** The API's origin, e.g. http://127.0.0.1:7070 (no /api/v1). */
  readonly baseUrl: string;
  /** The bearer token sent with every request, if any. */
  readonly token: string | undefined;
  /** A raw request to a path under the API's origin, with the token: for streams (SSE, NDJSON). */
  raw(path: string, init?: RequestInit): Promise<Response>;
};

export type BerthClientOptions = {
  baseUrl: string;
  token?: string | undefined;
  fetch?: typeof globalThis.fetch;
  userAgent?: string;
};

export function createBerthClient(options: BerthClientOptions): BerthClient {
  const baseUrl = options.baseUrl.replace(/\/+$/, '').replace(/\/api\/v1$/, '');
  const doFetch = options.fetch ?? globalThis.fetch;
  const headers: Record<string, string> = {};
  if (options.token) headers.authorization = `Bearer ${options.token}`;
  if (options.userAgent) headers['user-agent'] = options.userAgent;
  const guarded: typeof fetch = async (input, init) => {
    try {
      return await doFetch(input, init);
    } catch (err) {
      if ((err as Error)?.name === 'AbortError') throw err;
      throw new BerthConnectionError(baseUrl, err);
    }
  };
  const client = createClient<paths>({ baseUrl, headers, fetch: guarded });
  return Object.assign(client, {
    baseUrl,
    token: options.token,
    raw: async (path: string, init: RequestInit = {}) => {
      const response = await guarded(`${baseUrl}${path}`, {
        ...init,
        headers: { ...headers, ...(init.headers as Record<string, string> | undefined) },
      });
      if (!response.ok) throw await BerthApiError.fromResponse(response);
      return response;
    },
  });
}

type Result<T> = { data?: T; error?: unknown; response: Response };

/** The response's data, or a BerthApiError with the API's problem. */
export async function call<T>(request: Promise<Result<T>>): Promise<T> {
  const { data, error, response } = await request;
  if (!response.ok) throw await BerthApiError.fromResponse(response, error ?? undefined);
  return data as T;
}
