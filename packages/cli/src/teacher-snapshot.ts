/**
 * Downloading a teacher snapshot from teacher-sync (GetTeacherSnapshot: a header, then
 * chunks in order) and checking it against the header's size and SHA-256.
 */
import { createHash } from 'node:crypto';

import { Metadata } from '@grpc/grpc-js';
import { DataLossError, fromServiceError } from '@dinofleet/proto';
import type { GetTeacherSnapshotResponse, TeacherSnapshotHeader, TeacherSyncClient } from '@dinofleet/proto';

import { SNAPSHOT_DEADLINE_MS } from './deadlines.ts';

/** A verified snapshot. */
export interface TeacherSnapshot {
  /** The header teacher-sync sent. */
  readonly header: TeacherSnapshotHeader;
  /** The snapshot bytes (safetensors), size and SHA-256 checked. */
  readonly bytes: Uint8Array;
}

/** Options of {@link fetchTeacherSnapshot}. */
export interface FetchTeacherSnapshotOptions {
  /** Step of the snapshot; 0 for the latest. @default 0 */
  readonly step?: number;
  /** Deadline of the whole download, ms. @default 120000 */
  readonly deadlineMs?: number;
}

/**
 * Streams the teacher snapshot of `jobId`. Rejects with the call's error (NOT_FOUND when
 * teacher-sync has none) or {@link DataLossError} when the bytes do not match the header.
 */
export function fetchTeacherSnapshot(client: TeacherSyncClient, jobId: string, options: FetchTeacherSnapshotOptions = {}): Promise<TeacherSnapshot> {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + (options.deadlineMs ?? SNAPSHOT_DEADLINE_MS));
    const call = client.getTeacherSnapshot({ jobId, step: options.step ?? 0 }, new Metadata(), { deadline });
    let header: TeacherSnapshotHeader | undefined;
    let bytes: Uint8Array | undefined;
    let received = 0;
    const hash = createHash('sha256');
    let failed = false;
    const fail = (error: Error): void => {
      if (failed) return;
      failed = true;
      call.cancel();
      reject(error);
    };
    call.on('data', (message: GetTeacherSnapshotResponse) => {
      const part = message.part;
      if (part === undefined || failed) return;
      if (part.$case === 'header') {
        if (header !== undefined) return fail(new DataLossError('teacher snapshot stream sent a second header'));
        header = part.header;
        bytes = new Uint8Array(header.sizeBytes);
        return undefined;
      }
      const { offset, data } = part.chunk;
      if (header === undefined || bytes === undefined) return fail(new DataLossError('teacher snapshot stream sent data before its header'));
      if (offset !== received) return fail(new DataLossError(`teacher snapshot chunk at offset ${offset}, expected ${received}`));
      if (received + data.length > bytes.length) {
        return fail(new DataLossError(`teacher snapshot is larger than the ${header.sizeBytes} bytes its header announced`));
      }
      bytes.set(data, received);
      hash.update(data);
      received += data.length;
      return undefined;
    });
    call.on('error', (error: Error) => {
      if (!failed) {
        failed = true;
        reject(fromServiceError(error));
      }
    });
    call.on('end', () => {
      if (failed) return;
      if (header === undefined || bytes === undefined) return fail(new DataLossError('teacher snapshot stream ended without a header'));
      if (received !== header.sizeBytes) {
        return fail(new DataLossError(`teacher snapshot has ${received} bytes, its header announced ${header.sizeBytes}`));
      }
      const digest = hash.digest();
      if (!digest.equals(Buffer.from(header.sha256))) {
        return fail(
          new DataLossError(`teacher snapshot SHA-256 ${digest.toString('hex')} does not match its header's ${Buffer.from(header.sha256).toString('hex')}`),
        );
      }
      resolve({ header, bytes });
      return undefined;
    });
  });
}
