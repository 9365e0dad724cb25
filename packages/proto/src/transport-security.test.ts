import { mkdtemp, readFile, rm, stat, writeFile, copyFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, createServer as createTlsServer } from 'node:tls';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callUnary, createClient } from './client.ts';
import { createDevCertificates, hasTlsDir } from './dev-certificates.ts';
import { GetJobResponse, JobServiceClient, JobServiceService } from './generated/dinofleet/v1/jobs.ts';
import { unaryHandler } from './handlers.ts';
import { GrpcServer } from './server.ts';
import { disposable, jobServiceStub } from './test-fixtures.ts';
import {
  channelCredentials,
  dataLinkTlsOptions,
  INSECURE,
  isFleetPeer,
  loadTlsDir,
  serverCredentials,
  TlsConfigError,
  transportSecurityFromFlags,
  type TransportSecurity,
} from './transport-security.ts';

let root: string;
let fleet: TransportSecurity;
let rogue: TransportSecurity;
let caOnly: TransportSecurity;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'dinofleet-tls-test-'));
  await createDevCertificates(join(root, 'fleet'));
  await createDevCertificates(join(root, 'rogue'), { caName: 'rogue CA' });
  await mkdir(join(root, 'ca-only'));
  await copyFile(join(root, 'fleet', 'ca.crt'), join(root, 'ca-only', 'ca.crt'));
  fleet = transportSecurityFromFlags({ tlsDir: join(root, 'fleet') });
  rogue = transportSecurityFromFlags({ tlsDir: join(root, 'rogue') });
  caOnly = { kind: 'mtls', material: loadTlsDir(join(root, 'ca-only'), { requireIdentity: false }) };
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function serve(security: TransportSecurity, clientCertificate: 'require' | 'request', onCall?: (fleetPeer: boolean) => void): Promise<GrpcServer> {
  const server = new GrpcServer({ credentials: serverCredentials(security, { clientCertificate }) }).addService(
    JobServiceService,
    jobServiceStub({
      getJob: unaryHandler((_req, call) => {
        onCall?.(isFleetPeer(call, security));
        return Promise.resolve(GetJobResponse.fromPartial({}));
      }),
    }),
  );
  await server.start();
  return server;
}

function getJob(address: string, security: TransportSecurity): Promise<unknown> {
  const client = disposable(createClient(JobServiceClient, address, { credentials: channelCredentials(security) }));
  return callUnary(client, 'getJob', { jobId: 'x' }, { deadlineMs: 3000 }).finally(() => client.close());
}

describe('dinofleet certs', () => {
  it('writes a CA and a fleet certificate that loadTlsDir accepts, keys mode 0600, and refuses to overwrite', async () => {
    const dir = join(root, 'fleet');
    expect(await hasTlsDir(dir)).toBe(true);
    expect((await stat(join(dir, 'tls.key'))).mode & 0o777).toBe(0o600);
    expect((await stat(join(dir, 'ca.key'))).mode & 0o777).toBe(0o600);
    const material = loadTlsDir(dir);
    expect(material.caCerts).toHaveLength(1);
    await expect(createDevCertificates(dir)).rejects.toThrow(/exists; pass --force/);
    await expect(createDevCertificates(join(root, 'bad-host'), { hosts: ['not a host'] })).rejects.toThrow(/neither an IP address nor a DNS name/);
  });
});

