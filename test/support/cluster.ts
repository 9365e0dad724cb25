// Shared by the integration tests: a job spec for a small run, waiting on job states, and
// reading one sample of a Prometheus exposition.
import { callUnary, JobState, type Job, type JobServiceClient } from '@dinofleet/proto';

/** A small `dino` job: a few steps of a tiny batch, so a test spends seconds, not minutes. */
export function smallJobSpec(
  manifestUri: string,
  overrides: { name?: string; steps?: number; globalBatchSize?: number; workers?: number; checkpointUri?: string } = {},
): Record<string, unknown> {
  return {
    apiVersion: 'dinofleet/v1',
    kind: 'TrainingJob',
    metadata: { name: overrides.name ?? 'itest' },
    spec: {
      recipe: { preset: 'dino', overrides: { crops: { nLocal: 1 } } },
      data: { manifest: manifestUri },
      training: { steps: overrides.steps ?? 3, globalBatchSize: overrides.globalBatchSize ?? 8, seed: 1 },
      fleet: { workers: overrides.workers ?? 2 },
      ...(overrides.checkpointUri !== undefined && { checkpoint: { uri: overrides.checkpointUri, everySteps: 1000 } }),
    },
  };
}

/** Polls GetJob until `done(job)` holds; fails with the last state seen after `timeoutMs`. */
export async function waitForJob(client: JobServiceClient, jobId: string, done: (job: Job) => boolean, timeoutMs = 180_000): Promise<Job> {
  const deadline = Date.now() + timeoutMs;
  let last: Job | undefined;
  while (Date.now() < deadline) {
    last = (await callUnary(client, 'getJob', { jobId }, { deadlineMs: 5000 })).job;
    if (last !== undefined && done(last)) return last;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`job ${jobId} did not reach the expected state in ${timeoutMs} ms; last: ${last === undefined ? 'none' : `${JobState[last.state]} step ${last.committedStep} ${last.error}`}`);
}

/** True for SUCCEEDED, FAILED and CANCELLED. */
export function isTerminal(job: Job): boolean {
  return job.state === JobState.JOB_STATE_SUCCEEDED || job.state === JobState.JOB_STATE_FAILED || job.state === JobState.JOB_STATE_CANCELLED;
}

/** GETs `http://<address>/metrics`. */
export async function scrape(address: string): Promise<string> {
  const response = await fetch(`http://${address}/metrics`);
  if (!response.ok) throw new Error(`GET ${address}/metrics: ${response.status}`);
  return response.text();
}

/**
 * The value of one sample, e.g. `sampleValue(text, 'dinofleet_job_step', { job: 'x' })`;
 * undefined when no line matches. Labels not named are ignored.
 */
export function sampleValue(exposition: string, name: string, labels: Readonly<Record<string, string>> = {}): number | undefined {
  for (const line of exposition.split('\n')) {
    if (!line.startsWith(name)) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (match === null || match[1] !== name) continue;
    const body = match[3] ?? '';
    const found = new Map<string, string>();
    for (const m of body.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) found.set(m[1] as string, m[2] as string);
    if (Object.entries(labels).every(([k, v]) => found.get(k) === v)) return Number(match[4]);
  }
  return undefined;
}
