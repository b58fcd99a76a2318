/**
 * A GOPROXY that serves a module cache's download dir (`$(go env GOMODCACHE)/cache/download`,
 * which is laid out as the GOPROXY protocol's file tree) over HTTP and counts what it serves:
 * the noise-free figure of the cold-vs-warm benchmark (a warm build asks for nothing).
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, normalize, sep } from 'node:path';

export type ProxyCounts = { requests: number; bytes: number; notFound: number };

export class CountingGoProxy {
  readonly root: string;
  readonly url: string;
  private readonly server: Server;
  private counts: ProxyCounts = { requests: 0, bytes: 0, notFound: 0 };

  private constructor(root: string, server: Server, url: string) {
    this.root = root;
    this.server = server;
    this.url = url;
  }

  /** Listens on `host` (an address the compile container reaches), a free port. */
  static async start(root: string, host: string): Promise<CountingGoProxy> {
    let proxy: CountingGoProxy | undefined;
    const server = createServer((req, res) => {
      proxy?.serve(req.url ?? '/', res).catch(() => {
        res.statusCode = 500;
        res.end();
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, host, () => resolve());
    });
    const { port } = server.address() as AddressInfo;
    proxy = new CountingGoProxy(root, server, `http://${host}:${port}`);
    return proxy;
  }

  /** The counts since the last call, and a fresh start. */
  take(): ProxyCounts {
    const counts = this.counts;
    this.counts = { requests: 0, bytes: 0, notFound: 0 };
    return counts;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private async serve(url: string, res: ServerResponse): Promise<void> {
    this.counts.requests++;
    // Module paths are case-encoded (`!x` for `X`) by the client: the file tree uses the same.
    const path = normalize(decodeURIComponent(new URL(url, 'http://x').pathname));
    const file = join(this.root, path);
    if (!file.startsWith(this.root + sep)) return this.notFound(res);
    const info = await stat(file).catch(() => undefined);
    if (!info?.isFile()) return this.notFound(res);
    this.counts.bytes += info.size;
    res.writeHead(200, { 'content-length': info.size });
    createReadStream(file).pipe(res);
  }

  private notFound(res: ServerResponse): void {
    // 404/410 tell the go command "not here" (it would try the next proxy; there is none).
    this.counts.notFound++;
    res.statusCode = 404;
    res.end('not found');
  }
}