describe('loadTlsDir', () => {
  it('names the missing file and how to get one', () => {
    expect(() => loadTlsDir(join(root, 'nowhere'))).toThrow(/ca\.crt does not exist; create development certificates with `dinofleet certs/);
    expect(() => transportSecurityFromFlags({})).toThrow(/pass --tls-dir DIR .* or --insecure/);
    expect(() => transportSecurityFromFlags({ tlsDir: join(root, 'fleet'), insecure: true })).toThrow(/exclude each other/);
    expect(transportSecurityFromFlags({ insecure: true })).toBe(INSECURE);
  });

  it('refuses a certificate of another CA, a key of another certificate, and non-PEM files, without printing key material', async () => {
    const mixed = join(root, 'mixed');
    await mkdir(mixed, { recursive: true });
    await copyFile(join(root, 'fleet', 'ca.crt'), join(mixed, 'ca.crt'));
    await copyFile(join(root, 'rogue', 'tls.crt'), join(mixed, 'tls.crt'));
    await copyFile(join(root, 'rogue', 'tls.key'), join(mixed, 'tls.key'));
    expect(() => loadTlsDir(mixed)).toThrow(/was not issued by the CA in/);
    await copyFile(join(root, 'fleet', 'tls.crt'), join(mixed, 'tls.crt'));
    const key = await readFile(join(mixed, 'tls.key'), 'utf8');
    let message = '';
    try {
      loadTlsDir(mixed);
    } catch (err) {
      expect(err).toBeInstanceOf(TlsConfigError);
      message = (err as Error).message;
    }
    expect(message).toMatch(/does not belong to certificate/);
    expect(message).not.toContain(key.split('\n')[1]);
    await writeFile(join(mixed, 'tls.key'), 'hello');
    expect(() => loadTlsDir(mixed)).toThrow(/is not PEM/);
  });
});

describe('mutual TLS on gRPC', () => {
  it('serves a fleet member and refuses plaintext, a client of another CA, and a client without a certificate', async () => {
    await using server = await serve(fleet, 'require');
    const { address } = await server.start();
    await expect(getJob(address, fleet)).resolves.toBeDefined();
    await expect(getJob(address, INSECURE)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    await expect(getJob(address, rogue)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    await expect(getJob(address, caOnly)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
  });

  it('in request mode lets clients without a fleet certificate in and tells the handler who is a fleet peer', async () => {
    const seen: boolean[] = [];
    await using server = await serve(fleet, 'request', (peer) => seen.push(peer));
    const { address } = await server.start();
    await getJob(address, fleet);
    await getJob(address, caOnly);
    // A rogue that trusts our CA gets in (the port serves the token-guarded job API) but is no fleet peer.
    if (rogue.kind !== 'mtls' || fleet.kind !== 'mtls') throw new Error('unreachable');
    await getJob(address, { kind: 'mtls', material: { ...rogue.material, ca: fleet.material.ca } });
    expect(seen).toEqual([true, false, false]);
    // A client that does not trust the server's CA cannot connect at all.
    await expect(getJob(address, rogue)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
  });
});

describe('data link TLS options', () => {
  it('connect fleet members and refuse a peer of another CA', async () => {
    const material = fleet.kind === 'mtls' ? fleet.material : undefined;
    const rogueMaterial = rogue.kind === 'mtls' ? rogue.material : undefined;
    let served = 0;
    const server = createTlsServer(dataLinkTlsOptions(material!), (socket) => {
      served += 1;
      socket.end('ok');
    });
    server.on('tlsClientError', () => undefined);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    // Resolves with what the server sent, '' when it dropped the connection after the
    // client's half of a TLS 1.3 handshake, or rejects when the client refused the server.
    const talk = (m: typeof material, ca = m!.ca): Promise<string> =>
      new Promise((resolve, reject) => {
        const socket = tlsConnect({ ...dataLinkTlsOptions(m!), ca, host: '127.0.0.1', port });
        let text = '';
        socket.on('data', (d: Buffer) => (text += d.toString()));
        socket.on('close', () => resolve(text));
        socket.on('error', reject);
      });
    try {
      expect(await talk(material)).toBe('ok');
      // A rogue that trusts our CA still presents its own certificate: the server drops it.
      expect(await talk(rogueMaterial, material!.ca).catch(() => 'refused')).not.toBe('ok');
      // One that trusts only its own CA refuses our server.
      await expect(talk(rogueMaterial)).rejects.toThrow(/self-signed|unable to verify|certificate/i);
      expect(served).toBe(1);
    } finally {
      server.close();
    }
  });
});
