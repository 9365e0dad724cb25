import { createServer } from 'node:net';

/**
 * A TCP port on `host` that was free a moment ago (bind port 0, read it, close). Another
 * process may take it before the caller binds it; callers retry on "address in use".
 */
export function findFreePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ host, port: 0, exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error('could not read the port of a probe socket'))));
    });
  });
}
