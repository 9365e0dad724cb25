/**
 * The coordinator process (docs/cluster.md "Processes", "coordinator"):
 * `node --import tsx services/coordinator/src/main.ts [flags]`.
 *
 * Exit codes: 0 after a drained SIGTERM/SIGINT, 2 for a bad flag or an unreachable
 * dependency at start, 130 for a second signal while draining, 1 when the drain fails.
 */
import { parseArgs } from 'node:util';

import { INSECURE_WARNING, loadApiTokens, transportSecurityFromFlags, writeReadyFile } from '@dinofleet/proto';
import type { ApiTokenEntry, TransportSecurity } from '@dinofleet/proto';
import { createLogger } from '@dinofleet/telemetry';

import { COORDINATOR_FLAG_OPTIONS, COORDINATOR_USAGE, resolveCoordinatorConfig } from './coordinator-config.ts';
import type { CoordinatorConfig } from './coordinator-config.ts';
import { startCoordinator } from './coordinator.ts';
import type { Coordinator } from './coordinator.ts';

function exitWithUsageError(message: string): never {
  process.stderr.write(`coordinator: ${message.replaceAll('\n', ' ')}\n`);
  process.exit(2);
}

async function main(): Promise<void> {
  let config: CoordinatorConfig;
  try {
    const { values } = parseArgs({ args: process.argv.slice(2), strict: true, allowPositionals: false, options: COORDINATOR_FLAG_OPTIONS });
    if (values.help === true) {
      process.stdout.write(`${COORDINATOR_USAGE}\n`);
      return;
    }
    config = resolveCoordinatorConfig(values, process.env);
  } catch (err) {
    exitWithUsageError(`${err instanceof Error ? err.message : String(err)}; ${COORDINATOR_USAGE}`);
  }

  // The TLS directory and the tokens file are read here, once; their contents are never
  // logged (messages name the files only).
  let security: TransportSecurity;
  let apiTokens: ApiTokenEntry[] | undefined;
  try {
    security = transportSecurityFromFlags({ tlsDir: config.tlsDir, insecure: config.insecure });
    apiTokens = config.apiTokensFile === undefined ? undefined : loadApiTokens(config.apiTokensFile);
  } catch (err) {
    exitWithUsageError(err instanceof Error ? err.message : String(err));
  }

  const logger = createLogger({ name: 'coordinator', level: config.logLevel });
  if (security.kind === 'insecure') logger.warn(INSECURE_WARNING);
  let coordinator: Coordinator;
  try {
    coordinator = await startCoordinator({
      security,
      ...(apiTokens !== undefined && { apiTokens }),
      maxSpecBytes: config.maxSpecBytes,
      maxQueuedJobsPerCaller: config.maxQueuedJobsPerCaller,
      redisUrl: config.redisUrl,
      redisPrefix: config.redisPrefix,
      teacherSyncAddress: config.teacherSyncAddress,
      listen: config.listen,
      metricsListen: config.metricsListen,
      maxRunningJobs: config.maxRunningJobs,
      scaler: config.scaler,
      ...(config.kubernetes !== undefined && {
        kubernetes: {
          statefulSet: config.kubernetes.statefulSet,
          namespace: config.kubernetes.namespace,
          ...(config.kubernetes.kubeconfigPath !== undefined && { kubeconfigPath: config.kubernetes.kubeconfigPath }),
        },
      }),
      initialWorkers: config.initialWorkers,
      workerBackend: config.workerBackend,
      ...(config.workerLogDir !== undefined && { workerLogDir: config.workerLogDir }),
      workerWaitSeconds: config.workerWaitSeconds,
      heartbeatTimeoutSeconds: config.heartbeatTimeoutSeconds,
      logger,
    });
  } catch (err) {
    exitWithUsageError(`cannot start: ${err instanceof Error ? err.message : String(err)}`);
  }
  const running = coordinator;

  let draining = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (draining) {
      logger.warn('second signal while draining: exiting now', { signal });
      process.exit(130);
    }
    draining = true;
    logger.info('draining', { signal });
    running.close().then(
      () => {
        logger.info('stopped');
        process.exit(0);
      },
      (err: unknown) => {
        logger.error('drain failed', { err });
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);

  if (config.readyFile !== undefined) await writeReadyFile(config.readyFile, { service: 'coordinator', grpcAddress: running.grpcAddress, metricsAddress: running.metricsAddress });
}

main().catch((err: unknown) => {
  process.stderr.write(`coordinator: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
