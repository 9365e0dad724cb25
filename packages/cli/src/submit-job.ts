/**
 * `dinofleet submit`: the spec is checked here first with the same schema the coordinator
 * uses, so a bad spec is refused with every field named before anything is sent.
 */
import { readFile } from 'node:fs/promises';

import { JobSpecError, parseJobSpec } from '@dinofleet/config';
import type { JobSpec, JobSpecFormat, JobSpecIssue } from '@dinofleet/config';
import { callUnary } from '@dinofleet/proto';
import type { JobServiceClient, SubmitJobResponse } from '@dinofleet/proto';

import { CliError, ExitCode } from './cli-error.ts';
import { UNARY_DEADLINE_MS } from './deadlines.ts';

/** One issue as `file:line:col: path: message` (line and column when known). */
export function formatSpecIssue(file: string, issue: JobSpecIssue): string {
  const where = issue.line === undefined ? file : `${file}:${issue.line}:${issue.column ?? 1}`;
  return `${where}: ${issue.path === '' ? '(spec)' : issue.path}: ${issue.message}`;
}

/** JSON for `.json` files, YAML (which also reads JSON) for everything else. */
export function specFormatOf(file: string): JobSpecFormat {
  return file.toLowerCase().endsWith('.json') ? 'json' : 'yaml';
}

/**
 * Parses and checks a spec; a bad one becomes a {@link CliError} (exit 2) listing every
 * issue on its own line, `file:line:col: path: message`.
 */
export function validateJobSpecText(text: string, file: string): JobSpec {
  try {
    return parseJobSpec(text, specFormatOf(file));
  } catch (error) {
    if (!(error instanceof JobSpecError)) throw error;
    const count = error.issues.length === 1 ? '1 problem' : `${error.issues.length} problems`;
    const lines = error.issues.map((issue) => `  ${formatSpecIssue(file, issue)}`);
    throw new CliError(`${file}: invalid job spec (${count}), nothing was submitted:\n${lines.join('\n')}`, ExitCode.Usage, { cause: error });
  }
}

/** Reads a spec file (a missing file is a usage error). */
export async function readJobSpecFile(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new CliError(`cannot read ${file}: ${code === 'ENOENT' ? 'no such file' : (error as Error).message}`, ExitCode.Usage, { cause: error });
  }
}

/** Options of {@link submitJob}. */
export interface SubmitJobOptions {
  /** Spec text as written (sent unchanged, so the coordinator stores what the user wrote). */
  readonly specText: string;
  /** File name, for messages and the format. @default 'job.yaml' */
  readonly file?: string;
  /** Idempotency key; a repeated submit returns the first job. @default none */
  readonly idempotencyKey?: string;
  /** Deadline of the call, ms. @default {@link UNARY_DEADLINE_MS} */
  readonly deadlineMs?: number;
}

/** Validates the spec locally, then calls SubmitJob. */
export async function submitJob(client: JobServiceClient, options: SubmitJobOptions): Promise<SubmitJobResponse> {
  validateJobSpecText(options.specText, options.file ?? 'job.yaml');
  return callUnary(
    client,
    'submitJob',
    { spec: options.specText, idempotencyKey: options.idempotencyKey ?? '' },
    { deadlineMs: options.deadlineMs ?? UNARY_DEADLINE_MS },
  );
}
