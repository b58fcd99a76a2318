/** Loading an app together with the caller's role on it, and the retry loop for racing writes. */
import { ConflictError, NotFoundError } from '@berth/shared/errors';
import { type App, appSchema, type Member, memberSchema, type Role } from '@berth/shared/model';
import type { Principal } from '../auth/principal.ts';
import { type Action, authorize } from '../rbac/index.ts';
import type { Stored, WriteOp } from '../store/etcd-store.ts';
import type { ApiContext } from './context.ts';

export type AppAccess = { app: Stored<App>; role: Role; membership: Stored<Member> | undefined };

/** The app and the caller's role, or 404 (not found, or not a member) / 403 (role too weak). */
export async function loadApp(ctx: ApiContext, principal: Principal, name: string, action: Action): Promise<AppAccess> {
  const [app, membership] = await Promise.all([
    ctx.store.get(ctx.keys.app(name), appSchema),
    ctx.store.get(ctx.keys.member(name, principal.user), memberSchema),
  ]);
  if (!app) throw new NotFoundError(`no app "${name}"`);
  const role = authorize(principal, { kind: 'app', name, private: true }, membership?.value.role, action);
  return { app, role, membership };
}

export type Attempt<T> = {
  ops: WriteOp[];
  /** Maps failed compares to the error the caller should see; undefined means "re-read and retry". */
  onFailed?: (failedKeys: string[]) => Error | undefined;
  result: (revision: number) => T;
};

/** Serializes work per key inside this process (other replicas still race, and CAS decides). */
class KeyedMutex {
  readonly #tails = new Map<string, Promise<void>>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => {
      release = r;
    });
    const tail = previous.then(() => mine);
    this.#tails.set(key, tail);
    await previous;
    try {
      return await fn();
    } finally {
      release();
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    }
  }
}

const writers = new KeyedMutex();

/**
 * Runs `attempt` (which reads, checks and returns the writes) and commits its writes in one
 * transaction; when a compare fails because something changed meanwhile, reads and tries again,
 * up to `maxAttempts` times. Writes with the same `serializeOn` key (e.g. one app's version
 * counter) queue inside this process instead of racing each other through etcd.
 */
export async function commitWithRetry<T>(
  ctx: ApiContext,
  attempt: () => Promise<Attempt<T>>,
  options: { serializeOn?: string; maxAttempts?: number } = {},
): Promise<T> {
  const maxAttempts = options.maxAttempts ?? 8;
  const work = async (): Promise<T> => {
    for (let i = 1; i <= maxAttempts; i++) {
      const a = await attempt();
      const res = await ctx.store.commit(a.ops);
      if (res.ok) return a.result(res.revision);
      const err = a.onFailed?.(res.failedKeys);
      if (err) throw err;
      await new Promise((r) => setTimeout(r, Math.random() * 10 * i));
    }
    throw new ConflictError('the resource kept changing while this request ran; try again');
  };
  return options.serializeOn ? writers.run(options.serializeOn, work) : work();
}
