/**
 * @dinofleet/teacher-sync: the running center and the authoritative teacher snapshot
 * (DESIGN.md step 6, docs/cluster.md "teacher-sync"). `main.ts` is the process;
 * {@link startTeacherSync} runs the same server in-process (tests, the local fleet).
 */
export { DEFAULT_DRAIN_GRACE_MS, parseHostPort, startTeacherSync } from './teacher-sync-server.ts';
export type { TeacherSyncOptions, TeacherSyncServer } from './teacher-sync-server.ts';
export {
  DEFAULT_MAX_CENTER_WAIT_MS,
  DEFAULT_MAX_SNAPSHOT_BYTES,
  MAX_SNAPSHOT_CHUNK_BYTES,
  SNAPSHOT_CHUNK_BYTES,
  SNAPSHOT_FORMAT,
} from './teacher-sync-service.ts';
export { CenterStore, DEFAULT_KEPT_CENTERS, MAX_GENERATIONS_PER_STEP, MAX_PENDING_STEPS_PER_JOB } from './center-store.ts';
export type { CenterRecord, CenterStoreOptions, PushResult, TeacherSums } from './center-store.ts';
export { DEFAULT_KEPT_SNAPSHOTS, parseStoreUri, readStoredSnapshot, snapshotObjectKey } from './snapshot-store.ts';
export type { StoredSnapshotQuery, StoreLocation, TeacherSnapshot } from './snapshot-store.ts';
export { resolveTeacherSyncConfig, TEACHER_SYNC_USAGE } from './teacher-sync-config.ts';
export type { TeacherSyncConfig, TeacherSyncFlags } from './teacher-sync-config.ts';
