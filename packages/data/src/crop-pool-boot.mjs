// Entry of a CropPool thread. The thread's code is TypeScript and Node does not run the
// parent's `--import tsx` in worker threads, so the thread registers tsx's loader itself,
// then loads the module named in workerData.
import { workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
await import(workerData);
