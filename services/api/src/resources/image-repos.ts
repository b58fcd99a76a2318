/**
 * Repositories and tags of an image group, read from the region's registry (the registry is
 * their record: a repository exists once a member who may push has pushed to it). Reading needs
 * read access to the group (anyone for a public one); deleting a tag needs Owner or Master.
 */
import { ConflictError } from '@berth/shared/errors';
import { toSubjectToken } from '@berth/shared/events';
import { dnsLabelSchema, imageTagSchema } from '@berth/shared/model';
import { z } from 'zod';
import { page } from '../http/paging.ts';
import { defineRoute } from '../http/routes.ts';
import { repoComponentSchema, type TagPushes } from '../registry/notifications.ts';
import type { RegistryClient } from '../registry/registry-client.ts';
import type { ApiContext } from './context.ts';
import { loadImageGroup } from './image-groups.ts';
import { listOf, listQuery } from './schemas.ts';

export const imageRepoParams = z.object({ group: dnsLabelSchema, repo: repoComponentSchema }).strict();
export const imageTagParams = z
  .object({ group: dnsLabelSchema, repo: repoComponentSchema, tag: imageTagSchema })
  .strict();

export const imageRepoResponse = z.object({
  /** The full name to pull: `team/shop`. */
  name: z.string(),
  group: z.string(),
  repo: z.string(),
});

export const imageTagResponse = z.object({
  tag: z.string(),
  digest: z.string(),
  mediaType: z.string(),
  /** Bytes of the manifest, its config and its layers (compressed, as stored). */
  size: z.number().int(),
  /**
   * When the tag was pushed (the registry's clock) and by whom (a user, a build robot
   * `build@{run}.{attempt}`, or '' for anonymous), from the registry's notifications; null when
   * unknown: pushed before they were on, or the notification is still on its way.
   */
  pushedAt: z.iso.datetime().nullable(),
  pushedBy: z.string().nullable(),
});

export function imageRepoRoutes(ctx: ApiContext, registry: RegistryClient, pushes: TagPushes) {
  return [
    defineRoute({
      method: 'get',
      path: '/image-groups/:group/repos',
      operationId: 'listImageRepos',
      summary: "An image group's repositories in the registry, by name",
      tags: ['images'],
      access: { kind: 'user', scope: 'read' },
      params: z.object({ group: dnsLabelSchema }).strict(),
      query: listQuery,
      responses: { 200: listOf(imageRepoResponse) },
      handler: async ({ params, query, principal }) => {
        await loadImageGroup(ctx, principal, params.group, 'read');
        const names = await registry.repositories(`${params.group}/`);
        const repos = names.map((name) => ({ name, group: params.group, repo: name.slice(params.group.length + 1) }));
        return { status: 200, body: page(repos, (r) => r.name, query.limit, query.cursor) };
      },
    }),

    defineRoute({
      method: 'get',
      path: '/image-groups/:group/repos/:repo/tags',
      operationId: 'listImageTags',
      summary: "A repository's tags with their digest, size, and who pushed each and when, by tag",
      tags: ['images'],
      access: { kind: 'user', scope: 'read' },
      params: imageRepoParams,
      query: listQuery,
      responses: { 200: listOf(imageTagResponse) },
      handler: async ({ params, query, principal }) => {
        await loadImageGroup(ctx, principal, params.group, 'read');
        const name = `${params.group}/${params.repo}`;
        const tags = page(await registry.tags(name), (t) => t, query.limit, query.cursor);
        const [manifests, records] = await Promise.all([
          Promise.all(tags.items.map(async (tag) => ({ tag, ...(await registry.manifest(name, tag)) }))),
          pushes.ofRepository(params.group, params.repo),
        ]);
        const items = manifests.map((m) => {
          // A record of another digest is of an earlier push whose successor was not notified yet.
          const record = records.get(m.tag);
          const known = record?.digest === m.digest ? record : undefined;
          return { ...m, pushedAt: known?.pushedAt ?? null, pushedBy: known?.pushedBy ?? null };
        });
        return { status: 200, body: { items, next: tags.next } };
      },
    }),

    defineRoute({
      method: 'delete',
      path: '/image-groups/:group/repos/:repo/tags/:tag',
      operationId: 'deleteImageTag',
      summary:
        'Delete a tag (Owner, Master); refused while another tag names the same image, which the registry would delete too',
      tags: ['images'],
      access: { kind: 'user', scope: 'write' },
      params: imageTagParams,
      responses: { 204: undefined },
      errors: [403, 409],
      handler: async ({ params, principal: p }) => {
        await loadImageGroup(ctx, p, params.group, 'deploy');
        const name = `${params.group}/${params.repo}`;
        const target = await registry.manifest(name, params.tag);
        // Distribution deletes manifests, not tags: every tag of the digest would go.
        const others: string[] = [];
        for (const tag of await registry.tags(name)) {
          if (tag !== params.tag && (await registry.manifest(name, tag)).digest === target.digest) others.push(tag);
        }
        if (others.length > 0) {
          throw new ConflictError(
            `tag "${params.tag}" names the same image as ${others.map((t) => `"${t}"`).join(', ')}; the registry deletes images, not tags`,
            { extensions: { digest: target.digest, tags: others } },
          );
        }
        await registry.deleteManifest(name, target.digest);
        const { op, event } = ctx.events.record({
          kind: 'image',
          resourceId: toSubjectToken(name),
          resourceName: params.tag,
          action: 'tag-deleted',
          actor: { type: 'user', name: p.user },
          data: { digest: target.digest },
        });
        await ctx.store.commit([pushes.forgetTagOp(params.group, params.repo, params.tag), op]);
        ctx.events.flush([event]);
        return { status: 204 };
      },
    }),
  ];
}
