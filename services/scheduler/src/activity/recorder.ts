/**
 * What the scheduler needs of the shared events component (`runtime.addEvents`): an event's
 * outbox op to put in the transaction of the change it records, and a publish after the commit.
 * A structural type, so unit tests can pass a plain object.
 */
import type { Actor, BerthEvent, EventInput } from '@berth/shared/events';
import type { Op } from '@berth/shared/store';

export type EventRecorder = {
  record(input: EventInput): { op: Op; event: BerthEvent };
  flush(events: readonly BerthEvent[]): void;
};

/** The actor of the events the scheduler decides itself (placement, availability). */
export const SCHEDULER_ACTOR: Actor = { type: 'service', name: 'scheduler' };
