// Generated code is never edited by hand: regenerate from proto/ into a temporary
// directory with the committed buf.gen.yaml and require byte-identical output.
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

const PACKAGE_DIR = fileURLToPath(new URL('..', import.meta.url));
const COMMITTED_DIR = join(PACKAGE_DIR, 'src', 'generated');
const BUF = join(PACKAGE_DIR, 'node_modules', '.bin', 'buf');

async function listFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)))
    .sort();
}

describe('src/generated', () => {
  const outDirs: string[] = [];
  afterAll(async () => {
    await Promise.all(outDirs.map((dir) => rm(dir, { recursive: true, force: true })));
  });

  it('is exactly what `pnpm generate` produces from proto/', async () => {
    const outDir = await mkdtemp(join(tmpdir(), 'dinofleet-proto-gen-'));
    outDirs.push(outDir);
    // buf.gen.yaml names the plugin by a path relative to this package, so run from here.
    await promisify(execFile)(BUF, ['generate', '../../proto', '--template', 'buf.gen.yaml', '--output', outDir], {
      cwd: PACKAGE_DIR,
    });
    const freshDir = join(outDir, 'src', 'generated');
    const committed = await listFiles(COMMITTED_DIR);
    expect(await listFiles(freshDir)).toEqual(committed);
    expect(committed.length).toBeGreaterThan(0);
    for (const file of committed) {
      const [fresh, mine] = await Promise.all([
        readFile(join(freshDir, file), 'utf8'),
        readFile(join(COMMITTED_DIR, file), 'utf8'),
      ]);
      expect(mine, `${file} differs from generated output: run \`pnpm generate\` in packages/proto`).toBe(fresh);
    }
  });
});
