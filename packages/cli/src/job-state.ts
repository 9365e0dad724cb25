/** Job states as users type and read them (`running`, `RUNNING`). */
import { JobState } from '@dinofleet/proto';

const NAMES: ReadonlyMap<JobState, string> = new Map([
  [JobState.JOB_STATE_UNSPECIFIED, 'UNSPECIFIED'],
  [JobState.JOB_STATE_QUEUED, 'QUEUED'],
  [JobState.JOB_STATE_STARTING, 'STARTING'],
  [JobState.JOB_STATE_RUNNING, 'RUNNING'],
  [JobState.JOB_STATE_SUCCEEDED, 'SUCCEEDED'],
  [JobState.JOB_STATE_FAILED, 'FAILED'],
  [JobState.JOB_STATE_CANCELLED, 'CANCELLED'],
]);

/** The short name of a state, e.g. `RUNNING`; `UNKNOWN(<n>)` for a value from a newer server. */
export function jobStateName(state: JobState): string {
  return NAMES.get(state) ?? `UNKNOWN(${state})`;
}

/** Names accepted by {@link parseJobState}, lower case. */
export const JOB_STATE_NAMES: readonly string[] = ['queued', 'starting', 'running', 'succeeded', 'failed', 'cancelled'];

/** `running` / `RUNNING` / `JOB_STATE_RUNNING` → the state; undefined for anything else. */
export function parseJobState(text: string): JobState | undefined {
  const name = text.trim().toUpperCase().replace(/^JOB_STATE_/, '');
  for (const [state, stateName] of NAMES) {
    if (stateName === name && state !== JobState.JOB_STATE_UNSPECIFIED) return state;
  }
  return undefined;
}

/** True for SUCCEEDED, FAILED and CANCELLED. */
export function isTerminalJobState(state: JobState): boolean {
  return state === JobState.JOB_STATE_SUCCEEDED || state === JobState.JOB_STATE_FAILED || state === JobState.JOB_STATE_CANCELLED;
}
