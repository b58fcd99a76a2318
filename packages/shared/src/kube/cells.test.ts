import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { kubeconfigPath } from './cells.ts';

const dir = mkdtempSync(join(tmpdir(), 'kubeconfigs-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('kubeconfigPath', () => {
  it("takes a service's own kubeconfig in a cell when there is one, else the cell's", () => {
    writeFileSync(join(dir, 'cell-a.kubeconfig'), '');
    writeFileSync(join(dir, 'cell-a.discovery.kubeconfig'), '');
    expect(kubeconfigPath(dir, 'cell-a', 'discovery')).toBe(join(dir, 'cell-a.discovery.kubeconfig'));
    expect(kubeconfigPath(dir, 'cell-a', 'scheduler')).toBe(join(dir, 'cell-a.kubeconfig'));
    expect(kubeconfigPath(dir, 'cell-a')).toBe(join(dir, 'cell-a.kubeconfig'));
  });
});
