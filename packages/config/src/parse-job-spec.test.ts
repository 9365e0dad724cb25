import { readFileSync } from 'node:fs';
import { PRESETS } from '@dinofleet/dino';
import { describe, expect, it } from 'vitest';
import { JobSpecError } from './job-spec-error.ts';
import { JOB_SPEC_LIMITS } from './job-spec-schema.ts';
import { parseJobSpec } from './parse-job-spec.ts';
import { resolveRecipe } from './resolve-job-spec.ts';

const EXAMPLE = new URL('../../../examples/fmnist-dinov2.yaml', import.meta.url);

const MINIMAL_YAML = `apiVersion: dinofleet/v1
kind: TrainingJob
metadata:
  name: job-1
spec:
  data:
    manifest: s3://bucket/manifest.txt
  training:
    steps: 100
`;

function refusal(run: () => unknown): JobSpecError {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(JobSpecError);
    return error as JobSpecError;
  }
  throw new Error('expected the spec to be refused');
}

describe('parseJobSpec: the example', () => {
  it('resolves examples/fmnist-dinov2.yaml cleanly', () => {
    const job = parseJobSpec(readFileSync(EXAMPLE, 'utf8'));
    expect(job.metadata).toEqual({ name: 'fmnist-dinov2', labels: { team: 'vision', 'app.kubernetes.io/part-of': 'dinofleet' } });
    expect(job.spec.recipe.preset).toBe('dinov2');
    expect(job.spec.training).toEqual({ steps: 1000, epochs: null, globalBatchSize: 64, seed: 0, backend: 'wasm' });
    expect(job.spec.fleet).toEqual({ workers: 2, minWorkers: 1, maxWorkers: 8 });
    expect(job.spec.checkpoint).toEqual({ uri: 's3://dinofleet-checkpoints/fmnist-dinov2/', everySteps: 100 });
    const recipe = resolveRecipe(job);
    expect(recipe.name).toBe('dinov2');
    expect(recipe.teacher.momentum).toBe(0.98);
    expect(recipe.vit).toBe(PRESETS.dinov2.vit);
  });
});

