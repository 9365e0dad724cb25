/** `dinofleet jobs`: every page of ListJobs as a table. */
import { callUnary } from '@dinofleet/proto';
import type { Job, JobServiceClient, JobState } from '@dinofleet/proto';

import { UNARY_DEADLINE_MS } from './deadlines.ts';
import { jobStateName } from './job-state.ts';
import { formatDuration } from './watch-job.ts';

/** Lists every job (newest first), following page tokens; `states` filters when not empty. */
export async function listAllJobs(client: JobServiceClient, states: readonly JobState[] = []): Promise<Job[]> {
  const jobs: Job[] = [];
  let pageToken = '';
  do {
    const page = await callUnary(client, 'listJobs', { pageSize: 1000, pageToken, states: [...states] }, { deadlineMs: UNARY_DEADLINE_MS });
    jobs.push(...page.jobs);
    pageToken = page.nextPageToken;
  } while (pageToken !== '');
  return jobs;
}

/** Jobs as an aligned text table: ID, STATE, STEP, WORKERS, AGE, ERROR. */
export function formatJobsTable(jobs: readonly Job[], nowMs: number = Date.now()): string {
  if (jobs.length === 0) return 'no jobs';
  const header = ['ID', 'STATE', 'STEP', 'WORKERS', 'AGE', 'ERROR'];
  const rows = jobs.map((job) => [
    job.jobId,
    jobStateName(job.state),
    `${job.committedStep}/${job.totalSteps}`,
    `${job.workersActive}/${job.workersDesired}`,
    job.createdAtUnixMs > 0 ? formatDuration((nowMs - job.createdAtUnixMs) / 1000) : '-',
    job.error.length > 60 ? `${job.error.slice(0, 57)}...` : job.error,
  ]);
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column]!.length)));
  return [header, ...rows].map((row) => row.map((cell, column) => cell.padEnd(widths[column]!)).join('  ').trimEnd()).join('\n');
}
