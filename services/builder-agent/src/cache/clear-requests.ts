/**
 * The agent's side of "clear a config's cache" (docs/builds.md): every agent subscribes (core
 * NATS, no queue group: a config's cache may be on several machines) to
 * `{root}.agents.clear-cache`, drops that config's cache, and answers the requester with
 * `{agentId, freedBytes, deferred}`. A cache a build holds is dropped when that build ends.
 */
import {
  builderClearCacheSubject,
  type ClearCacheReply,
  clearCacheReplySchema,
  clearCacheRequestSchema,
} from '@berth/shared/builds';
import type { Logger } from '@berth/shared/logging';
import type { NatsComponent } from '@berth/shared/nats';
import type { BuildCache } from './build-cache.ts';

export type ClearCacheListenerOptions = {
  nats: NatsComponent;
  subjectRoot: string;
  agentId: string;
  cache: BuildCache;
  logger: Logger;
  /** A cache was cleared (metrics). */
  onCleared?: (reply: ClearCacheReply) => void;
};

export class ClearCacheListener {
  readonly name = 'clear-cache';
  readonly #o: ClearCacheListenerOptions;
  readonly #log: Logger;
  #subscription: { unsubscribe(): void } | undefined;

  constructor(options: ClearCacheListenerOptions) {
    this.#o = options;
    this.#log = options.logger.child({ component: 'clear-cache' });
  }

  async start(): Promise<void> {
    if (this.#subscription) return;
    this.#subscription = this.#o.nats.client.connection.subscribe(builderClearCacheSubject(this.#o.subjectRoot), {
      callback: (err, msg) => {
        if (err) return;
        let request: { configId: string; by: string };
        try {
          request = clearCacheRequestSchema.parse(msg.json());
        } catch (e) {
          this.#log.warn({ err: (e as Error).message }, 'bad clear-cache request ignored');
          return;
        }
        void this.#clear(request).then(
          (reply) => {
            if (msg.reply) msg.respond(JSON.stringify(reply));
          },
          (e: unknown) => this.#log.error({ err: e, config: request.configId }, 'cache not cleared'),
        );
      },
    });
  }

  async stop(): Promise<void> {
    this.#subscription?.unsubscribe();
    this.#subscription = undefined;
  }

  async #clear({ configId, by }: { configId: string; by: string }): Promise<ClearCacheReply> {
    const { freedBytes, deferred } = await this.#o.cache.clear(configId);
    const reply = clearCacheReplySchema.parse({ agentId: this.#o.agentId, freedBytes, deferred });
    this.#log.info(
      { config: configId, by, freedBytes, deferred },
      deferred ? 'cache cleared when the build holding it ends' : 'cache cleared',
    );
    this.#o.onCleared?.(reply);
    return reply;
  }
}