describe('parseJobSpec: YAML', () => {
  it('parses a minimal spec and fills defaults', () => {
    const job = parseJobSpec(MINIMAL_YAML);
    expect(job.spec.fleet).toEqual({ workers: 1, minWorkers: 1, maxWorkers: 1 });
    expect(job.spec.training.backend).toBe('wasm');
    expect(job.spec.collective).toEqual({ transport: 'tcp', compression: 'none', chunkBytes: 1048576, smallMessageBytes: 262144, fusionBucketBytes: 67108864 });
  });

  it('reports a syntax error with its line and column', () => {
    const text = MINIMAL_YAML.replace('    steps: 100', '    steps: [100');
    const error = refusal(() => parseJobSpec(text));
    expect(error.issues.length).toBeGreaterThan(0);
    const first = error.issues[0];
    expect(first?.path).toBe('');
    expect(first?.message).toMatch(/^YAML syntax error: /);
    expect(first?.line).toBeGreaterThanOrEqual(9);
    expect(error.message).toMatch(/\(spec\): YAML syntax error: .*\(line \d+, column \d+\)/);
  });

  it.each([
    ['a nested compact mapping', 'name: job-1', 'name: job-1: x', 4, 9, /Nested mappings/],
    ['a tab as indentation', '  name: job-1', '\tname: job-1', 4, 1, /Tabs/],
  ])('reports %s on its line', (_case, from, to, line, column, message) => {
    const error = refusal(() => parseJobSpec(MINIMAL_YAML.replace(from, to)));
    expect(error.issues[0]).toMatchObject({ path: '', line, column });
    expect(error.issues[0]?.message).toMatch(message);
    expect(error.message).toContain(`(line ${line}, column ${column})`);
  });

  it('refuses duplicate keys', () => {
    const error = refusal(() => parseJobSpec(`${MINIMAL_YAML}    steps: 200\n`));
    expect(error.issues[0]?.message).toMatch(/YAML syntax error: .*unique/i);
    expect(error.issues[0]?.line).toBe(10);
  });

  it('gives every schema issue the line of its field', () => {
    const text = MINIMAL_YAML.replace('    steps: 100', '    steps: 100\n    epochs: 2').concat(
      '  fleet:\n    workers: 2\n    minWorkers: 3\n    gpus: 1\n',
    );
    const error = refusal(() => parseJobSpec(text));
    expect(error.issues).toEqual([
      { path: 'spec.training', message: 'must set exactly one of steps or epochs, got both (steps 100, epochs 2)', line: 8, column: 3 },
      { path: 'spec.fleet.gpus', message: expect.stringMatching(/^unknown field/) as string, line: 14, column: 5 },
      { path: 'spec.fleet.minWorkers', message: 'must be <= workers (2), got 3', line: 13, column: 5 },
    ]);
    expect(error.message).toContain('spec.fleet.minWorkers: must be <= workers (2), got 3 (line 13, column 5)');
  });

  it('points a missing field at its nearest written ancestor', () => {
    const error = refusal(() => parseJobSpec(MINIMAL_YAML.replace('    manifest: s3://bucket/manifest.txt\n', '    format: csv\n')));
    expect(error.issues).toEqual([
      { path: 'spec.data.manifest', message: expect.stringMatching(/^required; must be an s3:\/\/ object URI/) as string, line: 6, column: 3 },
    ]);
  });

  it('reads yes/no/on as strings (YAML 1.2), not booleans', () => {
    const error = refusal(() => parseJobSpec(MINIMAL_YAML.replace('steps: 100', 'steps: on')));
    expect(error.issues).toMatchObject([{ path: 'spec.training.steps', message: 'must be an integer in [1, 1e9], got "on"' }]);
  });

  it('refuses .inf and .nan', () => {
    const error = refusal(() => parseJobSpec(MINIMAL_YAML.replace('steps: 100', 'steps: .inf')));
    expect(error.issues).toMatchObject([{ path: 'spec.training.steps', message: 'must be an integer in [1, 1e9], got Infinity' }]);
  });

  it('refuses an empty document and several documents', () => {
    expect(refusal(() => parseJobSpec('')).issues).toEqual([{ path: '', message: 'must be a mapping (an object), got null' }]);
    expect(refusal(() => parseJobSpec(`${MINIMAL_YAML}---\n${MINIMAL_YAML}`)).issues[0]?.message).toMatch(/multiple documents/);
  });

  it('refuses an alias bomb without expanding it', () => {
    const lines = ['a: &a [x, x, x, x, x, x, x, x, x, x]'];
    for (let i = 1; i < 8; i++) {
      const previous = String.fromCharCode(96 + i);
      const name = String.fromCharCode(97 + i);
      lines.push(`${name}: &${name} [${Array.from({ length: 10 }, () => `*${previous}`).join(', ')}]`);
    }
    const error = refusal(() => parseJobSpec(lines.join('\n')));
    expect(error.issues[0]?.message).toMatch(/^YAML could not be read: .*alias/i);
  });

  it('refuses deep nesting before parsing it', () => {
    for (const format of ['yaml', 'json'] as const) {
      expect(refusal(() => parseJobSpec('['.repeat(60_000), format)).issues).toEqual([
        { path: '', message: 'spec text must nest [ and { at most 64 deep, got 60000' },
      ]);
    }
  });

  it('lists at most ten syntax errors', () => {
    const issues = refusal(() => parseJobSpec(`${'['.repeat(60)}
`)).issues;
    expect(issues.length).toBeLessThanOrEqual(11);
    if (issues.length === 11) expect(issues[10]?.message).toMatch(/^\d+ more YAML syntax errors not shown$/);
  });

  it('refuses text over the size limit before parsing it', () => {
    const text = `${MINIMAL_YAML}#${'x'.repeat(JOB_SPEC_LIMITS.maxSpecBytes)}\n`;
    expect(refusal(() => parseJobSpec(text)).issues).toEqual([
      { path: '', message: `spec text must be at most 65536 bytes, got ${Buffer.byteLength(text)}` },
    ]);
  });
});

describe('parseJobSpec: JSON', () => {
  const json = JSON.stringify(
    {
      apiVersion: 'dinofleet/v1',
      kind: 'TrainingJob',
      metadata: { name: 'job-1' },
      spec: { data: { manifest: 's3://bucket/manifest.txt' }, training: { epochs: 3 } },
    },
    null,
    2,
  );

  it('parses strict JSON', () => {
    expect(parseJobSpec(json, 'json').spec.training).toMatchObject({ steps: null, epochs: 3 });
    // YAML 1.2 reads JSON too, so the default format takes it as well.
    expect(parseJobSpec(json).spec.training).toMatchObject({ steps: null, epochs: 3 });
  });

  it('reports a syntax error with its line and column', () => {
    const text = json.replace('"epochs": 3', '"epochs": 3,');
    const error = refusal(() => parseJobSpec(text, 'json'));
    // The trailing comma is caught at the `}` that follows it, on the next line.
    const line = text.slice(0, text.indexOf('"epochs": 3,')).split('\n').length + 1;
    expect(text.split('\n')[line - 1]).toBe('    }');
    expect(error.issues).toEqual([{ path: '', message: expect.stringMatching(/^JSON syntax error: /) as string, line, column: 5 }]);
  });

  it('gives schema issues their line in JSON too', () => {
    const text = json.replace('"epochs": 3', '"epochs": 0');
    const line = text.split('\n').findIndex((l) => l.includes('"epochs"')) + 1;
    expect(refusal(() => parseJobSpec(text, 'json')).issues).toEqual([
      { path: 'spec.training.epochs', message: 'must be an integer in [1, 1e6], got 0', line, column: 7 },
    ]);
  });
});
