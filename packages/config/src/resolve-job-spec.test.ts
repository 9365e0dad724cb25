import { PRESETS } from '@dinofleet/dino';
import { describe, expect, it } from 'vitest';
import { JobSpecError, type JobSpecIssue } from './job-spec-error.ts';
import { COLLECTIVE_COMPRESSIONS, COLLECTIVE_TRANSPORTS, COMPUTE_BACKEND_NAMES, JOB_SPEC_LIMITS, type JobSpec } from './job-spec-schema.ts';
import { jobSpecJsonSchema, resolveJobSpec, resolveRecipe } from './resolve-job-spec.ts';

/** The smallest valid spec; tests spread changes into its sections. */
function minimal(spec: Record<string, unknown> = {}, top: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    apiVersion: 'dinofleet/v1',
    kind: 'TrainingJob',
    metadata: { name: 'job-1' },
    spec: { data: { manifest: 's3://bucket/manifest.txt' }, training: { steps: 100 }, ...spec },
    ...top,
  };
}

function issuesOf(input: unknown): JobSpecIssue[] {
  try {
    resolveJobSpec(input);
  } catch (error) {
    expect(error).toBeInstanceOf(JobSpecError);
    return [...(error as JobSpecError).issues];
  }
  throw new Error('expected the spec to be refused');
}

function byPath(issues: readonly JobSpecIssue[]): Record<string, string> {
  return Object.fromEntries(issues.map((issue) => [issue.path, issue.message]));
}

describe('resolveJobSpec: defaults', () => {
  it('fills every default into a minimal spec', () => {
    const job = resolveJobSpec(minimal());
    expect(job).toEqual<JobSpec>({
      apiVersion: 'dinofleet/v1',
      kind: 'TrainingJob',
      metadata: { name: 'job-1', labels: {} },
      spec: {
        recipe: { preset: 'dinov2', overrides: {} },
        data: { manifest: 's3://bucket/manifest.txt', format: 'lines', shards: null, recordSamples: false, shuffleWindow: 1024 },
        training: { steps: 100, epochs: null, globalBatchSize: PRESETS.dinov2.globalBatchSize, seed: 0, backend: 'wasm' },
        fleet: { workers: 1, minWorkers: 1, maxWorkers: 1 },
        checkpoint: null,
        fault: { maxNonFiniteSteps: 3, maxFailedGenerations: 10 },
        collective: { transport: 'tcp', compression: 'none', chunkBytes: 1048576, smallMessageBytes: 262144, fusionBucketBytes: 67108864 },
      },
    });
  });

  it('takes the default batch from the chosen preset and maxWorkers from workers', () => {
    const job = resolveJobSpec(minimal({ recipe: { preset: 'dino' }, fleet: { workers: 3 } }));
    expect(job.spec.training.globalBatchSize).toBe(PRESETS.dino.globalBatchSize);
    expect(job.spec.fleet).toEqual({ workers: 3, minWorkers: 1, maxWorkers: 3 });
  });

  it('fills checkpoint defaults and ends the prefix with a slash', () => {
    const job = resolveJobSpec(minimal({ checkpoint: { uri: 's3://bucket/ckpt' } }));
    expect(job.spec.checkpoint).toEqual({ uri: 's3://bucket/ckpt/', everySteps: 1000 });
  });

  it('reads null as "not set" for steps, epochs and checkpoint', () => {
    const job = resolveJobSpec(minimal({ training: { steps: null, epochs: 5 }, checkpoint: null }));
    expect(job.spec.training).toMatchObject({ steps: null, epochs: 5 });
    expect(job.spec.checkpoint).toBeNull();
  });

  it('keeps what the user wrote', () => {
    const job = resolveJobSpec(
      minimal({
        data: { manifest: 's3://bucket/m.jsonl', format: 'jsonl' },
        training: { epochs: 3, globalBatchSize: 256, seed: 42, backend: 'tensorflow' },
        fleet: { workers: 4, minWorkers: 2, maxWorkers: 16 },
      }),
    );
    expect(job.spec.data.format).toBe('jsonl');
    expect(job.spec.training).toEqual({ steps: null, epochs: 3, globalBatchSize: 256, seed: 42, backend: 'tensorflow' });
    expect(job.spec.fleet).toEqual({ workers: 4, minWorkers: 2, maxWorkers: 16 });
  });

  it('resolves a resolved spec to itself, so services can pass the resolved form along', () => {
    const once = resolveJobSpec(minimal({ data: { manifest: 's3://bucket/m.txt', shards: 3, recordSamples: true }, checkpoint: { uri: 's3://bucket/ckpt' } }));
    expect(resolveJobSpec(JSON.parse(JSON.stringify(once)))).toEqual(once);
    const defaults = resolveJobSpec(minimal());
    expect(defaults.spec.data.shards).toBeNull();
    expect(resolveJobSpec(JSON.parse(JSON.stringify(defaults)))).toEqual(defaults);
  });

  it('offers the same backends as @dinofleet/compute', () => {
    // Mirrors COMPUTE_BACKENDS there; config does not depend on compute (see job-spec-schema.ts).
    expect(COMPUTE_BACKEND_NAMES).toEqual(['wasm', 'cpu', 'tensorflow']);
  });
});

