/**
 * teacher-sync in one object: the gRPC server (TeacherSync + health) and the `/metrics`
 * server, started together and closed together. `main.ts` wraps it in a process; tests
 * run it in-process.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { GrpcServer, InvalidArgumentError, serverCredentials, splitHostPort, TeacherSyncService } from '@dinofleet/proto';
import type { HostPort, TransportSecurity } from '@dinofleet/proto';
import { createLogger, LogLevel, MetricsServer, Registry } from '@dinofleet/telemetry';
import type { Logger } from '@dinofleet/telemetry';

import { CenterStore, DEFAULT_KEPT_CENTERS } from './center-store.ts';
import { DEFAULT_KEPT_SNAPSHOTS, SnapshotStore } from './snapshot-store.ts';
import { createTeacherSyncMetrics } from './teacher-sync-metrics.ts';
import { createTeacherSyncService, DEFAULT_MAX_CENTER_WAIT_MS, DEFAULT_MAX_SNAPSHOT_BYTES } from './teacher-sync-service.ts';

/** Grace period for in-flight calls when teacher-sync closes, in ms (docs/cluster.md). */
export const DEFAULT_DRAIN_GRACE_MS = 10_000;

/** Settings for {@link startTeacherSync}. */
export interface TeacherSyncOptions {
  /**
   * Mutual TLS with the fleet CA (`--tls-dir`: only callers presenting a certificate of it
   * get past the handshake), or `INSECURE` (`--insecure`). Required: nothing defaults to
   * plaintext.
   */
  readonly security: TransportSecurity;
  /** gRPC address "host:port"; port 0 picks a free one. @default "127.0.0.1:0" */
  readonly listen?: string;
  /** `/metrics` and `/healthz` address "host:port"; port 0 picks a free one. @default "127.0.0.1:0" */
  readonly metricsListen?: string;
  /**
   * S3 client for snapshots whose header names a `store_uri`; the caller keeps ownership.
   * @default none: such uploads fail with FAILED_PRECONDITION
   */
  readonly s3?: S3Client;
  /** Logger. @default JSON lines on stderr at `info`, name `teacher-sync` */
  readonly logger?: Logger;
  /** Registry the metrics go to (and `/metrics` serves). @default a new one with Node's default metrics */
  readonly registry?: Registry;
  /** Largest teacher snapshot accepted, in bytes, 1..2^32. @default 1 GiB */
  readonly maxSnapshotBytes?: number;
  /** Centers kept per job, ≥ 1. @default 64 */
  readonly keptCenters?: number;
  /** Teacher snapshots kept in memory per job, ≥ 1. @default 2 */
  readonly keptSnapshots?: number;
  /** Longest one GetCenter waits whatever its deadline, in ms, ≥ 1. @default 600000 */
  readonly maxCenterWaitMs?: number;
  /** How long close() lets in-flight calls finish before cancelling them, in ms. @default 10000 */
  readonly drainGraceMs?: number;
}

/** A running teacher-sync. */
export interface TeacherSyncServer extends AsyncDisposable {
  /** "host:port" of the gRPC server (TeacherSync and grpc.health.v1.Health). */
  readonly grpcAddress: string;
  /** "host:port" of the `/metrics` and `/healthz` HTTP server. */
  readonly metricsAddress: string;
  /** The registry `/metrics` serves. */
  readonly registry: Registry;
  /**
   * Health turns NOT_SERVING, waiting GetCenter calls fail with UNAVAILABLE, WatchCenters
   * streams end, in-flight calls get the drain grace, then both servers stop. Idempotent;
   * runs every step even when one fails.
   */
  close(): Promise<void>;
}

/** Splits "host:port" (IPv6 as "[::1]:port"); throws naming `field` when it is not one. */
export function parseHostPort(value: string, field: string): HostPort {
  const parsed = splitHostPort(value);
  if (parsed === undefined) {
    throw new InvalidArgumentError(`${field} must be host:port (port 0..65535, 0 = any free one), got ${JSON.stringify(value)}`);
  }
  return parsed;
}

function checkRange(value: number, field: string, min: number, max: number): number {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(`${field} must be an integer in [${min}, ${max}], got ${value}`);
  }
  return value;
}

/** Starts teacher-sync and resolves once both servers listen. */
export async function startTeacherSync(options: TeacherSyncOptions): Promise<TeacherSyncServer> {
  const listen = options.listen ?? '127.0.0.1:0';
  parseHostPort(listen, 'listen');
  const metricsListen = parseHostPort(options.metricsListen ?? '127.0.0.1:0', 'metricsListen');
  const maxSnapshotBytes = checkRange(options.maxSnapshotBytes ?? DEFAULT_MAX_SNAPSHOT_BYTES, 'maxSnapshotBytes', 1, 2 ** 32);
  const maxCenterWaitMs = checkRange(options.maxCenterWaitMs ?? DEFAULT_MAX_CENTER_WAIT_MS, 'maxCenterWaitMs', 1, 2 ** 31 - 1);
  const drainGraceMs = checkRange(options.drainGraceMs ?? DEFAULT_DRAIN_GRACE_MS, 'drainGraceMs', 0, 2 ** 31 - 1);
  const logger = options.logger ?? createLogger({ name: 'teacher-sync', level: LogLevel.Info });
  // Workers are its only callers, and they are fleet members: mutual TLS at the handshake.
  const credentials = serverCredentials(options.security, { clientCertificate: 'require' });

  const registry = options.registry ?? new Registry();
  const metricsServer = new MetricsServer({ registry, defaultMetrics: options.registry === undefined });
  const metrics = createTeacherSyncMetrics(registry);
  const centers = new CenterStore({ keptCenters: options.keptCenters ?? DEFAULT_KEPT_CENTERS, logger });
  const snapshots = new SnapshotStore(options.keptSnapshots ?? DEFAULT_KEPT_SNAPSHOTS);
  const grpc = new GrpcServer({ address: listen, credentials });
  grpc.addService(TeacherSyncService, createTeacherSyncService({ centers, snapshots, metrics, logger, s3: options.s3, maxSnapshotBytes, maxCenterWaitMs }));

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      const failures: unknown[] = [];
      // Health goes NOT_SERVING and new calls are refused first; then the waits that
      // no push can end any more are released so the drain does not sit out its grace.
      const grpcClosed = grpc.close(drainGraceMs).catch((err: unknown) => failures.push(err));
      try {
        centers.close();
      } catch (err) {
        failures.push(err);
      }
      await grpcClosed;
      await metricsServer.close().catch((err: unknown) => failures.push(err));
      if (failures.length > 0) throw new AggregateError(failures, 'closing teacher-sync failed');
    })();
    return closing;
  };

  try {
    const bound = await grpc.start();
    const { port } = await metricsServer.start(metricsListen);
    const metricsHost = metricsListen.host.includes(':') ? `[${metricsListen.host}]` : metricsListen.host;
    return {
      grpcAddress: bound.address,
      metricsAddress: `${metricsHost}:${port}`,
      registry,
      close,
      [Symbol.asyncDispose]: close,
    };
  } catch (err) {
    await close().catch(() => undefined);
    throw err;
  }
}
