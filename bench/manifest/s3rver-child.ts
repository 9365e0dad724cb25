// Child process of the manifest bench: s3rver (packages/local's `startS3`, which runs it
// in-process) in a process of its own, so the bench's reader has its core to itself the
// way it would against S3. Prints the server's environment as one JSON line on stdout and
// stops (removing its temporary directory) when stdin ends or on SIGTERM/SIGINT, so it
// never outlives the bench.
import { startS3 } from '@dinofleet/local';

const bucket = process.argv[2];
if (bucket === undefined) throw new Error('usage: s3rver-child.ts <bucket>');
const server = await startS3({ buckets: [bucket] });
process.stdout.write(`${JSON.stringify(server.env())}\n`);

let stopping = false;
const stop = (): void => {
  if (stopping) return;
  stopping = true;
  server.stop().then(
    () => process.exit(0),
    (error: unknown) => {
      process.stderr.write(`s3rver-child: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exit(1);
    },
  );
};
process.stdin.on('end', stop);
process.stdin.resume();
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
