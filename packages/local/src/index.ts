/**
 * @dinofleet/local: a dinofleet fleet on loopback. Redis and an S3 endpoint as throw-away
 * processes, the services as child processes that report readiness through a ready file,
 * and Fashion-MNIST uploaded into S3 as a manifest-driven dataset. Secure by default: the
 * fleet's own development CA and API tokens (`ensureLocalFleetCredentials`).
 */
export { findRedisServer, pingRedis, RedisNotInstalledError, startRedis, type RedisServer, type RedisServerOptions } from './redis-server.ts';
export { ensureBucket, s3ClientFromEnv, startS3, type S3Server, type S3ServerOptions } from './s3-server.ts';
export {
  DEFAULT_READY_TIMEOUT_MS,
  DEFAULT_STOP_TIMEOUT_MS,
  serviceEntry,
  ServiceStartError,
  spawnService,
  type ServiceExit,
  type ServiceName,
  type ServiceProcess,
  type SpawnServiceOptions,
} from './service-process.ts';
export { startLocalFleet, type LocalFleet, type LocalFleetOptions, type LocalPrometheusOptions, type RestartableService } from './local-fleet.ts';
export {
  ensureLocalFleetCredentials,
  LOCAL_API_TOKENS_FILE_NAME,
  LOCAL_TLS_DIR_NAME,
  LOCAL_TOKEN_FILE_NAMES,
  LOCAL_TOKEN_NAMES,
  type LocalFleetCredentials,
  type LocalFleetTokens,
} from './fleet-credentials.ts';
export {
  DEFAULT_SCRAPE_INTERVAL_SECONDS,
  defaultRulesFile,
  ensurePrometheusInstalled,
  fileSdTargets,
  findPrometheus,
  findPromtool,
  PrometheusNotInstalledError,
  prometheusConfig,
  startPrometheus,
  type MetricsTarget,
  type PrometheusConfigOptions,
  type PrometheusServer,
  type PrometheusServerOptions,
} from './prometheus-server.ts';
export { listWorkerProcesses, type WorkerProcess } from './worker-processes.ts';
export {
  DEFAULT_UPLOAD_CONCURRENCY,
  uploadFashionMnist,
  type UploadedFashionMnist,
  type UploadFashionMnistOptions,
} from './fashion-mnist-upload.ts';
export { findFreePort } from './free-port.ts';
export { findRepoRoot } from './repo-root.ts';
/** The JSON a service writes to `--ready-file` (written by `writeReadyFile` in @dinofleet/proto). */
export type { ServiceReadyFile } from '@dinofleet/proto';
