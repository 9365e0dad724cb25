/**
 * The worker under mutual TLS (docs/security.md): its one gRPC server (Collective,
 * StateTransfer, health) and its data listener accept fleet members only, and it presents
 * its own certificate to the coordinator (whose WorkerControl checks it) and to the rank it
 * fetches state from.
 */
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CollectiveExchangeClient } from '@dinofleet/collective';
import { initComputeBackend } from '@dinofleet/compute';
import {
  HealthCheckResponse_ServingStatus,
  HealthClient,
  INSECURE,
  callUnary,
  channelCredentials,
  createClient,
  dataLinkTlsOptions,
  isDinofleetError,
} from '@dinofleet/proto';
import type { TransportSecurity } from '@dinofleet/proto';
import { createTestCertificates, type TestCertificates } from '@dinofleet/proto/dev-certificates';
import { LogLevel, createLogger } from '@dinofleet/telemetry';
import { MemoryBatchSource } from './batch-loader.ts';
import { startWorker } from './index.ts';
import type { WorkerProcess } from './index.ts';
import { fetchState } from './state-transfer.ts';
import { startFakeCoordinator } from './testing/fake-coordinator.ts';
import type { FakeCoordinator } from './testing/fake-coordinator.ts';

let certs: TestCertificates;
let fleet: TransportSecurity & { kind: 'mtls' };
/** A certificate of another CA, from a client that trusts the fleet's (public) CA certificate. */
let rogue: TransportSecurity & { kind: 'mtls' };
/** The fleet CA, but no certificate of its own. */
let caOnly: TransportSecurity;
let coordinator: FakeCoordinator;
let worker: WorkerProcess;
const logLines: string[] = [];

beforeAll(async () => {
  certs = await createTestCertificates('dinofleet-worker-tls-');
  ({ fleet, caOnly } = certs);
  rogue = certs.rogueTrustingFleet;
  await initComputeBackend('cpu');
  coordinator = await startFakeCoordinator(
    1,
    { jobId: 'never', specJson: '{}', globalBatch: 1, totalSteps: 1, teacherSyncAddress: '', manifestUri: 's3://b/m', autoAssign: false },
    { security: fleet },
  );
  worker = await startWorker({
    coordinatorAddress: coordinator.address,
    security: fleet,
    workerId: 'tls-worker',
    backend: 'cpu',
    logger: createLogger({ name: 'worker-tls-test', level: LogLevel.Warn, stream: { write: (line: string) => logLines.push(line) } }),
    batchSource: () => new MemoryBatchSource([], 1),
  });
}, 60_000);

afterAll(async () => {
  await worker?.close();
  await coordinator?.close();
  await certs?.close();
});

async function healthAs(security: TransportSecurity, service: string): Promise<string> {
  const health = createClient(HealthClient, worker.collectiveAddress, { credentials: channelCredentials(security) });
  try {
    const response = await callUnary(health, 'check', { service }, { deadlineMs: 5_000 });
    return response.status === HealthCheckResponse_ServingStatus.SERVING ? 'SERVING' : String(response.status);
  } catch (err) {
    return isDinofleetError(err) ? err.code : String(err);
  } finally {
    health.close();
  }
}

describe('a worker started with --tls-dir', () => {
  it('registers with a coordinator that admits fleet members only', async () => {
    await expect.poll(() => coordinator.registers.map((r) => r.workerId), { timeout: 10_000 }).toContain('tls-worker');
  });

  it('serves a client with a fleet certificate and refuses one without (foreign CA, none, plaintext)', async () => {
    expect(await healthAs(fleet, 'dinofleet.v1.Collective')).toBe('SERVING');
    expect(await healthAs(fleet, 'dinofleet.v1.StateTransfer')).toBe('SERVING');
    for (const security of [rogue, caOnly, INSECURE]) {
      expect(await healthAs(security, 'dinofleet.v1.Collective')).toBe('UNAVAILABLE');
    }
    // StateTransfer: a fleet member reaches the worker (which holds no state to give), a
    // rogue never does.
    const fetchAs = (security: TransportSecurity) =>
      fetchState({ address: worker.collectiveAddress, jobId: 'j', step: 1, workerId: 'asker', security, deadlineMs: 1_500 }).then(
        () => 'fetched',
        (err: unknown) => (err instanceof Error ? err.message : String(err)),
      );
    expect(await fetchAs(fleet)).toMatch(/worker tls-worker holds no state of job j/);
    expect(await fetchAs(rogue)).not.toMatch(/holds no state/);
  });

  it('drops a data link from a certificate of another CA at the handshake, and logs it without the token', async () => {
    const client = createClient(CollectiveExchangeClient, worker.collectiveAddress, { credentials: channelCredentials(fleet) });
    let port: number;
    let token: Uint8Array;
    try {
      ({ port, token } = await callUnary(client, 'openDataLink', { jobId: 'j', generation: 1, senderRank: 0, receiverRank: 1 }, { deadlineMs: 5_000 }));
    } finally {
      client.close();
    }
    const socket = tls.connect({ ...dataLinkTlsOptions(rogue.material), host: '127.0.0.1', port });
    const ended = new Promise<string>((resolve) => {
      socket.once('error', (err: Error) => resolve(err.message));
      socket.once('close', () => resolve('closed'));
    });
    socket.once('secureConnect', () => socket.write(Buffer.concat([Buffer.from('hello with a stolen token '), token])));
    expect(await ended).toBeTruthy();
    await expect.poll(() => logLines.filter((line) => line.includes('data link refused')).length, { timeout: 5_000 }).toBeGreaterThanOrEqual(1);
    const line = JSON.parse(logLines.find((l) => l.includes('data link refused')) as string) as Record<string, unknown>;
    expect(line).toMatchObject({ level: 'warn', stage: 'handshake', reason: expect.stringMatching(/client certificate refused/) as unknown });
    expect(line.remoteAddress).toMatch(/^127\.0\.0\.1:\d+$/);
    const text = logLines.join('\n');
    expect(text).not.toContain(Buffer.from(token).toString('hex'));
    expect(text).not.toContain(Buffer.from(token).toString('base64'));
    expect(text).not.toMatch(/PRIVATE KEY/);
  });
});
