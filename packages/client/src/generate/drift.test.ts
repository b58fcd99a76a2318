import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { renderSchema } from './render.ts';

describe('the generated client types', () => {
  it('match the OpenAPI document the current API code builds (regenerate: pnpm --filter @berth/client generate)', async () => {
    const committed = readFileSync(new URL('../schema.ts', import.meta.url), 'utf8');
    const current = await renderSchema();
    // A line-level diff names the routes that drifted rather than one huge string.
    const missing = current.split('\n').filter((l) => l.startsWith('    "/api/v1/') && !committed.includes(l));
    const gone = committed.split('\n').filter((l) => l.startsWith('    "/api/v1/') && !current.includes(l));
    expect({ missing, gone }).toEqual({ missing: [], gone: [] });
    expect(current === committed, 'packages/client/src/schema.ts is stale: pnpm --filter @berth/client generate').toBe(
      true,
    );
  }, 30_000);
});
