/** ETags and If-Match: an ETag is the etcd mod revision of what the answer shows. */
import { PreconditionFailedError } from '@berth/shared/errors';
import type { Request } from 'express';

/** `"<revision>"` */
export function etag(modRevision: number): string {
  return `"${modRevision}"`;
}

/** The revision an If-Match header names, or undefined when there is none. Throws 412 on `*` mismatch forms. */
export function ifMatchRevision(req: Request): number | undefined {
  const header = req.headers['if-match'];
  if (!header || header === '*') return undefined;
  const m = /^(?:W\/)?"([0-9]+)"$/.exec(header.trim());
  if (!m?.[1]) throw new PreconditionFailedError(`If-Match must be an ETag from this API, like "42" (got ${header})`);
  return Number(m[1]);
}

/** Throws 412 when If-Match names another revision than the current one. */
export function checkIfMatch(req: Request, currentRevision: number): void {
  const wanted = ifMatchRevision(req);
  if (wanted !== undefined && wanted !== currentRevision) {
    throw new PreconditionFailedError(`the resource changed (now ${etag(currentRevision)}); read it again`, {
      extensions: { currentETag: etag(currentRevision) },
    });
  }
}
