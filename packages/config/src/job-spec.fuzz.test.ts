// Property-based fuzzing of the job spec's two entry points: whatever a user (or an
// attacker) submits, `parseJobSpec` and `resolveJobSpec` either return a spec that resolves
// to itself again or throw one JobSpecError with a stable code and at least one issue.
// Never another error type, never a partial spec. 3 × 2,000 + 2 × 1,500 + 2 × 1,000 =
// 11,000 cases in all; inputs are bounded in size so no single case can hang the run.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { JobSpecError } from './job-spec-error.ts';
import type { JobSpec } from './job-spec-schema.ts';
import { parseJobSpec, type JobSpecFormat } from './parse-job-spec.ts';
import { resolveJobSpec } from './resolve-job-spec.ts';

/** A valid spec that sets most sections, so mutations reach deep fields. */
const VALID_SPEC = {
  apiVersion: 'dinofleet/v1',
  kind: 'TrainingJob',
  metadata: { name: 'fuzz-job', labels: { team: 'vision', 'app.kubernetes.io/name': 'dino' } },
  spec: {
    recipe: { preset: 'dinov2', overrides: {} },
    data: { manifest: 's3://bucket/manifest.csv', format: 'csv', shards: 8, recordSamples: true, shuffleWindow: 512 },
    training: { steps: 100, globalBatchSize: 64, seed: 7, backend: 'cpu' },
    fleet: { workers: 2, minWorkers: 1, maxWorkers: 4 },
    checkpoint: { uri: 's3://bucket/ckpt/', everySteps: 10 },
    fault: { maxNonFiniteSteps: 3, maxFailedGenerations: 10 },
    collective: { transport: 'tcp', compression: 'bf16', chunkBytes: 1048576, smallMessageBytes: 262144, fusionBucketBytes: 67108864 },
  },
};

/** Each case is one `it`; numRuns sum to the issue's 10,000-case floor with some to spare. */
const RUNS = { strings: 2000, values: 2000, mutations: 1500, texts: 1000 } as const;

type Outcome = { readonly spec: JobSpec } | { readonly error: JobSpecError };

/** Runs `call`; anything thrown other than a JobSpecError fails the property with that error. */
function outcome(call: () => JobSpec): Outcome {
  try {
    return { spec: call() };
  } catch (error) {
    if (!(error instanceof JobSpecError)) throw error;
    return { error };
  }
}

/** The property every case checks: a self-resolving spec, or a clean JobSpecError. */
function expectCleanOutcome(call: () => JobSpec): void {
  const result = outcome(call);
  if ('error' in result) {
    expect(result.error.code).toBe('INVALID_JOB_SPEC');
    expect(result.error.name).toBe('JobSpecError');
    expect(result.error.issues.length).toBeGreaterThan(0);
    for (const issue of result.error.issues) {
      expect(typeof issue.path).toBe('string');
      expect(issue.message).not.toBe('');
    }
    return;
  }
  // A resolved spec is a fixed point: resolving it again changes nothing.
  expect(resolveJobSpec(result.spec)).toEqual(result.spec);
}

/** Every path (as key lists) to a value inside `value`, the root excluded. */
function pathsOf(value: unknown, prefix: readonly string[] = []): string[][] {
  if (typeof value !== 'object' || value === null) return [];
  return Object.entries(value).flatMap(([key, child]) => [[...prefix, key], ...pathsOf(child, [...prefix, key])]);
}

const VALID_PATHS = pathsOf(VALID_SPEC);

/** A deep copy of `spec` with the value at `path` replaced, or deleted when `replacement` is absent. */
function withField(spec: unknown, path: readonly string[], replacement: { value: unknown } | undefined): unknown {
  const copy = structuredClone(spec) as Record<string, unknown>;
  let node: Record<string, unknown> = copy;
  for (const key of path.slice(0, -1)) node = node[key] as Record<string, unknown>;
  const last = path[path.length - 1] as string;
  if (replacement === undefined) delete node[last];
  else node[last] = replacement.value;
  return copy;
}

/** Mutations of the valid spec: one to three fields replaced by arbitrary values or deleted. */
function mutatedSpec(values: fc.Arbitrary<unknown>): fc.Arbitrary<unknown> {
  const edit = fc.tuple(fc.constantFrom(...VALID_PATHS), fc.option(values.map((value) => ({ value })), { nil: undefined, freq: 5 }));
  return fc.array(edit, { minLength: 1, maxLength: 3 }).map((edits) =>
    edits.reduce<unknown>((spec, [path, replacement]) => {
      // An earlier edit may have replaced a parent with a scalar; then this path no longer exists.
      let node: unknown = spec;
      for (const key of path.slice(0, -1)) node = typeof node === 'object' && node !== null ? (node as Record<string, unknown>)[key] : undefined;
      return typeof node === 'object' && node !== null ? withField(spec, path, replacement) : spec;
    }, VALID_SPEC),
  );
}

