/**
 * Confirms a pushed manifest in the registry by its digest (the run succeeds on the registry's
 * word, never on the push command's alone): `HEAD /v2/<repo>/manifests/<digest>` with the Accept
 * headers of Docker v2 and OCI manifests and indexes. A 401 with a Bearer challenge is answered
 * with a token from the challenge's realm (Basic credentials when a robot credential is set: the
 * run's own, given per call, or the client's).
 */
import { BerthError } from '@berth/shared/errors';

export class ManifestNotConfirmedError extends BerthError {
  constructor(message: string) {
    super(message, { code: 'manifest-not-confirmed' });
  }
}

export const MANIFEST_ACCEPT = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
].join(', ');

export type RegistryCredential = { username: string; password: string };

export type RegistryClientOptions = {
  /** `http://127.0.0.1:5000` */
  baseUrl: string;
  /** Used when a call names none. */
  credential?: RegistryCredential | undefined;
};

export class RegistryClient {
  readonly #o: RegistryClientOptions;

  constructor(options: RegistryClientOptions) {
    this.#o = options;
  }

  /** Resolves when the registry holds `repository@digest`; rejects with what it answered. */
  async confirmManifest(
    repository: string,
    digest: string,
    signal: AbortSignal,
    credential: RegistryCredential | undefined = this.#o.credential,
  ): Promise<void> {
    const url = `${this.#o.baseUrl}/v2/${repository}/manifests/${digest}`;
    let res = await fetch(url, { method: 'HEAD', headers: { Accept: MANIFEST_ACCEPT }, signal });
    if (res.status === 401) {
      const token = await this.#token(res.headers.get('www-authenticate'), repository, signal, credential);
      if (token) {
        res = await fetch(url, {
          method: 'HEAD',
          headers: { Accept: MANIFEST_ACCEPT, Authorization: `Bearer ${token}` },
          signal,
        });
      }
    }
    if (res.status !== 200) {
      throw new ManifestNotConfirmedError(`the registry answered ${res.status} for ${repository}@${digest}`);
    }
    const got = res.headers.get('docker-content-digest');
    if (got && got !== digest) {
      throw new ManifestNotConfirmedError(`the registry holds ${got} for ${repository}@${digest}`);
    }
  }

  async #token(
    challenge: string | null,
    repository: string,
    signal: AbortSignal,
    c: RegistryCredential | undefined,
  ): Promise<string | undefined> {
    if (!challenge?.startsWith('Bearer ')) return undefined;
    const params = Object.fromEntries(
      [...challenge.slice(7).matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1] as string, m[2] as string]),
    );
    if (!params.realm) return undefined;
    const url = new URL(params.realm);
    if (params.service) url.searchParams.set('service', params.service);
    url.searchParams.append('scope', params.scope ?? `repository:${repository}:pull`);
    const res = await fetch(url, {
      signal,
      headers: c ? { Authorization: `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}` } : {},
    });
    if (!res.ok) return undefined;
    const body = (await res.json()) as { token?: string; access_token?: string };
    return body.token ?? body.access_token;
  }
}
