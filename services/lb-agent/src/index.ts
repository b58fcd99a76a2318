import { runService } from '@berth/shared/lifecycle';
import { lbAgentEnv } from './env.ts';
import { LbAgentService } from './service.ts';

await runService({ name: 'lb-agent', envSchema: lbAgentEnv, create: LbAgentService.create });
