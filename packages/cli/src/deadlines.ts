/** Deadlines of the CLI's gRPC calls. */

/** Deadline of one unary call (SubmitJob, GetJob, ListJobs, ScaleJob, CancelJob), ms. */
export const UNARY_DEADLINE_MS = 15_000;

/** Deadline of one teacher snapshot download, ms. */
export const SNAPSHOT_DEADLINE_MS = 120_000;
