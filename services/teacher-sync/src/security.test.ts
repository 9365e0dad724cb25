// teacher-sync over real mutual TLS (certificates from createDevCertificates): only callers
// presenting a certificate of the fleet CA get past the handshake.
import {
  callUnary,
  channelCredentials,
  createClient,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthClient,
  INSECURE,
  TeacherSyncClient,
} from '@dinofleet/proto';
import type { TransportSecurity } from '@dinofleet/proto';
import { createTestCertificates, type TestCertificates } from '@dinofleet/proto/dev-certificates';
import { createLogger, LogLevel } from '@dinofleet/telemetry';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { startTeacherSync } from './teacher-sync-server.ts';

let certs: TestCertificates;
let fleet: TransportSecurity;
let rogue: TransportSecurity;
let rogueTrustingFleet: TransportSecurity;
let caOnly: TransportSecurity;

beforeAll(async () => {
  certs = await createTestCertificates('teacher-sync-tls-');
  ({ fleet, rogue, rogueTrustingFleet, caOnly } = certs);
});

afterAll(async () => {
  await certs.close();
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
