import { ConstantBackoff, handleWhen, noop, retry } from 'cockatiel';
import {
  ClientClosedError,
  Etcd3,
  EtcdError,
  GRPCDeadlineExceededError,
  GRPCUnavailableError,
  isRecoverableError,
} from 'etcd3';
import { UnavailableError } from '../errors/index.ts';

export type { Etcd3 } from 'etcd3';

export type EtcdClientConfig = {
  endpoints: string[];
  username?: string | undefined;
  password?: string | undefined;
  /** Connection and per-call deadline for the first connect, in ms. */
  dialTimeoutMs?: number;
};

/** The region's etcd client. One per process; close it last. */
export function createEtcdClient(config: EtcdClientConfig): Etcd3 {
  return new Etcd3({
    hosts: config.endpoints,
    dialTimeout: config.dialTimeoutMs ?? 3000,
    ...(config.username ? { auth: { username: config.username, password: config.password ?? '' } } : {}),
    // etcd3's default host policy is a circuit breaker that keeps failing calls for 5s after
    // etcd is back; with one endpoint that only delays recovery. One quick retry stays, for a
    // call that races a reconnect; callers retry where it is safe and surface
    // UnavailableError otherwise.
    faultHandling: {
      host: () => noop,
      global: retry(handleWhen(isRecoverableError), { maxAttempts: 1, backoff: new ConstantBackoff(100) }),
    },
    grpcOptions: {
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
      'grpc.keepalive_time_ms': 10_000,
      'grpc.keepalive_timeout_ms': 5_000,
    },
  });
}

/** True for errors that mean "etcd cannot be reached right now" (retry later). */
export function isEtcdUnavailable(err: unknown): boolean {
  return (
    err instanceof GRPCUnavailableError ||
    err instanceof GRPCDeadlineExceededError ||
    err instanceof ClientClosedError ||
    (err instanceof Error && /ECONNREFUSED|UNAVAILABLE|No connection established|deadline/i.test(err.message))
  );
}

/** Turns an outage into UnavailableError; other etcd errors pass through unchanged. */
export function toBerthError(err: unknown, what: string): unknown {
  if (isEtcdUnavailable(err)) return new UnavailableError(`etcd is unavailable while ${what}`, { cause: err });
  return err;
}

/**
 * A cheap call that proves the member answers and, with authentication on, that this client's
 * credentials are good: for readiness checks. The maintenance status needs no key permission,
 * so it suits every role (a role may not read any fixed key).
 */
export async function pingEtcd(client: Etcd3, timeoutMs = 2000): Promise<void> {
  await client.maintenance.status({ deadline: new Date(Date.now() + timeoutMs) });
}

export { EtcdError };

/** The etcd client as a lifecycle component: closed last, when everything using it has stopped. */
export function etcdComponent(client: Etcd3): { name: string; stop(): void } {
  return { name: 'etcd', stop: () => client.close() };
}
