/**
 * A promise with its resolve and reject in hand: for a wait that something else ends (a watch's
 * first sync, an informer's first list). Its own module, free of imports, so low-level modules
 * (etcd, kube) take it without loading the service lifecycle.
 */
export type Deferred<T = void> = {
  readonly promise: Promise<T>;
  resolve(value: T): void;
  reject(reason: unknown): void;
};

export function deferred<T = void>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (reason: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
