/**
 * Test support for code that talks to cells: a TCP proxy in front of a cell's API server that a
 * test can cut (every connection dropped, as a broken network), take down (connections refused
 * until brought back) or freeze (connections stay open, nothing passes: a half-open link), and
 * kubeconfig files that point at it. Tests only; services never import this.
 */
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { kubeconfigPath } from './cells.ts';

export class CuttableProxy {
  readonly server: Server;
  readonly sockets = new Set<Socket>();
  /** Bytes are held back while true (connections stay open). */
  frozen = false;
  /** New connections are closed at once while true. */
  down = false;
  port = 0;

  constructor(target: { host: string; port: number }) {
    this.server = createServer((client) => {
      if (this.down) {
        client.destroy();
        return;
      }
      const upstream = connect(target.port, target.host);
      this.sockets.add(client).add(upstream);
      const forward = (from: Socket, to: Socket) =>
        from.on('data', (d) => {
          if (!this.frozen) to.write(d);
        });
      forward(client, upstream);
      forward(upstream, client);
      const close = () => {
        client.destroy();
        upstream.destroy();
        this.sockets.delete(client);
        this.sockets.delete(upstream);
      };
      client.on('error', close).on('close', close);
      upstream.on('error', close).on('close', close);
    });
  }

  /** A proxy in front of the API server a kubeconfig points at. */
  static forKubeConfig(kubeConfig: KubeConfig): CuttableProxy {
    const server = new URL(kubeConfig.getCurrentCluster()?.server as string);
    return new CuttableProxy({ host: server.hostname, port: Number(server.port || 443) });
  }

  async listen(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as { port: number }).port;
  }

  /** Drops every connection, as a broken network would. */
  cut(): void {
    for (const s of this.sockets) s.destroy();
  }

  /** The API server becomes unreachable (every connection dropped and refused) until `up()`. */
  takeDown(): void {
    this.down = true;
    this.cut();
  }

  up(): void {
    this.down = false;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise((r) => this.server.close(r));
  }
}

/** The cell's kubeconfig text with its server address replaced by the proxy's. */
export function proxiedKubeconfigText(dir: string, cell: string, port: number): string {
  return readFileSync(kubeconfigPath(dir, cell), 'utf8').replace(
    /server: https:\/\/127\.0\.0\.1:\d+/,
    `server: https://127.0.0.1:${port}`,
  );
}

/** A KubeConfig of `cell` that goes through the proxy on `port`. */
export function proxiedKubeConfig(dir: string, cell: string, port: number): KubeConfig {
  const path = join(mkdtempSync(join(tmpdir(), 'berth-kube-')), `${cell}.kubeconfig`);
  writeFileSync(path, proxiedKubeconfigText(dir, cell, port), { mode: 0o600 });
  const kc = new KubeConfig();
  kc.loadFromFile(path);
  return kc;
}

/**
 * A new KUBECONFIG_DIR holding every cell named: the ones in `proxied` go through their proxy,
 * the others are copies of the originals.
 */
export function kubeconfigDirWith(dir: string, cells: string[], proxied: Record<string, CuttableProxy>): string {
  const out = mkdtempSync(join(tmpdir(), 'berth-cells-'));
  for (const cell of cells) {
    const proxy = proxied[cell];
    if (proxy) writeFileSync(kubeconfigPath(out, cell), proxiedKubeconfigText(dir, cell, proxy.port), { mode: 0o600 });
    else copyFileSync(kubeconfigPath(dir, cell), kubeconfigPath(out, cell));
  }
  return out;
}
