/**
 * The API's own client of the region's registry (the v2 HTTP API), for the repositories and tags
 * of image groups. It authenticates with tokens it signs for itself (subject `berth-api`, exactly
 * the access each call needs), so it holds no registry password. Errors of the registry become
 * Berth's typed errors here: unreachable or 5xx → UnavailableError, an unknown name or tag →
 * NotFoundError.
 */
import { NotFoundError, UnavailableError } from '@berth/shared/errors';
import type { Access } from './scope.ts';
import type { RegistryTokenIssuer } from './token-issuer.ts';

export const API_SUBJECT = 'berth-api';

/** What `GET /v2/<name>/manifests/<ref>` accepts: Docker v2 and OCI manifests and indexes. */
const MANIFEST_TYPES = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
];

export type ManifestInfo = {
  digest: string;
  mediaType: string;
  /** The manifest's bytes plus its config and layers (for an index: the index's bytes). */
  size: number;
};

export class RegistryClient {
  readonly #url: string;
  readonly #issuer: RegistryTokenIssuer;

  constructor(options: { url: string; issuer: RegistryTokenIssuer }) {
    this.#url = options.url.replace(/\/+$/, '');
    this.#issuer = options.issuer;
  }

  async #fetch(path: string, access: Access[], init: RequestInit = {}): Promise<Response> {
    const { token } = await this.#issuer.issue(API_SUBJECT, access);
    const headers = new Headers(init.headers);
    headers.set('authorization', `Bearer ${token}`);
    let res: Response;
    try {
      res = await fetch(`${this.#url}${path}`, { ...init, headers, signal: AbortSignal.timeout(10_000) });
    } catch (err) {
      throw new UnavailableError(`the registry at ${this.#url} is unreachable: ${(err as Error).message}`, {
        cause: err,
      });
    }
    if (res.status >= 500 || res.status === 401 || res.status === 403) {
      const text = await res.text().catch(() => '');
      throw new UnavailableError(`the registry answered ${res.status}: ${text.slice(0, 300)}`);
    }
    return res;
  }

  /** Repository names in the registry that start with `prefix`, sorted. */
  async repositories(prefix: string): Promise<string[]> {
    const out: string[] = [];
    let last = '';
    for (;;) {
      const q = new URLSearchParams({ n: '1000', ...(last ? { last } : {}) });
      const res = await this.#fetch(`/v2/_catalog?${q}`, [{ type: 'registry', name: 'catalog', actions: ['*'] }]);
      const body = (await res.json()) as { repositories?: string[] };
      const page = body.repositories ?? [];
      out.push(...page.filter((r) => r.startsWith(prefix)));
      if (page.length < 1000 || !res.headers.get('link')) break;
      last = page[page.length - 1] as string;
    }
    return out.sort();
  }

  /** A repository's tags, sorted; NotFoundError when the repository does not exist. */
  async tags(name: string): Promise<string[]> {
    const res = await this.#fetch(`/v2/${name}/tags/list`, [{ type: 'repository', name, actions: ['pull'] }]);
    if (res.status === 404) throw new NotFoundError(`no repository "${name}"`);
    const body = (await res.json()) as { tags?: string[] | null };
    return [...(body.tags ?? [])].sort();
  }

  /** One tag's manifest; NotFoundError when there is no such tag. */
  async manifest(name: string, reference: string): Promise<ManifestInfo> {
    const res = await this.#fetch(
      `/v2/${name}/manifests/${reference}`,
      [{ type: 'repository', name, actions: ['pull'] }],
      {
        headers: { accept: MANIFEST_TYPES.join(', ') },
      },
    );
    if (res.status === 404) throw new NotFoundError(`no tag "${reference}" in "${name}"`);
    const text = await res.text();
    const digest = res.headers.get('docker-content-digest') ?? '';
    let size = Buffer.byteLength(text);
    let mediaType = res.headers.get('content-type') ?? '';
    try {
      const manifest = JSON.parse(text) as {
        mediaType?: string;
        config?: { size?: number };
        layers?: { size?: number }[];
      };
      mediaType = manifest.mediaType ?? mediaType;
      size += (manifest.config?.size ?? 0) + (manifest.layers ?? []).reduce((n, l) => n + (l.size ?? 0), 0);
    } catch {
      // not JSON: the manifest's own bytes are all we can count
    }
    return { digest, mediaType, size };
  }

  /** Deletes a manifest by digest (every tag that points at it goes with it). */
  async deleteManifest(name: string, digest: string): Promise<void> {
    const res = await this.#fetch(
      `/v2/${name}/manifests/${digest}`,
      [{ type: 'repository', name, actions: ['delete'] }],
      {
        method: 'DELETE',
      },
    );
    if (res.status === 404) throw new NotFoundError(`no manifest ${digest} in "${name}"`);
    if (res.status !== 202) throw new UnavailableError(`the registry answered ${res.status} to a manifest delete`);
  }
}
