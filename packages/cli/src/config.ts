/**
 * Where `berth` keeps the API's address and its token: $XDG_CONFIG_HOME/berth/config.json
 * (default ~/.config/berth/config.json), mode 600 in a mode 700 folder. `--api` and
 * BERTH_API_URL override the stored address, BERTH_TOKEN the stored token.
 */
import { chmodSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

export type StoredConfig = {
  api?: string;
  token?: string;
  /** Who logged in, and the token's id (to revoke it on logout). */
  user?: string;
  tokenId?: string;
};

export const DEFAULT_API = 'http://127.0.0.1:7070';

export function configPath(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CONFIG_HOME?.trim() || join(homedir(), '.config');
  return join(base, 'berth', 'config.json');
}

export function readConfig(path: string): StoredConfig {
  try {
    const parsed = JSON.parse(readFileSync(path, 'utf8')) as unknown;
    return parsed && typeof parsed === 'object' ? (parsed as StoredConfig) : {};
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new Error(`cannot read ${path}: ${(err as Error).message}`);
  }
}

/** Written whole to a temporary file with mode 600, then renamed over the old one. */
export function writeConfig(path: string, config: StoredConfig): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
}

export type Effective = { api: string; token: string | undefined; path: string; stored: StoredConfig };

/** The address and token a command uses: flag, then environment, then the stored file. */
export function effectiveConfig(flags: { api?: string | undefined }, env: NodeJS.ProcessEnv = process.env): Effective {
  const path = configPath(env);
  const stored = readConfig(path);
  const api = flags.api || env.BERTH_API_URL || stored.api || DEFAULT_API;
  const token = env.BERTH_TOKEN || stored.token;
  return { api: api.replace(/\/+$/, ''), token, path, stored };
}
