/**
 * Metrics and structured logs for every dinofleet process: a `/metrics` server over one
 * prom-client registry per process, the training-level metrics (learning and collapse), and
 * a JSON-lines logger that redacts secrets.
 */
export { MetricsServer } from './metrics-server.ts';
export type { MetricsListenOptions, MetricsServerOptions } from './metrics-server.ts';
export { IMAGE_SECONDS_BUCKETS, LOSS_PARTS, STEP_DURATION_BUCKETS_SECONDS, SkipReason, StepPhase, createTrainingMetrics } from './training-metrics.ts';
export type { LossPart, StepExtra, StepMetricsLike, TrainingMetrics, TrainingMetricsLabels } from './training-metrics.ts';
export { LogLevel, createLogger } from './logger.ts';
export type { LogFields, LogSink, Logger, LoggerOptions } from './logger.ts';
export { MAX_LOG_DEPTH, REDACTED, isSecretFieldName, maskSecrets, toLoggable } from './redact.ts';
export type { Loggable } from './redact.ts';
export { Counter, Gauge, Histogram, Registry } from 'prom-client';
