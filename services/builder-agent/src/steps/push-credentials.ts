/**
 * What a run pushes (and pulls its compile image) with. With this agent's robot key
 * (`BUILDER_REGISTRY_KEY`) each attempt of each run has its own credential,
 * `build@{runId}.{attempt}`, which the API's token server accepts only while that attempt is
 * placed on this agent and not finished, for the run's target repository (docs/registry.md,
 * "Robot credentials"). A static user (`REGISTRY_USERNAME`/`REGISTRY_PASSWORD`) is the same for
 * every run; with neither, the registry is anonymous.
 */
import { runPushCredential } from '@berth/shared/registry';
import type { RegistryAuth } from './docker.ts';

/** The credential of attempt `attempt` of run `runId`; undefined: push anonymously. */
export type PushCredentials = (runId: string, attempt: number) => RegistryAuth | undefined;

export type PushCredentialsOptions = {
  /** host:port of the registry (Docker's `serveraddress`). */
  registryAddr: string;
  agentKey?: Buffer | undefined;
  username?: string | undefined;
  password?: string | undefined;
};

export function pushCredentials(o: PushCredentialsOptions): PushCredentials {
  const { agentKey, registryAddr } = o;
  if (agentKey) {
    return (runId, attempt) => ({ ...runPushCredential(agentKey, runId, attempt), serveraddress: registryAddr });
  }
  if (o.username) {
    const fixed: RegistryAuth = { username: o.username, password: o.password ?? '', serveraddress: registryAddr };
    return () => fixed;
  }
  return () => undefined;
}

/**
 * The credential to pull `image` with: the run's, only when the image is on the region's
 * registry. A compile image from anywhere else is pulled anonymously, so no robot password is
 * sent to another registry.
 */
export function pullCredential(
  image: string,
  registryAddr: string,
  credential: RegistryAuth | undefined,
): RegistryAuth | undefined {
  return image.startsWith(`${registryAddr}/`) ? credential : undefined;
}
