// teacher-sync over real mutual TLS (certificates from createDevCertificates): only callers
// presenting a certificate of the fleet CA get past the handshake.
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import {
  callUnary,
  channelCredentials,
  createClient,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthClient,
  INSECURE,
  loadTlsDir,
  TeacherSyncClient,
  transportSecurityFromFlags,
} from '@dinofleet/proto';
import type { TransportSecurity } from '@dinofleet/proto';
import { createDevCertificates } from '@dinofleet/proto/dev-certificates';
import { createLogger, LogLevel } from '@dinofleet/telemetry';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { startTeacherSync } from './teacher-sync-server.ts';

let root: string;
let fleet: TransportSecurity;
let rogue: TransportSecurity;
let rogueTrustingFleet: TransportSecurity;
let caOnly: TransportSecurity;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'teacher-sync-tls-'));
  await createDevCertificates(join(root, 'fleet'));
  await createDevCertificates(join(root, 'rogue'), { caName: 'rogue CA' });
  await mkdir(join(root, 'ca-only'));
  await copyFile(join(root, 'fleet', 'ca.crt'), join(root, 'ca-only', 'ca.crt'));
  fleet = transportSecurityFromFlags({ tlsDir: join(root, 'fleet') });
  rogue = transportSecurityFromFlags({ tlsDir: join(root, 'rogue') });
  if (fleet.kind !== 'mtls' || rogue.kind !== 'mtls') throw new Error('unreachable: a TLS directory gives mTLS');
  rogueTrustingFleet = { kind: 'mtls', material: { ...rogue.material, ca: fleet.material.ca } };
  caOnly = { kind: 'mtls', material: loadTlsDir(join(root, 'ca-only'), { requireIdentity: false }) };
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('teacher-sync over mutual TLS', () => {
  it('serves a fleet member and refuses a rogue CA, a client without a certificate, and plaintext', async () => {
    await using server = await startTeacherSync({ security: fleet, logger: createLogger({ name: 'teacher-sync', level: LogLevel.Silent }), drainGraceMs: 100 });
    const attest = async (security: TransportSecurity): Promise<number> => {
      const client = createClient(TeacherSyncClient, server.grpcAddress, { credentials: channelCredentials(security) });
      try {
        const request = { jobId: 'tls-job', generation: 1, step: 1, rank: 0, worldSize: 2, sha256: Buffer.alloc(32, 7) };
        return (await callUnary(client, 'attestTeacher', request, { deadlineMs: 5_000 })).ranksAttested;
      } finally {
        client.close();
      }
    };

    expect(await attest(fleet)).toBe(1);
    const refused: Record<string, unknown> = {};
    for (const [name, security] of Object.entries({ rogueTrustingFleet, rogue, caOnly, plaintext: INSECURE })) {
      refused[name] = await attest(security).then(
        () => 'served',
        (err: unknown) => (err as { code?: string }).code,
      );
    }
    expect(refused).toEqual({ rogueTrustingFleet: 'UNAVAILABLE', rogue: 'UNAVAILABLE', caOnly: 'UNAVAILABLE', plaintext: 'UNAVAILABLE' });
    // None of them reached the service: the fleet member's attestation is still the only one.
    expect(await attest(fleet)).toBe(1);

    const health = createClient(HealthClient, server.grpcAddress, { credentials: channelCredentials(fleet) });
    try {
      expect((await callUnary(health, 'check', { service: 'dinofleet.v1.TeacherSync' }, { deadlineMs: 5_000 })).status).toBe(ServingStatus.SERVING);
    } finally {
      health.close();
    }
  });

  it('does not start from a directory with only the CA', async () => {
    await expect(startTeacherSync({ security: caOnly })).rejects.toThrow(/holds only ca\.crt, but a server needs tls\.crt and tls\.key too/);
  });
});
