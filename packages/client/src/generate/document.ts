/**
 * The API's OpenAPI document as the current code builds it, in this process: the API service is
 * created (never started, so it connects to nothing) with every optional route family switched on
 * — the registry's token, repository and notification routes — so the document is the one a
 * fully configured region serves at /api/v1/openapi.json.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseEnv } from '@berth/shared/config';
import { createLogger } from '@berth/shared/logging';
import { apiEnv } from '../../../../services/api/src/env.ts';
import { buildOpenApi } from '../../../../services/api/src/http/openapi.ts';
import { API_BASE, API_VERSION, ApiService } from '../../../../services/api/src/service.ts';

const REPO_ROOT = fileURLToPath(new URL('../../../../', import.meta.url));

export async function currentOpenApiDocument(): Promise<Record<string, unknown>> {
  const dir = mkdtempSync(join(tmpdir(), 'berth-openapi-'));
  try {
    const [keyFile] = execFileSync(join(REPO_ROOT, 'infra/registry-token-key.sh'), [join(dir, 'secrets')], {
      encoding: 'utf8',
    })
      .trim()
      .split('\n') as [string];
    const config = parseEnv(apiEnv, {
      ETCD_ENDPOINTS: 'http://127.0.0.1:1',
      NATS_URL: 'nats://127.0.0.1:1',
      REDIS_URL: 'redis://127.0.0.1:1',
      REGISTRY_TOKEN_KEY: readFileSync(keyFile, 'utf8'),
      REGISTRY_URL: 'http://127.0.0.1:1',
      REGISTRY_NOTIFY_TOKEN: 'document-only-notify-token',
    });
    const service = ApiService.create(config, createLogger({ service: 'api', level: 'silent' }));
    const doc = buildOpenApi(service.routes, API_BASE, API_VERSION);
    await service.stop();
    return doc;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
