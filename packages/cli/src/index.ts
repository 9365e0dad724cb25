/**
 * @dinofleet/cli: the `dinofleet` command and the functions behind it, for the demo and
 * tests (watch a job, evaluate a teacher, run a local fleet, certificates and API tokens,
 * the connection settings of a fleet).
 */
export { createApiToken, isApiScope, readApiToken, tokensFileLine, type CreateApiTokenOptions, type CreatedApiToken } from './api-token-commands.ts';
export { certificatesNote, writeDevCertificates, type WriteDevCertificatesOptions } from './certs-command.ts';
export { CliError, ExitCode, reportError, type ErrorReport } from './cli-error.ts';
export { explainConnectionError, isTlsFailure, probeTls, tlsErrorDetail, type TlsProbe } from './connection-errors.ts';
export {
  resolveApiToken,
  resolveFleetMemberConnection,
  resolveJobApiConnection,
  resolveTransportSecurity,
  type ConnectionContext,
  type ConnectionFlags,
  type FleetMemberConnection,
  type JobApiConnection,
  type ResolvedToken,
  type ResolvedTransport,
} from './connection-settings.ts';
export { SNAPSHOT_DEADLINE_MS, UNARY_DEADLINE_MS } from './deadlines.ts';
export {
  DEFAULT_KNN_TEST,
  DEFAULT_KNN_TRAIN,
  evalKnn,
  fetchJobSpec,
  loadCheckpointTeacher,
  type EvalKnnOptions,
  type EvalKnnResult,
  type TeacherSource,
} from './eval-knn.ts';
export {
  FLEET_DIR_NAME,
  FLEET_FILE_NAME,
  fleetFilePath,
  readFleetFile,
  removeFleetFile,
  resolveAddress,
  writeFleetFile,
  type AddressSource,
  type FleetEndpoint,
  type FleetRecord,
  type ResolveAddressOptions,
  type ResolvedAddress,
} from './fleet-file.ts';
export { runFleetUp, s3EnvForEndpoint, type FleetUpOptions } from './fleet-up.ts';
export { isTerminalJobState, JOB_STATE_NAMES, jobStateName, parseJobState } from './job-state.ts';
export { formatJobsTable, listAllJobs } from './jobs-table.ts';
export { runCli, type CliIo } from './program.ts';
export { formatSpecIssue, readJobSpecFile, specFormatOf, submitJob, validateJobSpecText, type SubmitJobOptions } from './submit-job.ts';
export { fetchTeacherSnapshot, type FetchTeacherSnapshotOptions, type TeacherSnapshot } from './teacher-snapshot.ts';
export {
  DEFAULT_WATCH_STREAM_DEADLINE_MS,
  describeJobOutcome,
  exitCodeForJob,
  formatDuration,
  formatJobEvent,
  formatProgressLine,
  formatStateChange,
  MAX_WATCH_RECONNECTS,
  watchJob,
  type WatchJobOptions,
} from './watch-job.ts';
