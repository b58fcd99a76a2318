/**
 * The client the scheduler writes to one cell with. client-node 1.4 builds a new https.Agent
 * (without keep-alive) for every call, so each write paid a TCP and TLS handshake; this client
 * swaps in one keep-alive agent per cell (a request middleware runs after authentication has set
 * the per-call agent) and gives every call a deadline, so an API server that stops answering shows
 * up as a timeout the write limiter can react to instead of a write that hangs forever.
 */
import http from 'node:http';
import https from 'node:https';
import { InputError } from '@berth/shared/errors';
import {
  createConfiguration,
  type KubeConfig,
  KubernetesObjectApi,
  type RequestContext,
  type ResponseContext,
  ServerConfiguration,
} from '@kubernetes/client-node';

export type CellWriteClientOptions = {
  /** Deadline of one call, from sending to the end of the answer. */
  timeoutMs?: number;
};

export class CellWriteClient {
  readonly objects: KubernetesObjectApi;
  readonly #kubeConfig: KubeConfig;
  readonly #secure: boolean;
  #agent: Promise<http.Agent> | undefined;

  constructor(kubeConfig: KubeConfig, options: CellWriteClientOptions = {}) {
    const cluster = kubeConfig.getCurrentCluster();
    if (!cluster) throw new InputError('kubeconfig has no current cluster');
    this.#kubeConfig = kubeConfig;
    this.#secure = !cluster.server.startsWith('http:');
    const timeoutMs = options.timeoutMs ?? 15_000;
    // Through a proxy, client-node's own proxy agent must stay.
    const ownAgent = !cluster.proxyUrl;
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

  /** Closes the pooled connections; a later call opens new ones. */
  close(): void {
    const agent = this.#agent;
    this.#agent = undefined;
    void agent?.then((a) => a.destroy());
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
