/** Paging over a sorted list of names: `cursor` is the last name of the previous page. */
export function page<T>(
  items: T[],
  nameOf: (t: T) => string,
  limit: number,
  cursor: string | undefined,
): { items: T[]; next: string | null } {
  const start = cursor ? items.findIndex((i) => nameOf(i) > cursor) : 0;
  const from = start < 0 ? items.length : start;
  const slice = items.slice(from, from + limit);
  const last = slice[slice.length - 1];
  return { items: slice, next: from + limit < items.length && last ? nameOf(last) : null };
}
