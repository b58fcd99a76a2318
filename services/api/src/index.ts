import { runService } from '@berth/shared/lifecycle';
import { apiEnv } from './env.ts';
import { ApiService } from './service.ts';

await runService({ name: 'api', envSchema: apiEnv, create: ApiService.create });
