/**
 * @dinofleet/coordinator: jobs in BullMQ/Redis, membership and generations, shard leases,
 * the step commit, scaling. `startCoordinator` runs one in-process (tests, `main.ts`).
 */
export { coordinatorMaxMessageBytes, JOBS_QUEUE, startCoordinator } from './coordinator.ts';
export type { Coordinator, CoordinatorKubernetesOptions, CoordinatorOptions } from './coordinator.ts';
export { CoordinatorMetrics, LabelledMetric, RECONFIGURATION_KINDS, RECOVERY_CAUSES, RECOVERY_SECONDS_BUCKETS } from './coordinator-metrics.ts';
export { CHECKPOINT_DATA_FILE, completeCheckpoint, findLatestCheckpoint } from './checkpoint-commit.ts';
export type { CheckpointData, FoundCheckpoint } from './checkpoint-commit.ts';
export {
  COORDINATOR_FLAG_OPTIONS,
  COORDINATOR_SCALERS,
  COORDINATOR_USAGE,
  DEFAULT_MAX_QUEUED_JOBS_PER_CALLER,
  DEFAULT_MAX_SPEC_BYTES,
  MAX_QUEUED_JOBS_PER_CALLER_RANGE,
  MAX_SPEC_BYTES_RANGE,
  resolveCoordinatorConfig,
} from './coordinator-config.ts';
export type { CoordinatorConfig, CoordinatorFlags, CoordinatorKubernetesConfig, CoordinatorScalerKind } from './coordinator-config.ts';
export { JobRunner, RunFailure, hashPrefix, specFormat } from './job-runner.ts';
export type { Generation, JobRunnerContext, ReconfigurationKind, RecoveryCause, RunOutcome } from './job-runner.ts';
export { DEFAULT_PAGE_SIZE, MAX_IDEMPOTENCY_KEY_LENGTH, MAX_PAGE_SIZE, jobService, newJobId } from './job-service.ts';
export type { JobServiceContext, QueuedJobData } from './job-service.ts';
export { JOB_STATE_NAMES, JobKeys, JobStore, MAX_JOB_EVENTS, TERMINAL_STATES, WAITING_STATES, jobStateName, jobStateOf, toWireJob } from './job-store.ts';
export type { CreateResult, JobRecord, JobStateName, PlannedShard, WaitingJobsLimit } from './job-store.ts';
export {
  inClusterKubeConfig,
  KUBERNETES_CALL_TIMEOUT_MS,
  KUBERNETES_OPERATION_TIMEOUT_MS,
  KubernetesScaler,
  kubeConfigFromFile,
  SERVICE_ACCOUNT_DIR,
} from './kubernetes-scaler.ts';
export type { KubernetesScalerOptions, StatefulSetScale } from './kubernetes-scaler.ts';
export { LocalProcessScaler, securityArgs } from './local-process-scaler.ts';
export type { FindWorkerProcesses, LocalProcessScalerOptions, SpawnWorker, SpawnedWorker } from './local-process-scaler.ts';
export { REDIS_RETRY_MS, isTransientRedisError, withRedisRetry } from './redis-retry.ts';
export { encodeLedgerEntry, readSampleLedger, sampleLedgerKey, truncateSampleLedger, verifySampleLedger } from './sample-ledger.ts';
export type { SampleLedgerEntry, SampleLedgerReport } from './sample-ledger.ts';
export { checkManifest, isManifestMissing, manifestMissingMessage } from './manifest-check.ts';
export { NoScaler } from './scaler.ts';
export type { Scaler } from './scaler.ts';
export { LEASE_LOCK_MS, ShardLeases, leaseId, leaseQueueName, obliterateLeaseQueue } from './shard-leases.ts';
export type { LeaseData } from './shard-leases.ts';
export { epochShardOrder, meanRecordBytes, perRankBatch, planShards, shardCount, totalStepsOf } from './shard-plan.ts';
export { ClaimTimeoutError, NO_STATE, WorkerRegistry } from './worker-registry.ts';
export type { HeldState, WorkerSession } from './worker-registry.ts';
