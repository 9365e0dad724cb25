/**
 * teacher-sync's Prometheus series (names fixed by docs/cluster.md, "Metrics").
 */
import { Counter, Gauge } from 'prom-client';
import type { Registry } from 'prom-client';

/** The counters and gauges teacher-sync updates. */
export interface TeacherSyncMetrics {
  /** Accepted PushTeacherSums calls (repeats and ignored pushes included). */
  readonly pushes: Counter;
  /** Centers computed. */
  readonly centers: Counter;
  /** PushTeacherSums calls refused with ABORTED: a newer generation had pushed the step. */
  readonly stalePushes: Counter;
  /** Teacher snapshots verified and stored. */
  readonly snapshots: Counter;
  /** Size of the latest stored teacher snapshot, in bytes. */
  readonly snapshotBytes: Gauge;
  /** Accepted AttestTeacher calls (repeats and ignored ones included). */
  readonly attestations: Counter;
  /** Snapshots every rank of a generation attested the hash of. */
  readonly snapshotsVerified: Counter;
  /** Snapshots rejected because an attested hash differed. */
  readonly snapshotMismatches: Counter;
}

/** Registers teacher-sync's series on `registry`. */
export function createTeacherSyncMetrics(registry: Registry): TeacherSyncMetrics {
  return {
    pushes: new Counter({
      name: 'dinofleet_teacher_sync_pushes_total',
      help: 'PushTeacherSums calls accepted (repeated and ignored pushes included).',
      registers: [registry],
    }),
    centers: new Counter({
      name: 'dinofleet_teacher_sync_centers_total',
      help: 'Centers computed from the complete sums of a step.',
      registers: [registry],
    }),
    stalePushes: new Counter({
      name: 'dinofleet_teacher_sync_stale_pushes_total',
      help: 'PushTeacherSums calls refused with ABORTED because a newer generation had pushed the same step.',
      registers: [registry],
    }),
    snapshots: new Counter({
      name: 'dinofleet_teacher_sync_snapshots_total',
      help: 'Teacher snapshots received, verified and stored.',
      registers: [registry],
    }),
    snapshotBytes: new Gauge({
      name: 'dinofleet_teacher_sync_snapshot_bytes',
      help: 'Size of the latest stored teacher snapshot, in bytes.',
      registers: [registry],
    }),
    attestations: new Counter({
      name: 'dinofleet_teacher_sync_attestations_total',
      help: 'AttestTeacher calls accepted (repeated and ignored attestations included).',
      registers: [registry],
    }),
    snapshotsVerified: new Counter({
      name: 'dinofleet_teacher_sync_snapshots_verified_total',
      help: 'Teacher snapshots whose SHA-256 every rank of a generation attested.',
      registers: [registry],
    }),
    snapshotMismatches: new Counter({
      name: 'dinofleet_teacher_sync_snapshot_mismatches_total',
      help: 'Teacher snapshots rejected because a rank attested another SHA-256.',
      registers: [registry],
    }),
  };
}
