/**
 * The client the scheduler writes to one cell with. client-node 1.4 builds a new https.Agent
 * (without keep-alive) for every call, so each write paid a TCP and TLS handshake; this client
 * swaps in one keep-alive agent per cell (a request middleware runs after authentication has set
 * the per-call agent) and gives every call a deadline, so an API server that stops answering shows
 * up as a timeout the write limiter can react to instead of a write that hangs forever.
 *
 * Server-side applies of the kinds the scheduler keeps (Namespace, Secret, Service, Deployment,
 * NetworkPolicy) skip client-node's request path: it re-derived the TLS options, built an agent it
 * threw away, and serialized and deserialized every object through its model classes, which made
 * the applies the largest part of the scheduler's CPU. `apply` sends the object's JSON (JSON is YAML) as an
 * apply patch on the kept-alive connections and reads only the status of the answer.
 */
import http from 'node:http';
import https from 'node:https';
import { BerthError, InputError } from '@berth/shared/errors';
import {
  createConfiguration,
  type KubeConfig,
  type KubernetesObject,
  KubernetesObjectApi,
  PatchStrategy,
  type RequestContext,
  type ResponseContext,
  ServerConfiguration,
} from '@kubernetes/client-node';

/** The API path of each kind the scheduler applies (namespaced unless said otherwise). */
const RESOURCES: Record<string, { group: string; plural: string; clusterScoped?: boolean }> = {
  'v1/Namespace': { group: '/api/v1', plural: 'namespaces', clusterScoped: true },
  'v1/Secret': { group: '/api/v1', plural: 'secrets' },
  'v1/Service': { group: '/api/v1', plural: 'services' },
  'apps/v1/Deployment': { group: '/apis/apps/v1', plural: 'deployments' },
  'networking.k8s.io/v1/NetworkPolicy': { group: '/apis/networking.k8s.io/v1', plural: 'networkpolicies' },
};

/** How long the request headers derived from the kubeconfig (a bearer token) are reused. */
const HEADERS_TTL_MS = 60_000;

/** The cell's API server answered a write with an error status (`statusCode`, as client-node's errors carry it). */
export class CellWriteError extends BerthError {
  static readonly CODE = 'cell-write-failed';
  readonly statusCode: number;

  constructor(message: string, statusCode: number) {
    super(message);
    this.statusCode = statusCode;
  }
}

export type CellWriteClientOptions = {
  /** Deadline of one call, from sending to the end of the answer. */
  timeoutMs?: number;
};

export class CellWriteClient {
  readonly objects: KubernetesObjectApi;
  readonly #kubeConfig: KubeConfig;
  readonly #secure: boolean;
  readonly #server: URL;
  readonly #timeoutMs: number;
  readonly #ownAgent: boolean;
  #agent: Promise<http.Agent> | undefined;
  #headers: { at: number; value: Promise<Record<string, string>> } | undefined;

