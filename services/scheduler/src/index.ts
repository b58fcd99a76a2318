import { runService } from '@berth/shared/lifecycle';
import { schedulerEnv } from './env.ts';
import { SchedulerService } from './service.ts';

await runService({ name: 'scheduler', envSchema: schedulerEnv, create: SchedulerService.create });
