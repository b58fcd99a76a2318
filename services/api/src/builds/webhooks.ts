/**
 * Git hosts' push webhooks, as each documents them: how the delivery is authenticated (GitLab's
 * `X-Gitlab-Token`, the shared secret, compared in constant time; GitHub's `X-Hub-Signature-256`,
 * `sha256=` + HMAC-SHA256 of the raw body; Gitea's `X-Gitea-Signature`, the same HMAC in hex
 * without prefix), which header names the event and the delivery, and which pushes start a run.
 * Gitea also sends GitHub's headers, so the provider comes from the URL, never from the headers.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { BuildConfig } from '@berth/shared/builds';
import { safeEqual, sha256Hex } from './webhook-secrets.ts';

export type Provider = 'github' | 'gitlab' | 'gitea';
export type HeaderReader = (name: string) => string | undefined;

/** Whether the delivery carries the config's secret (GitLab) or a valid signature of `raw` (GitHub, Gitea). */
export function verifyDelivery(
  provider: Provider,
  header: HeaderReader,
  raw: Buffer,
  secret: { plain: string | undefined; hash: string },
): boolean {
  if (provider === 'gitlab') {
    const token = header('x-gitlab-token');
    return token !== undefined && safeEqual(sha256Hex(token), secret.hash);
  }
  if (!secret.plain) return false;
  const hmac = createHmac('sha256', secret.plain).update(raw).digest('hex');
  const sent =
    provider === 'github'
      ? header('x-hub-signature-256')
      : (header('x-gitea-signature') ?? header('x-forgejo-signature'));
  if (!sent) return false;
  const expected = provider === 'github' ? `sha256=${hmac}` : hmac;
  const a = Buffer.from(sent.trim().toLowerCase());
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The event a delivery reports: `push` (branches and tags), `ping`, or another one. */
export function eventOf(provider: Provider, header: HeaderReader): 'push' | 'ping' | string {
  switch (provider) {
    case 'github': {
      const e = header('x-github-event') ?? '';
      return e;
    }
    case 'gitea':
      return header('x-gitea-event') ?? header('x-forgejo-event') ?? header('x-gogs-event') ?? '';
    case 'gitlab': {
      const e = header('x-gitlab-event') ?? '';
      return e === 'Push Hook' || e === 'Tag Push Hook' ? 'push' : e;
    }
  }
}

/** The delivery's id: the same on a redelivery. */
export function deliveryOf(provider: Provider, header: HeaderReader): string | undefined {
  switch (provider) {
    case 'github':
      return header('x-github-delivery');
    case 'gitea':
      return header('x-gitea-delivery') ?? header('x-forgejo-delivery');
    case 'gitlab':
      return header('idempotency-key') ?? header('x-gitlab-event-uuid');
  }
}

export type Push = {
  /** `refs/heads/main`, `refs/tags/v1.2.0`. */
  ref: string;
  /** The commit the ref points at after the push (all zeros for a delete). */
  after: string;
  deleted: boolean;
  /** Who pushed, as the host names them. */
  pusher: string | undefined;
};

const ZEROS = /^0{40}$/;

/** The documented push fields: `ref`, `after`, `deleted` (GitHub, Gitea), `checkout_sha` (GitLab). */
export function parsePush(provider: Provider, body: Record<string, unknown>): Push | undefined {
  const ref = body.ref;
  const after = body.after;
  if (typeof ref !== 'string' || typeof after !== 'string') return undefined;
  const deleted = ZEROS.test(after) || body.deleted === true || (provider === 'gitlab' && body.checkout_sha === null);
  return { ref, after: after.toLowerCase(), deleted, pusher: pusherOf(provider, body) };
}

function pusherOf(provider: Provider, body: Record<string, unknown>): string | undefined {
  const field = (o: unknown, k: string) =>
    o && typeof o === 'object' && typeof (o as Record<string, unknown>)[k] === 'string'
      ? ((o as Record<string, unknown>)[k] as string)
      : undefined;
  if (provider === 'gitlab') return field(body, 'user_username') ?? field(body, 'user_name');
  return field(body.pusher, 'login') ?? field(body.pusher, 'username') ?? field(body.pusher, 'name');
}

export type TriggerDecision = { start: true; kind: 'branch' | 'tag'; name: string } | { start: false; reason: string };

/** Whether a push of `ref` starts a run: branches and tags matching the config's triggers (default: its branch). */
export function matchTrigger(config: Pick<BuildConfig, 'git' | 'triggers'>, ref: string): TriggerDecision {
  if (ref.startsWith('refs/heads/')) {
    const name = ref.slice('refs/heads/'.length);
    const patterns = config.triggers?.branches ?? [config.git.branch];
    return patterns.some((p) => globMatch(p, name))
      ? { start: true, kind: 'branch', name }
      : { start: false, reason: `branch "${name}" matches no trigger (${patterns.join(', ') || 'none'})` };
  }
  if (ref.startsWith('refs/tags/')) {
    const name = ref.slice('refs/tags/'.length);
    const patterns = config.triggers?.tags ?? [];
    return patterns.some((p) => globMatch(p, name))
      ? { start: true, kind: 'tag', name }
      : { start: false, reason: `tag "${name}" matches no trigger (${patterns.join(', ') || 'none'})` };
  }
  return { start: false, reason: `ref "${ref}" is neither a branch nor a tag` };
}

/** A glob over ref names: `*` and `?` stay within one `/` segment, `**` crosses them. */
export function globMatch(pattern: string, text: string): boolean {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i] as string;
    if (c === '*' && pattern[i + 1] === '*') {
      re += '.*';
      i++;
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`).test(text);
}