/** Numbers and strings near the schema's edges, which plain arbitraries rarely hit. */
const edgeValue = fc.oneof(
  fc.constantFrom(0, -1, 1, 1.5, 2 ** 53, -(2 ** 53), Number.MAX_VALUE, Number.NaN, Infinity, -Infinity, -0, 1024, 1025, 65_536, 65_537),
  fc.constantFrom('', ' ', 's3://', 's3://bucket', 's3://b/', 'S3://BUCKET/x', 'lines', 'webdataset', 'grpc', 'none', 'fp16', 'dino', '__proto__', 'constructor'),
  fc.integer(),
  fc.double(),
  fc.string({ maxLength: 80 }),
);

const anyValue = fc.oneof(edgeValue, fc.anything({ maxDepth: 3, maxKeys: 5 }), fc.jsonValue({ maxDepth: 3 }));
const jsonValue = fc.oneof(edgeValue.filter((value) => typeof value !== 'number' || Number.isFinite(value)), fc.jsonValue({ maxDepth: 3 }));

/** Text made of the tokens YAML and JSON parsers branch on, so syntax corners get hit often. */
const syntaxText = fc
  .array(
    fc.constantFrom('{', '}', '[', ']', ':', ': ', ',', '- ', '? ', '&a ', '*a', '!!str ', '!!binary ', '!tag ', '%YAML 1.2\n', '---\n', '...\n', '#', '"', "'", '\\', '|', '>', '\n', '  ', '\t', 'key', 'spec', 'apiVersion', '1', '1e400', '0x1F', 'null', '~', 'true', '\u0000', '\uFEFF', '\uD800', 'é'),
    { maxLength: 60 },
  )
  .map((tokens) => tokens.join(''));

const format = fc.constantFrom<JobSpecFormat>('yaml', 'json');

/** Text of a mutated spec, then with a few characters inserted or cut at random places. */
function damagedText(serialize: (spec: unknown) => string): fc.Arbitrary<string> {
  return fc
    .tuple(mutatedSpec(jsonValue), fc.array(fc.tuple(fc.nat(), fc.nat({ max: 4 }), fc.string({ maxLength: 4, unit: 'binary' })), { maxLength: 3 }))
    .map(([spec, cuts]) => {
      let text = serialize(spec);
      for (const [at, length, insert] of cuts) {
        const start = text.length === 0 ? 0 : at % text.length;
        text = text.slice(0, start) + insert + text.slice(start + length);
      }
      return text;
    });
}

describe('job spec fuzzing: always a resolved spec or a JobSpecError', () => {
  it('the valid spec the mutations start from resolves', () => {
    expect(resolveJobSpec(VALID_SPEC).metadata.name).toBe('fuzz-job');
  });

  it('parseJobSpec on arbitrary strings', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 200, unit: 'binary' }), fc.string({ maxLength: 200, unit: 'grapheme' }), syntaxText), format, (text, which) => {
        expectCleanOutcome(() => parseJobSpec(text, which));
      }),
      { numRuns: RUNS.strings },
    );
  });

  it('resolveJobSpec on arbitrary values', () => {
    fc.assert(
      fc.property(anyValue, (value) => {
        expectCleanOutcome(() => resolveJobSpec(value));
      }),
      { numRuns: RUNS.values },
    );
  });

  it('resolveJobSpec on the valid spec with fields replaced by arbitrary values', () => {
    fc.assert(
      fc.property(mutatedSpec(anyValue), (spec) => {
        expectCleanOutcome(() => resolveJobSpec(spec));
      }),
      { numRuns: RUNS.values },
    );
  });

  it('parseJobSpec on mutated specs written as JSON, and resolveJobSpec agrees with it', () => {
    fc.assert(
      fc.property(mutatedSpec(jsonValue), (spec) => {
        const text = JSON.stringify(spec);
        expectCleanOutcome(() => parseJobSpec(text, 'json'));
        // The text is the value: parsing it and resolving the value must agree.
        const parsed = outcome(() => parseJobSpec(text, 'json'));
        const resolved = outcome(() => resolveJobSpec(JSON.parse(text)));
        expect('spec' in parsed).toBe('spec' in resolved);
        if ('spec' in parsed && 'spec' in resolved) expect(parsed.spec).toEqual(resolved.spec);
      }),
      { numRuns: RUNS.mutations },
    );
  });

  it('parseJobSpec on mutated specs written as YAML', () => {
    fc.assert(
      fc.property(mutatedSpec(jsonValue), (spec) => {
        expectCleanOutcome(() => parseJobSpec(stringify(spec), 'yaml'));
      }),
      { numRuns: RUNS.mutations },
    );
  });

  it('parseJobSpec on damaged JSON text', () => {
    fc.assert(
      fc.property(damagedText((spec) => JSON.stringify(spec, null, 2)), format, (text, which) => {
        expectCleanOutcome(() => parseJobSpec(text, which));
      }),
      { numRuns: RUNS.texts },
    );
  });

  it('parseJobSpec on damaged YAML text', () => {
    fc.assert(
      fc.property(
        damagedText((spec) => stringify(spec)),
        (text) => {
          expectCleanOutcome(() => parseJobSpec(text, 'yaml'));
        },
      ),
      { numRuns: RUNS.texts },
    );
  });
});
