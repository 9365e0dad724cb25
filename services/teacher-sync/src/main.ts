/**
 * The teacher-sync process (docs/cluster.md, "Processes"):
 * `node --import tsx services/teacher-sync/src/main.ts [flags]`.
 *
 * Exit codes: 0 after a drained SIGTERM/SIGINT, 2 for a bad flag or setting, 130 for a
 * second signal while draining, 1 when start-up or the drain fails otherwise.
 */
import { parseArgs } from 'node:util';

import { createS3Client, describeS3Config, resolveS3Config } from '@dinofleet/data';
import { INSECURE_WARNING, transportSecurityFromFlags, writeReadyFile } from '@dinofleet/proto';
import type { TransportSecurity } from '@dinofleet/proto';
import { createLogger } from '@dinofleet/telemetry';

import { resolveTeacherSyncConfig, TEACHER_SYNC_USAGE } from './teacher-sync-config.ts';
import type { TeacherSyncConfig } from './teacher-sync-config.ts';
import { startTeacherSync } from './teacher-sync-server.ts';

function exitWithUsageError(message: string): never {
  process.stderr.write(`teacher-sync: ${message.replaceAll('\n', ' ')}\n`);
  process.exit(2);
}

async function main(): Promise<void> {
  let config: TeacherSyncConfig;
  try {
    const { values } = parseArgs({
      args: process.argv.slice(2),
      strict: true,
      allowPositionals: false,
      options: {
        listen: { type: 'string' },
        'metrics-listen': { type: 'string' },
        'ready-file': { type: 'string' },
        'log-level': { type: 'string' },
        'max-snapshot-bytes': { type: 'string' },
        'tls-dir': { type: 'string' },
        insecure: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
    if (values.help === true) {
      process.stdout.write(`${TEACHER_SYNC_USAGE}\n`);
      return;
    }
    config = resolveTeacherSyncConfig(values, process.env);
  } catch (err) {
    exitWithUsageError(`${err instanceof Error ? err.message : String(err)}; ${TEACHER_SYNC_USAGE}`);
  }

  // Read once here; messages name the files, never their contents.
  let security: TransportSecurity;
  try {
    security = transportSecurityFromFlags({ tlsDir: config.tlsDir, insecure: config.insecure });
  } catch (err) {
    exitWithUsageError(err instanceof Error ? err.message : String(err));
  }

  const logger = createLogger({ name: 'teacher-sync', level: config.logLevel });
  if (security.kind === 'insecure') logger.warn(INSECURE_WARNING);
  let s3Config;
  try {
    s3Config = resolveS3Config();
  } catch (err) {
    exitWithUsageError(`${err instanceof Error ? err.message : String(err)} (fix the S3 environment variables)`);
  }
  const s3 = createS3Client(s3Config);

  let server;
  try {
    server = await startTeacherSync({
      security,
      listen: config.listen,
      metricsListen: config.metricsListen,
      maxSnapshotBytes: config.maxSnapshotBytes,
      s3,
      logger,
    });
  } catch (err) {
    s3.destroy();
    exitWithUsageError(`cannot start: ${err instanceof Error ? err.message : String(err)} (is the address free and valid?)`);
  }
  const running = server;

  let draining = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (draining) {
      logger.warn('second signal while draining: exiting now', { signal });
      process.exit(130);
    }
    draining = true;
    logger.info('draining', { signal });
    running
      .close()
      .then(
        () => {
          logger.info('stopped');
          return 0;
        },
        (err: unknown) => {
          logger.error('drain failed', { err });
          return 1;
        },
      )
      .then((code) => {
        s3.destroy();
        process.exit(code);
      }, () => process.exit(1));
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);

  if (config.readyFile !== undefined) await writeReadyFile(config.readyFile, { service: 'teacher-sync', grpcAddress: running.grpcAddress, metricsAddress: running.metricsAddress });
  logger.info('serving', {
    grpcAddress: running.grpcAddress,
    metricsAddress: running.metricsAddress,
    s3: describeS3Config(s3Config),
    maxSnapshotBytes: config.maxSnapshotBytes,
    security: security.kind,
  });
}

main().catch((err: unknown) => {
  process.stderr.write(`teacher-sync: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