describe('resolveJobSpec: refusals', () => {
  it('throws a JobSpecError with a stable code and name', () => {
    let caught: unknown;
    try {
      resolveJobSpec(minimal({ fleet: { workers: 2, minWorkers: 3 } }));
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(JobSpecError);
    const error = caught as JobSpecError;
    expect(error.code).toBe('INVALID_JOB_SPEC');
    expect(error.name).toBe('JobSpecError');
    expect(error.issues).toEqual([{ path: 'spec.fleet.minWorkers', message: 'must be <= workers (2), got 3' }]);
    expect(error.message).toBe('invalid job spec (1 problem):\n  spec.fleet.minWorkers: must be <= workers (2), got 3');
  });

  it('names every bad field at once, each on its own line of the message', () => {
    const input = {
      apiVersion: 'dinofleet/v2',
      kind: 'TrainingJob',
      metadata: { name: 'Bad_Name', labels: { 'app.kubernetes.io/name': 'x y' } },
      spec: {
        recipe: { preset: 'dinov4', overrides: { optim: { baseLr: -1 } } },
        data: { manifest: 'http://bucket/manifest.txt', format: 'parquet' },
        training: { steps: 1.5, seed: -1, backend: 'cuda', globalBatchSize: '64' },
        fleet: { workers: 2, minWorkers: 3, maxWorkers: 1 },
        checkpoint: { uri: 's3://Bucket/ckpt/', everySteps: 0 },
      },
    };
    let error: JobSpecError | undefined;
    try {
      resolveJobSpec(input);
    } catch (caught) {
      error = caught as JobSpecError;
    }
    expect(error).toBeInstanceOf(JobSpecError);
    expect(byPath(error?.issues ?? [])).toEqual({
      apiVersion: "must be 'dinofleet/v1', got \"dinofleet/v2\"",
      'metadata.name':
        "must be a DNS-1123 label: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit, got \"Bad_Name\"",
      'metadata.labels["app.kubernetes.io/name"]':
        "must be a label value: at most 63 letters, digits, '-', '_' or '.' starting and ending with a letter or digit, got \"x y\"",
      'spec.recipe.preset': 'must be one of dino, dinov2, dinov3, got "dinov4"',
      'spec.recipe.overrides.optim.baseLr': 'must be a finite number in (0, 10], got -1',
      'spec.data.manifest':
        'must be an s3:// object URI such as s3://bucket/path/manifest.txt; it must start with s3://, got "http://bucket/manifest.txt"',
      'spec.data.format': 'must be one of lines, csv, jsonl, webdataset, got "parquet"',
      'spec.training.steps': 'must be an integer in [1, 1e9], got 1.5',
      'spec.training.seed': 'must be an integer in [0, 4294967295], got -1',
      'spec.training.backend': 'must be one of wasm, cpu, tensorflow, got "cuda"',
      'spec.training.globalBatchSize': 'must be an integer in [1, 1048576], got "64"',
      'spec.fleet.minWorkers': 'must be <= workers (2), got 3',
      'spec.fleet.maxWorkers': 'must be >= workers (2), got 1',
      'spec.checkpoint.uri':
        "must be an s3:// prefix URI such as s3://bucket/checkpoints/; the bucket name may hold only lowercase letters, digits, '.' and '-', got \"s3://Bucket/ckpt/\"",
      'spec.checkpoint.everySteps': 'must be an integer in [1, 1e9], got 0',
    });
    for (const issue of error?.issues ?? []) expect(error?.message).toContain(`\n  ${issue.path}: ${issue.message}`);
    expect(error?.message.split('\n')[0]).toBe(`invalid job spec (${error?.issues.length} problems):`);
  });

  it('names missing required fields', () => {
    expect(byPath(issuesOf({ apiVersion: 'dinofleet/v1', kind: 'TrainingJob', metadata: {}, spec: {} }))).toEqual({
      'metadata.name':
        "required; must be a DNS-1123 label: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
      'spec.data': 'required; must be a mapping (an object)',
      'spec.training': 'required; must be a mapping (an object)',
    });
  });

  it('refuses a document that is not a mapping', () => {
    expect(issuesOf('steps: 100')).toEqual([{ path: '', message: 'must be a mapping (an object), got "steps: 100"' }]);
    expect(issuesOf(null)).toEqual([{ path: '', message: 'must be a mapping (an object), got null' }]);
  });

  it('survives null and wrongly typed sections', () => {
    expect(byPath(issuesOf(minimal({ recipe: { overrides: null }, fleet: null, training: null })))).toEqual({
      'spec.recipe.overrides': 'must be a mapping (an object), got null',
      'spec.training': 'must be a mapping (an object), got null',
      'spec.fleet': 'must be a mapping (an object), got null',
    });
    expect(byPath(issuesOf(minimal({ recipe: 'dino', fleet: [1], training: 5 })))).toEqual({
      'spec.recipe': 'must be a mapping (an object), got "dino"',
      'spec.training': 'must be a mapping (an object), got 5',
      'spec.fleet': 'must be a mapping (an object), got [1]',
    });
  });

  it('refuses non-finite and unsafe numbers', () => {
    const issues = byPath(issuesOf(minimal({ training: { steps: Number.POSITIVE_INFINITY, seed: Number.NaN } })));
    expect(issues['spec.training.steps']).toBe('must be an integer in [1, 1e9], got Infinity');
    expect(issues['spec.training.seed']).toBe('must be an integer in [0, 4294967295], got NaN');
    expect(byPath(issuesOf(minimal({ recipe: { overrides: { studentTemp: Number.POSITIVE_INFINITY } } })))).toEqual({
      'spec.recipe.overrides.studentTemp': 'must be a finite number in (0, 10], got Infinity',
    });
  });

  it('caps string lengths and shows only the start of a long value', () => {
    const long = 'a'.repeat(10_000);
    const issues = byPath(issuesOf(minimal({ data: { manifest: `s3://bucket/${long}` } }, { metadata: { name: long } })));
    expect(issues['metadata.name']).toMatch(/^must be a DNS-1123 label.*, got "a{60}"… \(10000 characters\)$/);
    expect(issues['spec.data.manifest']).toMatch(/at most 1093 characters, got "s3:\/\/bucket\/a+"… \(10012 characters\)$/);
  });

  it('caps the number of labels', () => {
    const labels = Object.fromEntries(Array.from({ length: JOB_SPEC_LIMITS.maxLabels + 1 }, (_, i) => [`l${i}`, 'v']));
    expect(issuesOf(minimal({}, { metadata: { name: 'job', labels } }))).toEqual([
      { path: 'metadata.labels', message: 'must hold at most 64 labels, got 65' },
    ]);
  });

  it('names a bad label key', () => {
    expect(issuesOf(minimal({}, { metadata: { name: 'job', labels: { 'bad key': 'v' } } }))).toEqual([
      {
        path: 'metadata.labels["bad key"]',
        message:
          "must be a label key: [prefix/]name, name 1-63 letters, digits, '-', '_' or '.' starting and ending with a letter or digit, got key \"bad key\"",
      },
    ]);
  });
});

describe('resolveJobSpec: steps / epochs', () => {
  it('needs exactly one of them', () => {
    expect(issuesOf(minimal({ training: { globalBatchSize: 64 } }))).toEqual([
      { path: 'spec.training', message: 'must set exactly one of steps or epochs, got neither' },
    ]);
    expect(issuesOf(minimal({ training: { steps: 10, epochs: 2 } }))).toEqual([
      { path: 'spec.training', message: 'must set exactly one of steps or epochs, got both (steps 10, epochs 2)' },
    ]);
    expect(issuesOf(minimal({ training: { steps: null, epochs: null } }))).toEqual([
      { path: 'spec.training', message: 'must set exactly one of steps or epochs, got neither' },
    ]);
  });

  it('resolves either one', () => {
    expect(resolveJobSpec(minimal({ training: { steps: 7 } })).spec.training).toMatchObject({ steps: 7, epochs: null });
    expect(resolveJobSpec(minimal({ training: { epochs: 7 } })).spec.training).toMatchObject({ steps: null, epochs: 7 });
  });
});

describe('resolveJobSpec: data', () => {
  it('defaults the shuffle window to 1024 samples and takes 1 (manifest order) to the limit', () => {
    expect(resolveJobSpec(minimal()).spec.data.shuffleWindow).toBe(1024);
    expect(resolveJobSpec(minimal({ data: { manifest: 's3://bucket/m.txt', shuffleWindow: 1 } })).spec.data.shuffleWindow).toBe(1);
    expect(byPath(issuesOf(minimal({ data: { manifest: 's3://bucket/m.txt', shuffleWindow: 0 } })))).toEqual({
      'spec.data.shuffleWindow': `must be an integer in [1, ${JOB_SPEC_LIMITS.maxShuffleWindow}], got 0`,
    });
  });

  it('takes every manifest format, and refuses epochs with WebDataset naming steps', () => {
    for (const format of ['lines', 'csv', 'jsonl', 'webdataset']) {
      expect(resolveJobSpec(minimal({ data: { manifest: 's3://bucket/m.txt', format } })).spec.data.format).toBe(format);
    }
    expect(issuesOf(minimal({ data: { manifest: 's3://bucket/tars.txt', format: 'webdataset' }, training: { epochs: 2 } }))).toEqual([
      {
        path: 'spec.training.epochs',
        message: "cannot be used with data.format 'webdataset' (the manifest lists tars, so its size does not tell the sample count); set training.steps instead",
      },
    ]);
  });
});

describe('resolveJobSpec: fault', () => {
  it('takes the limits given, keeps the default of the other, and round-trips', () => {
    const job = resolveJobSpec(minimal({ fault: { maxNonFiniteSteps: 5 } }));
    expect(job.spec.fault).toEqual({ maxNonFiniteSteps: 5, maxFailedGenerations: 10 });
    expect(resolveJobSpec(JSON.parse(JSON.stringify(job)))).toEqual(job);
  });

  it('names each bad limit with its range, and unknown keys', () => {
    expect(byPath(issuesOf(minimal({ fault: { maxNonFiniteSteps: 0, maxFailedGenerations: 1.5 } })))).toEqual({
      'spec.fault.maxNonFiniteSteps': 'must be an integer in [1, 1000], got 0',
      'spec.fault.maxFailedGenerations': 'must be an integer in [1, 10000], got 1.5',
    });
    expect(Object.keys(byPath(issuesOf(minimal({ fault: { retries: 2 } }))))).toEqual(['spec.fault.retries']);
  });
});

describe('resolveJobSpec: collective', () => {
  it('takes the settings given, keeps the defaults of the others, and round-trips', () => {
    const job = resolveJobSpec(minimal({ collective: { compression: 'bf16', chunkBytes: 4 * 1024 * 1024, fusionBucketBytes: 1048576 } }));
    expect(job.spec.collective).toEqual({
      transport: 'tcp',
      compression: 'bf16',
      chunkBytes: 4 * 1024 * 1024,
      smallMessageBytes: 262144,
      fusionBucketBytes: 1048576,
    });
    expect(resolveJobSpec(JSON.parse(JSON.stringify(job)))).toEqual(job);
  });

  it('takes the ends of every range', () => {
    const low = resolveJobSpec(minimal({ collective: { chunkBytes: 4, smallMessageBytes: 0, fusionBucketBytes: 1048576 } }));
    expect(low.spec.collective).toMatchObject({ chunkBytes: 4, smallMessageBytes: 0, fusionBucketBytes: 1048576 });
    const high = resolveJobSpec(minimal({ collective: { chunkBytes: 16777216, smallMessageBytes: 16777216, fusionBucketBytes: 1073741824 } }));
    expect(high.spec.collective).toMatchObject({ chunkBytes: 16777216, smallMessageBytes: 16777216, fusionBucketBytes: 1073741824 });
  });

  it('defaults smallMessageBytes to 0 with transport grpc, which takes 0 only, and round-trips', () => {
    const job = resolveJobSpec(minimal({ collective: { transport: 'grpc' } }));
    expect(job.spec.collective).toEqual({ transport: 'grpc', compression: 'none', chunkBytes: 1048576, smallMessageBytes: 0, fusionBucketBytes: 67108864 });
    expect(resolveJobSpec(JSON.parse(JSON.stringify(job)))).toEqual(job);
    expect(resolveJobSpec(minimal({ collective: { transport: 'grpc', smallMessageBytes: 0 } })).spec.collective).toEqual(job.spec.collective);
  });

  it('refuses compression and recursive doubling with transport grpc, naming tcp', () => {
    expect(byPath(issuesOf(minimal({ collective: { transport: 'grpc', compression: 'fp16', smallMessageBytes: 262144 } })))).toEqual({
      'spec.collective.compression': "must be 'none' with transport 'grpc' (compression needs transport 'tcp'), got \"fp16\"",
      'spec.collective.smallMessageBytes': "must be 0 with transport 'grpc' (recursive doubling needs transport 'tcp'), got 262144",
    });
    // Checked even when another field of the section is bad; a bad value is named once, for its range.
    expect(byPath(issuesOf(minimal({ collective: { transport: 'grpc', compression: 'bf16', smallMessageBytes: 6, chunkBytes: 0 } })))).toEqual({
      'spec.collective.chunkBytes': 'must be a multiple of 4 in [4, 16777216], got 0',
      'spec.collective.smallMessageBytes': 'must be a multiple of 4 in [0, 16777216], got 6',
      'spec.collective.compression': "must be 'none' with transport 'grpc' (compression needs transport 'tcp'), got \"bf16\"",
    });
  });

  it('names each bad setting with what is allowed, once, and unknown keys', () => {
    expect(
      byPath(
        issuesOf(
          minimal({ collective: { transport: 'udp', compression: 'int8', chunkBytes: 3, smallMessageBytes: 16777220, fusionBucketBytes: 1048578 } }),
        ),
      ),
    ).toEqual({
      'spec.collective.transport': 'must be one of tcp, grpc, got "udp"',
      'spec.collective.compression': 'must be one of none, bf16, fp16, got "int8"',
      'spec.collective.chunkBytes': 'must be a multiple of 4 in [4, 16777216], got 3',
      'spec.collective.smallMessageBytes': 'must be a multiple of 4 in [0, 16777216], got 16777220',
      'spec.collective.fusionBucketBytes': 'must be a multiple of 4 in [1048576, 1073741824], got 1048578',
    });
    expect(issuesOf(minimal({ collective: { chunkBytes: 3 } }))).toHaveLength(1);
    expect(byPath(issuesOf(minimal({ collective: { fusionBucketBytes: 1024, chunkBytes: '4', smallMessageBytes: 1.5 } })))).toEqual({
      'spec.collective.chunkBytes': 'must be a multiple of 4 in [4, 16777216], got "4"',
      'spec.collective.smallMessageBytes': 'must be a multiple of 4 in [0, 16777216], got 1.5',
      'spec.collective.fusionBucketBytes': 'must be a multiple of 4 in [1048576, 1073741824], got 1024',
    });
    expect(byPath(issuesOf(minimal({ collective: { bucketBytes: 4 } })))).toEqual({
      'spec.collective.bucketBytes':
        'unknown field; allowed: transport, compression, chunkBytes, smallMessageBytes, fusionBucketBytes',
    });
    expect(byPath(issuesOf(minimal({ collective: null })))).toEqual({ 'spec.collective': 'must be a mapping (an object), got null' });
  });

  it('offers the transports and compressions of @dinofleet/collective', () => {
    // Mirrors Transport and COMPRESSIONS there; config does not depend on collective (see job-spec-schema.ts).
    expect(COLLECTIVE_TRANSPORTS).toEqual(['tcp', 'grpc']);
    expect(COLLECTIVE_COMPRESSIONS).toEqual(['none', 'bf16', 'fp16']);
  });
});

describe('resolveJobSpec: fleet', () => {
  it('accepts min <= workers <= max', () => {
    expect(resolveJobSpec(minimal({ fleet: { workers: 2, minWorkers: 2, maxWorkers: 2 } })).spec.fleet).toEqual({
      workers: 2,
      minWorkers: 2,
      maxWorkers: 2,
    });
  });

  it('names both ends when both are out of order', () => {
    expect(byPath(issuesOf(minimal({ fleet: { workers: 4, minWorkers: 5, maxWorkers: 3 } })))).toEqual({
      'spec.fleet.minWorkers': 'must be <= workers (4), got 5',
      'spec.fleet.maxWorkers': 'must be >= workers (4), got 3',
    });
  });

  it('reports a count out of range once, not also as out of order', () => {
    expect(issuesOf(minimal({ fleet: { workers: 2, minWorkers: 0, maxWorkers: 2000 } }))).toEqual([
      { path: 'spec.fleet.minWorkers', message: 'must be an integer in [1, 1024], got 0' },
      { path: 'spec.fleet.maxWorkers', message: 'must be an integer in [1, 1024], got 2000' },
    ]);
  });

  it('keeps at least one image per worker per step', () => {
    expect(issuesOf(minimal({ training: { steps: 1, globalBatchSize: 4 }, fleet: { workers: 2, maxWorkers: 8 } }))).toEqual([
      {
        path: 'spec.fleet.maxWorkers',
        message: 'must be <= training.globalBatchSize (4) so every worker gets at least one image per step, got 8',
      },
    ]);
    // Without maxWorkers, workers is the ceiling and is the field named.
    expect(issuesOf(minimal({ training: { steps: 1, globalBatchSize: 2 }, fleet: { workers: 3 } }))).toEqual([
      {
        path: 'spec.fleet.workers',
        message: 'must be <= training.globalBatchSize (2) so every worker gets at least one image per step, got 3',
      },
    ]);
  });

  it('checks fleet ordering even when other sections are broken', () => {
    const paths = issuesOf(minimal({ data: { manifest: 42 }, fleet: { workers: 2, minWorkers: 3 } })).map((issue) => issue.path);
    expect(paths).toEqual(['spec.data.manifest', 'spec.fleet.minWorkers']);
  });
});

describe('resolveJobSpec: unknown keys', () => {
  it('names every unknown key with its full path and the allowed names', () => {
    const input = minimal({ fleet: { wrokers: 2, gpus: 1 }, extra: true }, { status: {} });
    expect(byPath(issuesOf(input))).toEqual({
      'spec.fleet.wrokers': "unknown field (did you mean 'workers'?); allowed: workers, minWorkers, maxWorkers",
      'spec.fleet.gpus': 'unknown field; allowed: workers, minWorkers, maxWorkers',
      'spec.extra': 'unknown field; allowed: recipe, data, training, fleet, checkpoint, fault, collective',
      status: 'unknown field; allowed: apiVersion, kind, metadata, spec',
    });
  });

  it('refuses unknown recipe overrides and says where a moved field lives', () => {
    const input = minimal({ recipe: { overrides: { optim: { lr: 0.1 }, globalBatchSize: 128, vit: { depth: 2 } } } });
    const issues = byPath(issuesOf(input));
    expect(issues['spec.recipe.overrides.optim.lr']).toMatch(/^unknown field; allowed: baseLr, lrScaling, minLr, /);
    expect(issues['spec.recipe.overrides.globalBatchSize']).toMatch(
      /^unknown field \(the batch size is spec.training.globalBatchSize\); allowed: studentTemp, /,
    );
    expect(issues['spec.recipe.overrides.vit']).toMatch(/^unknown field; allowed: /);
  });

  it('never lets __proto__ through', () => {
    const input = JSON.parse(
      '{"apiVersion":"dinofleet/v1","kind":"TrainingJob","metadata":{"name":"a"},"spec":{"data":{"manifest":"s3://bucket/m"},"training":{"steps":1},"__proto__":{"polluted":1}}}',
    ) as unknown;
    expect(issuesOf(input).map((issue) => issue.path)).toEqual(['spec.__proto__']);
    expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
  });
});

describe('resolveJobSpec: recipe overrides', () => {
  it('refuses iBOT and Gram knobs for presets without them', () => {
    expect(byPath(issuesOf(minimal({ recipe: { preset: 'dino', overrides: { ibot: { weight: 2 }, gram: { weight: 1 } } } })))).toEqual({
      'spec.recipe.overrides.ibot': "preset 'dino' has no iBOT objective; ibot overrides are allowed with presets dinov2, dinov3",
      'spec.recipe.overrides.gram': "preset 'dino' has no Gram anchoring; gram overrides are allowed with presets dinov3",
    });
  });

  it('checks ranges of pairs', () => {
    expect(byPath(issuesOf(minimal({ recipe: { overrides: { crops: { localScale: [0.4, 0.1], globalScale: [0.3] } } } })))).toEqual({
      'spec.recipe.overrides.crops.localScale': 'must be a pair [low, high] with 0.001 <= low <= high <= 1, got [0.4, 0.1]',
      'spec.recipe.overrides.crops.globalScale': 'must be a pair [low, high] with 0.001 <= low <= high <= 1, got [0.3]',
    });
  });
});

describe('resolveRecipe', () => {
  /** Dotted paths of the leaves where two plain values differ. */
  function differences(a: unknown, b: unknown, path = ''): string[] {
    if (typeof a === 'object' && a !== null && typeof b === 'object' && b !== null && !Array.isArray(a)) {
      const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
      return [...keys].flatMap((key) =>
        differences((a as Record<string, unknown>)[key], (b as Record<string, unknown>)[key], path === '' ? key : `${path}.${key}`),
      );
    }
    return JSON.stringify(a) === JSON.stringify(b) ? [] : [path];
  }

  it('is the preset itself without overrides', () => {
    expect(resolveRecipe(resolveJobSpec(minimal({ recipe: { preset: 'dinov3' } })))).toEqual(PRESETS.dinov3);
  });

  it('differs from the preset exactly where overridden', () => {
    const preset = PRESETS.dinov2;
    const presetBefore = structuredClone(preset);
    // Values derived from the preset, so each one is an actual change whatever it holds.
    const wanted = {
      koleoWeight: preset.koleoWeight + 0.1,
      baseLr: preset.optim.baseLr / 2,
      lrScaling: preset.optim.lrScaling === 'linear256' ? ('none' as const) : ('linear256' as const),
      momentum: preset.teacher.momentum === 0.9 ? 0.95 : 0.9,
      maskRatio: [(preset.ibot?.maskRatio[0] ?? 0) / 2, ((preset.ibot?.maskRatio[1] ?? 1) + 1) / 2] as [number, number],
      nLocal: preset.crops.nLocal === 2 ? 3 : 2,
      globalBatchSize: preset.globalBatchSize * 2,
    };
    const job = resolveJobSpec(
      minimal({
        recipe: {
          preset: 'dinov2',
          overrides: {
            koleoWeight: wanted.koleoWeight,
            optim: { baseLr: wanted.baseLr, lrScaling: wanted.lrScaling },
            teacher: { momentum: wanted.momentum },
            ibot: { maskRatio: wanted.maskRatio },
            crops: { nLocal: wanted.nLocal },
          },
        },
        training: { steps: 10, globalBatchSize: wanted.globalBatchSize },
      }),
    );
    const recipe = resolveRecipe(job);
    expect(differences(preset, recipe).sort()).toEqual(
      [
        'crops.nLocal',
        'globalBatchSize',
        'ibot.maskRatio',
        'koleoWeight',
        'optim.baseLr',
        'optim.lrScaling',
        'teacher.momentum',
      ].sort(),
    );
    expect(recipe.koleoWeight).toBe(wanted.koleoWeight);
    expect(recipe.optim.baseLr).toBe(wanted.baseLr);
    expect(recipe.optim.lrScaling).toBe(wanted.lrScaling);
    expect(recipe.teacher.momentum).toBe(wanted.momentum);
    expect(recipe.ibot?.maskRatio).toEqual(wanted.maskRatio);
    expect(recipe.crops.nLocal).toBe(wanted.nLocal);
    expect(recipe.globalBatchSize).toBe(wanted.globalBatchSize);
    // Untouched siblings keep the preset's values, and the preset itself is unchanged.
    expect(recipe.optim.minLr).toBe(preset.optim.minLr);
    expect(recipe.ibot?.maskProbability).toBe(preset.ibot?.maskProbability);
    expect(preset).toEqual(presetBefore);
  });

  it('refuses overrides that do not fit a hand-built spec', () => {
    const valid = resolveJobSpec(minimal({ recipe: { preset: 'dinov2', overrides: { ibot: { weight: 2 } } } }));
    const handBuilt: JobSpec = { ...valid, spec: { ...valid.spec, recipe: { ...valid.spec.recipe, preset: 'dino' } } };
    expect(() => resolveRecipe(handBuilt)).toThrow(JobSpecError);
    expect(() => resolveRecipe(handBuilt)).toThrow("spec.recipe.overrides: recipe 'dino' has no iBOT objective to override");
  });
});

describe('jobSpecJsonSchema', () => {
  it('describes the input with its top-level properties, defaults and closed objects', () => {
    const schema = jobSpecJsonSchema() as {
      type: string;
      required: string[];
      additionalProperties: boolean;
      properties: Record<string, { properties?: Record<string, { properties?: Record<string, { default?: unknown; enum?: unknown }> }> }>;
    };
    expect(schema.type).toBe('object');
    expect(Object.keys(schema.properties)).toEqual(['apiVersion', 'kind', 'metadata', 'spec']);
    expect(schema.required).toEqual(['apiVersion', 'kind', 'metadata', 'spec']);
    expect(schema.additionalProperties).toBe(false);
    const spec = schema.properties['spec']?.properties;
    expect(Object.keys(spec ?? {})).toEqual(['recipe', 'data', 'training', 'fleet', 'checkpoint', 'fault', 'collective']);
    expect(spec?.['training']?.properties?.['backend']).toMatchObject({ default: 'wasm', enum: ['wasm', 'cpu', 'tensorflow'] });
    expect(spec?.['fleet']?.properties?.['workers']).toMatchObject({ default: 1, minimum: 1, maximum: 1024 });
    const collective = spec?.['collective']?.properties;
    expect(collective?.['transport']).toMatchObject({ default: 'tcp', enum: ['tcp', 'grpc'] });
    expect(collective?.['compression']).toMatchObject({ default: 'none', enum: ['none', 'bf16', 'fp16'] });
    expect(collective?.['chunkBytes']).toMatchObject({ default: 1048576, minimum: 4, maximum: 16777216, multipleOf: 4 });
    // Its default depends on the transport, so the JSON Schema shows none.
    expect(collective?.['smallMessageBytes']).toMatchObject({ minimum: 0, maximum: 16777216, multipleOf: 4 });
    expect(collective?.['smallMessageBytes']).not.toHaveProperty('default');
    expect(collective?.['fusionBucketBytes']).toMatchObject({ default: 67108864, minimum: 1048576, maximum: 1073741824, multipleOf: 4 });
    expect(JSON.parse(JSON.stringify(schema))).toEqual(schema);
  });
});