  constructor(kubeConfig: KubeConfig, options: CellWriteClientOptions = {}) {
    const cluster = kubeConfig.getCurrentCluster();
    if (!cluster) throw new InputError('kubeconfig has no current cluster');
    this.#kubeConfig = kubeConfig;
    this.#secure = !cluster.server.startsWith('http:');
    this.#server = new URL(cluster.server);
    const timeoutMs = options.timeoutMs ?? 15_000;
    this.#timeoutMs = timeoutMs;
    // Through a proxy, client-node's own proxy agent must stay.
    const ownAgent = !cluster.proxyUrl;
    this.#ownAgent = ownAgent;
    const configuration = createConfiguration({
      baseServer: new ServerConfiguration(cluster.server, {}),
      authMethods: { default: kubeConfig },
      promiseMiddleware: [
        {
          pre: async (context: RequestContext) => {
            if (ownAgent) context.setAgent(await this.#keepAliveAgent());
            context.setSignal(AbortSignal.timeout(timeoutMs));
            return context;
          },
          post: async (response: ResponseContext) => response,
        },
      ],
    });
    this.objects = new KubernetesObjectApi(configuration);
  }

  /**
   * Server-side applies `obj` with `fieldManager`, forcing ownership of the fields it sets.
   * Throws CellWriteError with the status on an error answer; a timeout or a refused connection
   * throws without one (the limiter reads both).
   */
  async apply(obj: KubernetesObject, fieldManager: string): Promise<void> {
    const resource = RESOURCES[`${obj.apiVersion}/${obj.kind}`];
    if (!resource || !this.#ownAgent) {
      await this.objects.patch(obj, undefined, undefined, fieldManager, true, PatchStrategy.ServerSideApply);
      return;
    }
    const name = encodeURIComponent(obj.metadata?.name ?? '');
    const namespace = encodeURIComponent(obj.metadata?.namespace ?? '');
    const where = resource.clusterScoped ? '' : `/namespaces/${namespace}`;
    const base = this.#server.pathname.replace(/\/$/, '');
    const path = `${base}${resource.group}${where}/${resource.plural}/${name}?fieldManager=${encodeURIComponent(fieldManager)}&force=true`;
    const body = JSON.stringify(obj);
    const [agent, headers] = await Promise.all([this.#keepAliveAgent(), this.#authHeaders()]);
    const transport = this.#secure ? https : http;
    await new Promise<void>((resolve, reject) => {
      const req = transport.request(
        {
          host: this.#server.hostname,
          port: this.#server.port,
          path,
          method: 'PATCH',
          agent,
          headers: {
            ...headers,
            'content-type': 'application/apply-patch+yaml',
            accept: 'application/json',
            'content-length': Buffer.byteLength(body),
          },
          signal: AbortSignal.timeout(this.#timeoutMs),
        },
        (res) => {
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) {
            res.resume();
            res.on('end', resolve);
            res.on('error', reject);
            return;
          }
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            let message = Buffer.concat(chunks).toString('utf8').slice(0, 2000);
            try {
              message = (JSON.parse(message) as { message?: string }).message ?? message;
            } catch {
              // not a Status object: keep the text
            }
            reject(
              new CellWriteError(
                `applying ${obj.kind} ${namespace ? `${namespace}/` : ''}${name}: ${status} ${message}`,
                status,
              ),
            );
          });
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  }

  /** Closes the pooled connections; a later call opens new ones. */
  close(): void {
    const agent = this.#agent;
    this.#agent = undefined;
    void agent?.then((a) => a.destroy());
  }

  /** The headers the kubeconfig adds (a bearer token, an impersonation), refreshed every minute. */
  #authHeaders(): Promise<Record<string, string>> {
    const now = Date.now();
    if (!this.#headers || now - this.#headers.at > HEADERS_TTL_MS) {
      const value = (async () => {
        const options: https.RequestOptions = {};
        await this.#kubeConfig.applyToHTTPSOptions(options);
        (options.agent as http.Agent | undefined)?.destroy();
        const headers: Record<string, string> = {};
        for (const [k, v] of Object.entries(options.headers ?? {})) if (typeof v === 'string') headers[k] = v;
        return headers;
      })();
      // A failed derivation is not kept: the next write tries again.
      value.catch(() => {
        if (this.#headers?.value === value) this.#headers = undefined;
      });
      this.#headers = { at: now, value };
    }
    return this.#headers.value;
  }

  #keepAliveAgent(): Promise<http.Agent> {
    this.#agent ??= this.#buildAgent();
    return this.#agent;
  }

  /** The TLS material client-node would use (client certificate, CA, server name), kept alive. */
  async #buildAgent(): Promise<http.Agent> {
    if (!this.#secure) return new http.Agent({ keepAlive: true });
    const tls: https.RequestOptions = {};
    await this.#kubeConfig.applyToHTTPSOptions(tls);
    (tls.agent as http.Agent | undefined)?.destroy();
    const cluster = this.#kubeConfig.getCurrentCluster();
    return new https.Agent({
      keepAlive: true,
      ca: tls.ca,
      cert: tls.cert,
      key: tls.key,
      pfx: tls.pfx,
      passphrase: tls.passphrase,
      ...(cluster?.tlsServerName ? { servername: cluster.tlsServerName } : {}),
      ...(tls.rejectUnauthorized !== undefined ? { rejectUnauthorized: tls.rejectUnauthorized } : {}),
      ...(cluster?.skipTLSVerify ? { rejectUnauthorized: false } : {}),
    });
  }
}
