/**
 * What one loopback TCP connection between two Node processes carries: the ceiling for
 * any Node collective on this machine, reported next to the all-reduce figures.
 *
 * The parent starts this file as a child (`--sink <bytes>`), which listens on
 * 127.0.0.1:0 and prints {"port"}; the parent connects and writes 1 GiB in 1 MiB writes
 * of one reused Buffer, waiting for 'drain'; the sink counts bytes and prints
 * {"bytes","seconds"} from its first byte to its last.
 */
import { connect, createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { awaitChildren, startChild } from './child-run.ts';

const THIS_FILE = fileURLToPath(import.meta.url);
const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const TOTAL_BYTES = 1024 ** 3;
const WRITE_BYTES = 1024 ** 2;
const TIMEOUT_MS = 120_000;

/** The sink side: counts `total` bytes on one connection, then reports and exits. */
function runSink(total: number): void {
  const server = createServer((socket) => {
    let received = 0;
    let firstByteAt = 0;
    socket.on('data', (chunk: Buffer) => {
      if (received === 0) firstByteAt = performance.now();
      received += chunk.length;
      if (received >= total) {
        const seconds = (performance.now() - firstByteAt) / 1000;
        process.stdout.write(`${JSON.stringify({ bytes: received, seconds })}\n`);
        process.exit(0);
      }
    });
  });
  server.listen(0, '127.0.0.1', () => {
    process.stdout.write(`${JSON.stringify({ port: (server.address() as AddressInfo).port })}\n`);
  });
}

/** Writes `total` bytes to port, one reused 1 MiB buffer at a time, honouring backpressure. */
function writeAll(port: number, total: number): Promise<void> {
  return new Promise((resolveWrite, reject) => {
    const buffer = Buffer.alloc(WRITE_BYTES, 0x5a);
    const socket = connect(port, '127.0.0.1');
    socket.on('error', reject);
    let sent = 0;
    const pump = (): void => {
      while (sent < total) {
        sent += buffer.length;
        if (!socket.write(buffer)) {
          socket.once('drain', pump);
          return;
        }
      }
      socket.end(() => resolveWrite());
    };
    socket.once('connect', pump);
  });
}

/** One sender/sink pair; GB/s (10^9 bytes/s) as the sink measured it. */
async function measureOnce(): Promise<number> {
  let announcePort: (port: number) => void = () => undefined;
  const port = new Promise<number>((resolvePort) => {
    announcePort = resolvePort;
  });
  let gbps: number | undefined;
  const sink = startChild('raw-socket sink', process.execPath, ['--import', 'tsx', THIS_FILE, '--sink', String(TOTAL_BYTES)], {
    cwd: REPO_ROOT,
    onStdoutLine(line) {
      const message = JSON.parse(line) as { port?: unknown; bytes?: unknown; seconds?: unknown };
      if (typeof message.port === 'number') {
        announcePort(message.port);
      } else if (typeof message.bytes === 'number' && typeof message.seconds === 'number') {
        gbps = message.bytes / message.seconds / 1e9;
      } else {
        throw new Error(`unexpected line ${line.slice(0, 200)}`);
      }
    },
  });
  const sinkDone = awaitChildren([sink], TIMEOUT_MS, 'the raw-socket measurement');
  const sinkGone = sinkDone.then(() => Promise.reject(new Error('the raw-socket sink exited before listening')));
  try {
    await Promise.all([Promise.race([port, sinkGone]).then((p) => writeAll(p, TOTAL_BYTES)), sinkDone]);
  } finally {
    sink.kill();
  }
  if (gbps === undefined) throw new Error('the raw-socket sink reported no figure');
  return gbps;
}

/** Loopback TCP throughput between two Node processes, best of two runs, in GB/s. */
export async function measureRawSocketGBps(): Promise<number> {
  const first = await measureOnce();
  const second = await measureOnce();
  return Math.max(first, second);
}

if (process.argv[2] === '--sink' && resolve(process.argv[1] ?? '') === THIS_FILE) {
  runSink(Number(process.argv[3] ?? TOTAL_BYTES));
}
