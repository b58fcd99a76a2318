import { runService } from '@berth/shared/lifecycle';
import { discoveryEnv } from './env.ts';
import { DiscoveryService } from './service.ts';

await runService({ name: 'discovery', envSchema: discoveryEnv, create: DiscoveryService.create });
