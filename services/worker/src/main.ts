/**
 * The worker process: `node --import tsx services/worker/src/main.ts --coordinator host:port
 * --tls-dir dir` (or `--insecure`; flags in docs/cluster.md). Serves Collective and health on
 * `--listen`, `/metrics` on `--metrics-listen`, holds the Control stream. On SIGTERM (or SIGINT) it leaves
 * gracefully: `Leaving{graceful}`, the step in progress runs until its ack, then it waits
 * for the coordinator's Stop (at most 30 s), drains and exits 0; a second signal exits 130
 * at once (docs/cluster.md, worker item 7).
 */
import { hostname } from 'node:os';
import { COLLECTIVE_EXCHANGE_DEFINITION } from '@dinofleet/collective';
import { createS3Client } from '@dinofleet/data';
import { INSECURE_WARNING, serviceNameOf, writeReadyFile } from '@dinofleet/proto';
import { MetricsServer, Registry, createLogger } from '@dinofleet/telemetry';
import { GRACEFUL_LEAVE_TIMEOUT_MS, startWorker } from './index.ts';
import { WORKER_USAGE, WorkerConfigError, parseHostPort, resolveWorkerConfig, resolveWorkerS3Config } from './worker-config.ts';

/** Grace period of the shutdown after the graceful leave, in ms. */
const DRAIN_GRACE_MS = 10_000;

async function main(): Promise<void> {
  let config;
  let s3;
  try {
    config = resolveWorkerConfig(process.argv.slice(2), process.env, `${hostname()}-${process.pid}`);
    s3 = createS3Client(resolveWorkerS3Config());
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`worker: ${message}\n${err instanceof WorkerConfigError ? `${WORKER_USAGE}\n` : 'check the DINOFLEET_S3_* / AWS_* environment\n'}`);
    process.exit(2);
  }
  const logger = createLogger({ name: 'worker', level: config.logLevel, fields: { workerId: config.workerId } });
  if (config.security.kind === 'insecure') logger.warn(INSECURE_WARNING);
  const registry = new Registry();
  const metrics = new MetricsServer({ registry, defaultMetrics: true });
  const metricsAddress = parseHostPort(config.metricsListen, 'metrics-listen');
  let worker;
  let metricsPort: number;
  try {
    metricsPort = (await metrics.start({ host: metricsAddress.host, port: metricsAddress.port })).port;
    worker = await startWorker({
      coordinatorAddress: config.coordinator,
      security: config.security,
      workerId: config.workerId,
      listen: config.listen,
      dataListen: config.dataListen,
      advertiseHost: config.advertiseHost,
      backend: config.backend,
      fetchConcurrency: config.fetchConcurrency,
      loaderThreads: config.loaderThreads,
      prefetchBytes: config.prefetchBytes,
      s3,
      registry,
      logger,
    });
  } catch (err) {
    process.stderr.write(`worker: could not start: ${err instanceof Error ? err.message : String(err)}\n`);
    await metrics.close().catch(() => undefined);
    process.exit(2);
  }
  const running = worker;

  let shuttingDown = false;
  const shutdown = (signal: string): void => {
    if (shuttingDown) {
      process.exit(130);
    }
    shuttingDown = true;
    logger.info('shutting down', { signal });
    const reason = signal === 'SIGTERM' ? 'sigterm' : signal.toLowerCase();
    const force = setTimeout(() => {
      logger.warn('leaving and draining took too long; exiting', { graceMs: GRACEFUL_LEAVE_TIMEOUT_MS + DRAIN_GRACE_MS });
      process.exit(0);
    }, GRACEFUL_LEAVE_TIMEOUT_MS + DRAIN_GRACE_MS);
    force.unref();
    void (async () => {
      // The step in progress finishes and commits; the Collective server keeps serving
      // until then (the ring needs it), and so does StateTransfer.
      const stopped = await running.worker.leave(reason, GRACEFUL_LEAVE_TIMEOUT_MS);
      if (!stopped) logger.warn('no Stop after the graceful Leaving; leaving anyway', { waitedMs: GRACEFUL_LEAVE_TIMEOUT_MS });
      // Probes and peers see NOT_SERVING while the worker drains.
      running.server.setServing('', false);
      running.server.setServing(serviceNameOf(COLLECTIVE_EXCHANGE_DEFINITION), false);
      await running.close(reason).catch((err: unknown) => logger.warn('close failed', { err }));
      await metrics.close().catch(() => undefined);
      s3.destroy();
      process.exit(0);
    })();
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));

  const grpcAddress = running.collectiveAddress;
  const metricsHost = metricsAddress.host;
  logger.info('serving', { grpcAddress, metricsAddress: `${metricsHost}:${metricsPort}`, backend: config.backend });
  if (config.readyFile !== null) {
    await writeReadyFile(config.readyFile, {
      service: 'worker',
      grpcAddress,
      metricsAddress: `${metricsHost}:${metricsPort}`,
    });
  }
}

await main();
