// What every dinofleet process shares at its edges: the `host:port` flags it listens on
// and the ready file a launcher (`@dinofleet/local`, docs/cluster.md "Processes") waits for.
import { rename, writeFile } from 'node:fs/promises';

/** A `host:port` split into its parts (brackets of an IPv6 host removed). */
export interface HostPort {
  readonly host: string;
  /** 0..65535; 0 asks for any free port when listening. */
  readonly port: number;
}

/**
 * Splits `"host:port"` (IPv6 as `"[::1]:port"`); undefined when `value` is not one (no
 * host, a port that is not 0..65535 in digits). Callers raise their own error naming the flag.
 */
export function splitHostPort(value: string): HostPort | undefined {
  const colon = value.lastIndexOf(':');
  if (colon <= 0) return undefined;
  const rawHost = value.slice(0, colon);
  const portText = value.slice(colon + 1);
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : Number.NaN;
  const host = rawHost.startsWith('[') && rawHost.endsWith(']') ? rawHost.slice(1, -1) : rawHost;
  if (host === '' || !(port >= 0 && port <= 65_535)) return undefined;
  return { host, port };
}

/** The ready file's content: a process serving at these addresses. */
export interface ServiceReadyFile {
  /** Service name (`coordinator`, `worker`, `teacher-sync`). */
  readonly service: string;
  /** OS process id. */
  readonly pid: number;
  /** gRPC `host:port`. */
  readonly grpcAddress: string;
  /** Metrics `host:port`. */
  readonly metricsAddress: string;
}

/** Writes the ready file for this process: aside first, then renamed, so a reader never sees half of it. */
export async function writeReadyFile(path: string, ready: Omit<ServiceReadyFile, 'pid'>): Promise<void> {
  const content: ServiceReadyFile = { service: ready.service, pid: process.pid, grpcAddress: ready.grpcAddress, metricsAddress: ready.metricsAddress };
  await writeFile(`${path}.tmp`, `${JSON.stringify(content)}\n`);
  await rename(`${path}.tmp`, path);
}
