/** The image tag of a run: the config's template with `{branch}`, `{sha7}`, `{sha}`, `{tag}`, `{run}` filled in. */

export type TagInput = {
  template: string;
  /** The branch built (for a tag push: the config's branch). */
  branch: string;
  /** The git tag pushed, if the run came from a tag push. */
  gitTag?: string | undefined;
  commit: string | null;
  run: number;
};

/** A Docker tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; anything else becomes `-`. */
export function renderTag(input: TagInput): string {
  // A tag push tags the image with the git tag itself.
  if (input.gitTag) return sanitizeTag(input.gitTag);
  const sha = input.commit ?? 'latest';
  const out = input.template
    .replaceAll('{branch}', input.branch)
    .replaceAll('{sha7}', sha.slice(0, 7))
    .replaceAll('{sha}', sha)
    .replaceAll('{tag}', input.gitTag ?? input.branch)
    .replaceAll('{run}', String(input.run));
  return sanitizeTag(out);
}

export function sanitizeTag(text: string): string {
  const cleaned = text.replace(/[^A-Za-z0-9_.-]/g, '-').replace(/^[.-]+/, '');
  return (cleaned || 'latest').slice(0, 128);
}
