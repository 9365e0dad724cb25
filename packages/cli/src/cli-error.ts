/**
 * How the CLI reports failures: one line (or one line per bad field) on stderr and an exit
 * code, never a stack trace.
 */
import { JobSpecError } from '@dinofleet/config';
import { ErrorCode, fromServiceError, isDinofleetError, isServiceError } from '@dinofleet/proto';

/** Exit codes of the `dinofleet` command. */
export const ExitCode = {
  /** Success (for `watch`: the job SUCCEEDED). */
  Ok: 0,
  /** A failure: a gRPC error, the job FAILED, anything unexpected. */
  Failure: 1,
  /** The command line or the input (a job spec) is wrong; nothing was done. */
  Usage: 2,
  /** `watch`: the job was CANCELLED. */
  Cancelled: 3,
  /** Interrupted by SIGINT. */
  Interrupted: 130,
} as const;

/** One of the {@link ExitCode} values. */
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/** An error the CLI reports with its own message and exit code. */
export class CliError extends Error {
  override readonly name = 'CliError';
  /** Process exit code to use. */
  readonly exitCode: number;

  constructor(message: string, exitCode: number = ExitCode.Failure, options?: ErrorOptions) {
    super(message, options);
    this.exitCode = exitCode;
  }
}

/** What to print and how to exit for an error. */
export interface ErrorReport {
  /** Text for stderr, without a trailing newline. */
  readonly message: string;
  /** Process exit code. */
  readonly exitCode: number;
}

/**
 * The report for anything a command threw: gRPC errors as `error: <STATUS>: <message>`
 * (exit 2 for INVALID_ARGUMENT, else 1), a refused spec with one line per bad field
 * (exit 2), {@link CliError}s as they are, anything else as `error: <message>` (exit 1).
 */
export function reportError(error: unknown): ErrorReport {
  if (error instanceof CliError) return { message: `error: ${error.message}`, exitCode: error.exitCode };
  if (error instanceof JobSpecError) return { message: `error: ${error.message}`, exitCode: ExitCode.Usage };
  if (isDinofleetError(error) || isServiceError(error)) {
    const known = fromServiceError(error);
    return {
      message: `error: ${known.code}: ${known.message}`,
      exitCode: known.code === ErrorCode.InvalidArgument ? ExitCode.Usage : ExitCode.Failure,
    };
  }
  if (error instanceof AggregateError) {
    return { message: `error: ${error.message}: ${error.errors.map((e) => (e instanceof Error ? e.message : String(e))).join('; ')}`, exitCode: ExitCode.Failure };
  }
  return { message: `error: ${error instanceof Error ? error.message : String(error)}`, exitCode: ExitCode.Failure };
}
