import { runService } from '@berth/shared/lifecycle';
import { builderAgentEnv } from './env.ts';
import { BuilderAgentService } from './service.ts';

await runService({ name: 'builder-agent', envSchema: builderAgentEnv, create: BuilderAgentService.create });
