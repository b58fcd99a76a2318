import { runService } from '@berth/shared/lifecycle';
import { ipamCheckerEnv } from './env.ts';
import { IpamCheckerService } from './service.ts';

await runService({ name: 'cni-ipam', envSchema: ipamCheckerEnv, create: IpamCheckerService.create });
