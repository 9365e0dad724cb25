import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

let cachedRoot: string | undefined;

/**
 * The repository root: the nearest directory above this file holding
 * `pnpm-workspace.yaml`. Throws when there is none (the package was copied out of the
 * workspace), because the services are run from their sources there.
 */
export function findRepoRoot(): string {
  if (cachedRoot !== undefined) return cachedRoot;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'pnpm-workspace.yaml'))) {
      cachedRoot = dir;
      return dir;
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`no pnpm-workspace.yaml above ${fileURLToPath(import.meta.url)}: run dinofleet from its repository`);
    dir = parent;
  }
}

/**
 * A `file:` URL of tsx's ESM loader, resolved from the repository root, for
 * `node --import <url>`; works whatever the child's working directory is.
 */
export function tsxLoaderUrl(): string {
  const require = createRequire(join(findRepoRoot(), 'package.json'));
  let path: string;
  try {
    path = require.resolve('tsx');
  } catch (error) {
    throw new Error('tsx is not installed in the workspace: run `bash scripts/ensure-deps.sh`', { cause: error });
  }
  return pathToFileURL(path).href;
}
