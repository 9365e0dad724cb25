/**
 * The job spec: one zod schema, shared by the CLI, the services, tests and the Helm
 * chart's values schema, so the same defaults apply wherever a job comes from. Shaped like
 * a Kubernetes object (`apiVersion`, `kind`, `metadata`, `spec`).
 */
import { PRESET_NAMES, PRESETS, type PresetName } from '@dinofleet/dino';
import { z } from 'zod';
import { boundedInt, boundedMultipleOf4, oneOf, strictMapping } from './field-schemas.ts';
import type { PathSegment } from './job-spec-error.ts';
import { showValue } from './show-value.ts';
import { RECIPE_OVERRIDES_SCHEMA, type RecipeOverrides } from './recipe-overrides.ts';
import { normalizeS3Prefix, S3_MAX_KEY_BYTES, s3UriProblem, type S3UriKind } from './s3-uri.ts';

/** The only `apiVersion` this package reads. */
export const JOB_SPEC_API_VERSION = 'dinofleet/v1';
/** The only `kind` this package reads. */
export const JOB_SPEC_KIND = 'TrainingJob';

/** The preset a job trains when `spec.recipe.preset` is left out. */
export const DEFAULT_PRESET: PresetName = 'dinov2';

/** Image manifest formats (`spec.data.format`): one key per line, CSV, JSON lines, WebDataset shards. */
export const MANIFEST_FORMATS = ['lines', 'csv', 'jsonl', 'webdataset'] as const;
/** A manifest format. */
export type ManifestFormat = (typeof MANIFEST_FORMATS)[number];

/**
 * The compute backends a worker can run on (`spec.training.backend`). The same list as
 * `COMPUTE_BACKENDS` in `@dinofleet/compute`, which this package does not depend on (the
 * spec must be checkable without loading tfjs backends); change both together.
 */
export const COMPUTE_BACKEND_NAMES = ['wasm', 'cpu', 'tensorflow'] as const;
/** A compute backend name. */
export type ComputeBackendName = (typeof COMPUTE_BACKEND_NAMES)[number];

/**
 * How the ranks' all-reduce moves chunks (`spec.collective.transport`). The same values as
 * `Transport` in `@dinofleet/collective`, which this package does not depend on (it brings
 * gRPC and sockets); change both together.
 */
export const COLLECTIVE_TRANSPORTS = ['tcp', 'grpc'] as const;
/** A collective transport. */
export type CollectiveTransport = (typeof COLLECTIVE_TRANSPORTS)[number];

/**
 * Wire encodings of the all-reduce (`spec.collective.compression`): the same list as
 * `COMPRESSIONS` in `@dinofleet/collective`; change both together.
 */
export const COLLECTIVE_COMPRESSIONS = ['none', 'bf16', 'fp16'] as const;
/** A collective wire encoding. */
export type CollectiveCompression = (typeof COLLECTIVE_COMPRESSIONS)[number];

/** The defaults of `spec.collective` with transport `tcp` (`@dinofleet/collective`'s own defaults). */
export const DEFAULT_COLLECTIVE = {
  transport: 'tcp',
  compression: 'none',
  /** 1 MiB, the collective's `DEFAULT_CHUNK_BYTES`. */
  chunkBytes: 1024 * 1024,
  /** 256 KiB, the collective's `DEFAULT_SMALL_MESSAGE_BYTES` (0 with transport `grpc`). */
  smallMessageBytes: 256 * 1024,
  /** 64 MiB, the collective's `DEFAULT_FUSION_BUCKET_BYTES` (Horovod's fusion threshold). */
  fusionBucketBytes: 64 * 1024 * 1024,
} as const satisfies CollectiveSpec;

/** Default `spec.data.shuffleWindow`: 1024 samples, a few seconds of a GPU's intake. */
export const DEFAULT_SHUFFLE_WINDOW = 1024;

/** Limits that keep a hostile or mistaken spec from costing anything before it is refused. */
export const JOB_SPEC_LIMITS = {
  /** Largest spec text `parseJobSpec` reads, in bytes (UTF-8). */
  maxSpecBytes: 64 * 1024,
  /** Deepest `[` / `{` nesting `parseJobSpec` reads (a real spec nests a handful of levels). */
  maxNestingDepth: 64,
  /** Longest S3 URI, in characters (scheme + bucket + a key of at most 1024 bytes). */
  maxUriLength: 5 + 63 + 1 + S3_MAX_KEY_BYTES,
  /** Most labels in `metadata.labels`. */
  maxLabels: 64,
  /** Most workers in a fleet. */
  maxWorkers: 1024,
  /** Most manifest shards. */
  maxShards: 10_000_000,
  /** Largest shuffle window, in samples (`spec.data.shuffleWindow`). */
  maxShuffleWindow: 65_536,
  /** Largest global batch, in images per step. */
  maxGlobalBatchSize: 1 << 20,
  /** Longest run, in optimiser steps. */
  maxSteps: 1_000_000_000,
  /** Longest run, in epochs. */
  maxEpochs: 1_000_000,
  /** Most non-finite steps in a row before a rollback (`spec.fault.maxNonFiniteSteps`). */
  maxNonFiniteSteps: 1000,
  /** Most generations in a row without a commit (`spec.fault.maxFailedGenerations`). */
  maxFailedGenerations: 10_000,
  /** Largest ring chunk, in bytes (`spec.collective.chunkBytes`; the collective's `MAX_CHUNK_BYTES`). */
  maxChunkBytes: 16 * 1024 * 1024,
  /** Largest recursive-doubling vector, in bytes (`spec.collective.smallMessageBytes`; the collective's `MAX_SMALL_MESSAGE_BYTES`). */
  maxSmallMessageBytes: 16 * 1024 * 1024,
  /** Smallest fusion bucket, in bytes (`spec.collective.fusionBucketBytes`): below it the ring is latency-bound. */
  minFusionBucketBytes: 1024 * 1024,
  /** Largest fusion bucket, in bytes (`spec.collective.fusionBucketBytes`). */
  maxFusionBucketBytes: 1024 * 1024 * 1024,
} as const;

// ---------------------------------------------------------------------------------------
// The resolved form

/** `metadata`: who the job is. */
export interface JobMetadata {
  /** Job name, a DNS-1123 label (lowercase letters, digits, `-`; at most 63 characters). Required. */
  readonly name: string;
  /** Kubernetes-style labels, copied onto the job's pods and metrics. At most 64. @default {} */
  readonly labels: Readonly<Record<string, string>>;
}

/** `spec.recipe`: what is trained and how. */
export interface RecipeSpec {
  /** One of `PRESET_NAMES` from `@dinofleet/dino`. @default 'dinov2' */
  readonly preset: PresetName;
  /** Validated overrides of the preset's knobs, applied by `resolveRecipe`. @default {} */
  readonly overrides: RecipeOverrides;
}

/** `spec.data`: where the images are. */
export interface DataSpec {
  /** `s3://bucket/key` of the image manifest (an object, not a prefix). Required. */
  readonly manifest: string;
  /** How the manifest is written. @default 'lines' */
  readonly format: ManifestFormat;
  /** Shards (leases) the manifest is split into; [1, 1e7]. @default null: one per MiB of manifest, at least 4 per worker */
  readonly shards: number | null;
  /** Verification mode: the coordinator keeps the sample ids of every committed step. @default false */
  readonly recordSamples: boolean;
  /**
   * Samples a worker reads ahead and trains on in a seeded random order (a shuffle window),
   * on top of the seeded order of shards per epoch; 1 keeps manifest order within a shard.
   * A cursor is (window start, samples consumed), so resumes stay exact; [1, 65536].
   * @default 1024
   */
  readonly shuffleWindow: number;
}

/** `spec.training`: how long and how big. Exactly one of `steps` and `epochs` is set. */
interface TrainingSpecBase {
  /** Images per optimiser step over the whole fleet, fixed as workers come and go; [1, 2^20]. @default the preset's (64) */
  readonly globalBatchSize: number;
  /** Seed of every random stream (init, augmentation, masks, data order); [0, 2^32 − 1]. @default 0 */
  readonly seed: number;
  /** Compute backend of every worker. @default 'wasm' */
  readonly backend: ComputeBackendName;
}

/** A run measured in optimiser steps. */
export interface StepsTrainingSpec extends TrainingSpecBase {
  /** Optimiser steps to train; [1, 1e9]. */
  readonly steps: number;
  readonly epochs: null;
}

/** A run measured in passes over the manifest (turned into steps once its size is known). */
export interface EpochsTrainingSpec extends TrainingSpecBase {
  readonly steps: null;
  /** Epochs to train; [1, 1e6]. */
  readonly epochs: number;
}

/** `spec.training`. */
export type TrainingSpec = StepsTrainingSpec | EpochsTrainingSpec;

/** `spec.fleet`: how many workers, elastically. `minWorkers <= workers <= maxWorkers`. */
export interface FleetSpec {
  /** Workers to start with; [1, 1024]. @default 1 */
  readonly workers: number;
  /** The job keeps training while at least this many workers are alive; [1, workers]. @default 1 */
  readonly minWorkers: number;
  /** The fleet never grows past this; [workers, min(1024, globalBatchSize)]. @default workers */
  readonly maxWorkers: number;
}

/** `spec.checkpoint`: where and how often state is saved. */
export interface CheckpointSpec {
  /** `s3://bucket/prefix/` under which checkpoints are written; always ends in `/`. Required. */
  readonly uri: string;
  /** A checkpoint every this many committed steps; [1, 1e9]. @default 1000 */
  readonly everySteps: number;
}

/** `spec.fault`: how many failures in a row the job absorbs (docs/cluster.md "Elasticity and failures"). */
export interface FaultSpec {
  /** Non-finite steps in a row before the job rolls back to its latest checkpoint; [1, 1000]. @default 3 */
  readonly maxNonFiniteSteps: number;
  /** Generations in a row that end without a commit before the job fails; [1, 10000]. @default 10 */
  readonly maxFailedGenerations: number;
}

/**
 * `spec.collective`: how the ranks all-reduce (`@dinofleet/collective`'s `RingAllReduce`
 * and `allReduceFused`; docs/collective.md). Every rank of a job must use the same
 * settings, which is why they are part of the spec. Transport `grpc` carries neither
 * compression nor recursive doubling: with it `compression` must be `'none'` and
 * `smallMessageBytes` 0 (its default there); any other value is refused, not ignored.
 */
export interface CollectiveSpec {
  /**
   * How chunks travel: `'tcp'` (raw TCP data links opened through gRPC's OpenDataLink,
   * ≈ socket speed; peers must reach the worker's `--data-listen` port) or `'grpc'` (the
   * ring over gRPC Exchange streams: slower, needs only the gRPC port). @default 'tcp'
   */
  readonly transport: CollectiveTransport;
  /**
   * Wire encoding: `'bf16'` or `'fp16'` send 16-bit values and sum in float32, halving the
   * bytes moved at the cost of rounding; transport `tcp` only. @default 'none'
   */
  readonly compression: CollectiveCompression;
  /**
   * Bytes per ring chunk (float32 bytes before compression): a multiple of 4 in
   * [4, 16777216] (16 MiB). Smaller chunks pipeline sending and summing more finely,
   * larger ones pay the per-message cost less often. @default 1048576 (1 MiB)
   */
  readonly chunkBytes: number;
  /**
   * Vectors of at most this many bytes use recursive doubling (log2 n whole-vector
   * exchanges) instead of the ring's 2(n − 1) steps; 0 turns it off. A multiple of 4 in
   * [0, 16777216] (16 MiB); with transport `grpc` it must be 0.
   * @default 262144 (256 KiB) with transport `tcp`, 0 with `grpc`
   */
  readonly smallMessageBytes: number;
  /**
   * Bytes per gradient fusion bucket: the gradients are all-reduced as buckets of this size
   * (the last one smaller), filling bucket k+1 while bucket k is reduced. A multiple of 4 in
   * [1048576, 1073741824] (1 MiB to 1 GiB). @default 67108864 (64 MiB)
   */
  readonly fusionBucketBytes: number;
}

/** `spec`: the job itself. */
export interface JobSpecBody {
  readonly recipe: RecipeSpec;
  readonly data: DataSpec;
  readonly training: TrainingSpec;
  readonly fleet: FleetSpec;
  /** Checkpointing, or `null` for none (the job cannot be resumed after a full restart). @default null */
  readonly checkpoint: CheckpointSpec | null;
  /** Failure limits. @default { maxNonFiniteSteps: 3, maxFailedGenerations: 10 } */
  readonly fault: FaultSpec;
  /**
   * All-reduce settings.
   * @default { transport: 'tcp', compression: 'none', chunkBytes: 1048576, smallMessageBytes: 262144, fusionBucketBytes: 67108864 }
   */
  readonly collective: CollectiveSpec;
}

/** A validated job with every default filled in (what `resolveJobSpec` returns). */
export interface JobSpec {
  readonly apiVersion: typeof JOB_SPEC_API_VERSION;
  readonly kind: typeof JOB_SPEC_KIND;
  readonly metadata: JobMetadata;
  readonly spec: JobSpecBody;
}

// ---------------------------------------------------------------------------------------
// The schema

const DNS_1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_1123_LABEL_RULE = "a DNS-1123 label: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit";
// Kubernetes label keys: an optional DNS-subdomain prefix and '/', then a name of 1-63
// characters. Length is checked first (and aborts), so the regexes only see short strings.
const LABEL_KEY = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const LABEL_KEY_RULE = "a label key: [prefix/]name, name 1-63 letters, digits, '-', '_' or '.' starting and ending with a letter or digit";
const LABEL_VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$/;
const LABEL_VALUE_RULE = "a label value: at most 63 letters, digits, '-', '_' or '.' starting and ending with a letter or digit";

function dnsLabel() {
  const error = `must be ${DNS_1123_LABEL_RULE}`;
  return z.string({ error }).min(1, { error }).max(63, { error, abort: true }).regex(DNS_1123_LABEL, { error });
}

function s3Uri(kind: S3UriKind) {
  const example = kind === 'object' ? 's3://bucket/path/manifest.txt' : 's3://bucket/checkpoints/';
  const rule = `must be an s3:// ${kind} URI such as ${example}`;
  return z
    .string({ error: rule })
    .max(JOB_SPEC_LIMITS.maxUriLength, { error: `${rule}, at most ${JOB_SPEC_LIMITS.maxUriLength} characters`, abort: true })
    .superRefine((uri, ctx) => {
      const problem = s3UriProblem(uri, kind);
      if (problem !== undefined) ctx.addIssue({ code: 'custom', message: `${rule}; ${problem}, got ${showValue(uri)}`, input: uri });
    })
    .meta({ pattern: kind === 'object' ? '^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.*[^/]$' : '^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$' });
}

const LABELS_SCHEMA = z
  .record(
    z
      .string()
      .max(253 + 1 + 63, { error: `must be ${LABEL_KEY_RULE}`, abort: true })
      .regex(LABEL_KEY, { error: `must be ${LABEL_KEY_RULE}` }),
    z
      .string({ error: `must be ${LABEL_VALUE_RULE}` })
      .max(63, { error: `must be ${LABEL_VALUE_RULE}`, abort: true })
      .regex(LABEL_VALUE, { error: `must be ${LABEL_VALUE_RULE}` }),
    { error: 'must be a mapping of label keys to string values' },
  )
  .refine((labels) => Object.keys(labels).length <= JOB_SPEC_LIMITS.maxLabels, {
    error: (issue) => `must hold at most ${JOB_SPEC_LIMITS.maxLabels} labels, got ${Object.keys(issue.input as object).length}`,
  });

const METADATA_SCHEMA = strictMapping({
  name: dnsLabel().describe('Job name, a DNS-1123 label.'),
  labels: LABELS_SCHEMA.default({}).describe('Kubernetes-style labels copied onto pods and metrics.'),
});

const RECIPE_SCHEMA = strictMapping({
  preset: oneOf(PRESET_NAMES).default(DEFAULT_PRESET).describe('The recipe to start from.'),
  overrides: RECIPE_OVERRIDES_SCHEMA.prefault({}),
});

const DATA_SCHEMA = strictMapping({
  manifest: s3Uri('object').describe('s3:// URI of the image manifest object.'),
  format: oneOf(MANIFEST_FORMATS).default('lines').describe('Manifest format.'),
  shards: boundedInt(1, JOB_SPEC_LIMITS.maxShards)
    .nullish()
    .describe('Shards (leases) the manifest is split into; default: one per 1 MiB of manifest, at least 4 per worker.'),
  recordSamples: z.boolean({ error: 'must be true or false' }).default(false).describe('Keep the sample ids of every committed step (verification mode).'),
  shuffleWindow: boundedInt(1, JOB_SPEC_LIMITS.maxShuffleWindow)
    .default(DEFAULT_SHUFFLE_WINDOW)
    .describe('Samples a worker shuffles together within a shard (1: manifest order).'),
});

const TRAINING_SCHEMA = strictMapping({
  steps: boundedInt(1, JOB_SPEC_LIMITS.maxSteps).nullish().describe('Optimiser steps to train (exactly one of steps, epochs).'),
  epochs: boundedInt(1, JOB_SPEC_LIMITS.maxEpochs).nullish().describe('Epochs to train (exactly one of steps, epochs).'),
  globalBatchSize: boundedInt(1, JOB_SPEC_LIMITS.maxGlobalBatchSize)
    .optional()
    .describe("Images per step over the whole fleet; default: the preset's."),
  seed: boundedInt(0, 2 ** 32 - 1).default(0).describe('Seed of every random stream.'),
  backend: oneOf(COMPUTE_BACKEND_NAMES).default('wasm').describe('Compute backend of every worker.'),
}).superRefine((training, ctx) => {
  // null is accepted as "not set" so a Helm override can unset a default.
  const hasSteps = training.steps !== undefined && training.steps !== null;
  const hasEpochs = training.epochs !== undefined && training.epochs !== null;
  if (hasSteps === hasEpochs) {
    ctx.addIssue({
      code: 'custom',
      message: `must set exactly one of steps or epochs, got ${hasSteps ? `both (steps ${training.steps}, epochs ${training.epochs})` : 'neither'}`,
      input: training,
    });
  }
});

function isWorkerCount(n: number | undefined): n is number {
  return n !== undefined && Number.isInteger(n) && n >= 1 && n <= JOB_SPEC_LIMITS.maxWorkers;
}

const FLEET_SCHEMA = strictMapping({
  workers: boundedInt(1, JOB_SPEC_LIMITS.maxWorkers).default(1).describe('Workers to start with.'),
  minWorkers: boundedInt(1, JOB_SPEC_LIMITS.maxWorkers).default(1).describe('Fewest workers the job keeps training with.'),
  maxWorkers: boundedInt(1, JOB_SPEC_LIMITS.maxWorkers).optional().describe('Most workers the fleet grows to; default: workers.'),
}).superRefine((fleet, ctx) => {
  // Only compare counts that are themselves valid, so one bad number is reported once.
  const { workers, minWorkers, maxWorkers } = fleet;
  if (!isWorkerCount(workers)) return;
  if (isWorkerCount(minWorkers) && minWorkers > workers) {
    ctx.addIssue({ code: 'custom', path: ['minWorkers'], message: `must be <= workers (${workers}), got ${minWorkers}`, input: minWorkers });
  }
  if (isWorkerCount(maxWorkers) && maxWorkers < workers) {
    ctx.addIssue({ code: 'custom', path: ['maxWorkers'], message: `must be >= workers (${workers}), got ${maxWorkers}`, input: maxWorkers });
  }
});

const CHECKPOINT_SCHEMA = strictMapping({
  uri: s3Uri('prefix').describe('s3:// prefix under which checkpoints are written.'),
  everySteps: boundedInt(1, JOB_SPEC_LIMITS.maxSteps).default(1000).describe('A checkpoint every this many committed steps.'),
});

const FAULT_SCHEMA = strictMapping({
  maxNonFiniteSteps: boundedInt(1, JOB_SPEC_LIMITS.maxNonFiniteSteps)
    .default(3)
    .describe('Non-finite steps in a row before a rollback to the latest checkpoint.'),
  maxFailedGenerations: boundedInt(1, JOB_SPEC_LIMITS.maxFailedGenerations)
    .default(10)
    .describe('Generations in a row that end without a commit before the job fails.'),
});

const SMALL_MESSAGE_BYTES_SCHEMA = boundedMultipleOf4(0, JOB_SPEC_LIMITS.maxSmallMessageBytes);

const COLLECTIVE_SCHEMA = strictMapping({
  transport: oneOf(COLLECTIVE_TRANSPORTS)
    .default(DEFAULT_COLLECTIVE.transport)
    .describe("How chunks travel: 'tcp' (raw TCP data links, the fast one) or 'grpc' (gRPC streams only)."),
  compression: oneOf(COLLECTIVE_COMPRESSIONS)
    .default(DEFAULT_COLLECTIVE.compression)
    .describe("16-bit wire encoding with float32 sums ('bf16', 'fp16'); transport tcp only."),
  chunkBytes: boundedMultipleOf4(4, JOB_SPEC_LIMITS.maxChunkBytes)
    .default(DEFAULT_COLLECTIVE.chunkBytes)
    .describe('Bytes per ring chunk (float32, before compression).'),
  smallMessageBytes: SMALL_MESSAGE_BYTES_SCHEMA.optional()
    .describe('Vectors of at most this many bytes use recursive doubling; 0 turns it off. Default: 262144 with transport tcp, 0 (the only value allowed) with grpc.'),
  fusionBucketBytes: boundedMultipleOf4(JOB_SPEC_LIMITS.minFusionBucketBytes, JOB_SPEC_LIMITS.maxFusionBucketBytes)
    .default(DEFAULT_COLLECTIVE.fusionBucketBytes)
    .describe('Bytes per gradient fusion bucket (one all-reduce each).'),
}).check(
  z.superRefine(
    (collective, ctx) => {
      // RingAllReduce refuses these combinations (InvalidArgumentError): the spec must never
      // let one reach a worker. Runs even when another field is bad (so every problem is named
      // in one pass), so the value is read defensively and only valid values are compared.
      if (field(collective, 'transport') !== 'grpc') return;
      const compression = field(collective, 'compression');
      if (compression !== 'none' && COLLECTIVE_COMPRESSIONS.some((name) => name === compression)) {
        ctx.addIssue({
          code: 'custom',
          path: ['compression'],
          message: `must be 'none' with transport 'grpc' (compression needs transport 'tcp'), got ${showValue(compression)}`,
          input: compression,
        });
      }
      const smallMessageBytes = field(collective, 'smallMessageBytes');
      if (smallMessageBytes !== undefined && smallMessageBytes !== 0 && SMALL_MESSAGE_BYTES_SCHEMA.safeParse(smallMessageBytes).success) {
        ctx.addIssue({
          code: 'custom',
          path: ['smallMessageBytes'],
          message: `must be 0 with transport 'grpc' (recursive doubling needs transport 'tcp'), got ${showValue(smallMessageBytes)}`,
          input: smallMessageBytes,
        });
      }
    },
    { when: () => true },
  ),
);

const SPEC_SCHEMA = strictMapping({
  recipe: RECIPE_SCHEMA.prefault({}).describe('What is trained: a preset and overrides of its knobs.'),
  data: DATA_SCHEMA.describe('Where the images are.'),
  training: TRAINING_SCHEMA.describe('Run length, batch, seed and backend.'),
  fleet: FLEET_SCHEMA.prefault({}).describe('Elastic worker counts: minWorkers <= workers <= maxWorkers.'),
  checkpoint: CHECKPOINT_SCHEMA.nullish().describe('Checkpointing; absent or null for none.'),
  fault: FAULT_SCHEMA.prefault({}).describe('How many failures in a row the job absorbs.'),
  collective: COLLECTIVE_SCHEMA.prefault({}).describe('All-reduce settings; every rank of the job uses them.'),
}).superRefine((spec, ctx) => {
  // An epoch of a WebDataset manifest is a number of samples only the tars know: the
  // coordinator plans from the manifest's size and would have to read every tar to count.
  if (spec.data.format === 'webdataset' && spec.training.epochs !== undefined && spec.training.epochs !== null) {
    ctx.addIssue({
      code: 'custom',
      path: ['training', 'epochs'],
      message: "cannot be used with data.format 'webdataset' (the manifest lists tars, so its size does not tell the sample count); set training.steps instead",
      input: spec.training.epochs,
    });
  }
});

/** `value[key]` if `value` is an object, else `undefined`: for reading a spec that may be malformed. */
function field(value: unknown, key: string): unknown {
  return typeof value === 'object' && value !== null ? (value as Record<string, unknown>)[key] : undefined;
}

function presetOf(value: unknown): PresetName | undefined {
  return PRESET_NAMES.find((name) => name === value);
}

function workerCountOf(value: unknown): number | undefined {
  return typeof value === 'number' && isWorkerCount(value) ? value : undefined;
}

/**
 * Checks across sections. They run even when unrelated fields are broken (so every bad
 * field is named in one pass), so `spec` is read as `unknown` and only fields whose own
 * checks pass are compared.
 */
function checkAcrossSections(spec: unknown, addIssue: (path: PathSegment[], message: string, input: unknown) => void): void {
  const recipe = field(spec, 'recipe');
  const preset = presetOf(field(recipe, 'preset') ?? DEFAULT_PRESET);
  const overrides = field(recipe, 'overrides');
  if (preset !== undefined) {
    const presetsWhere = (has: (name: PresetName) => boolean) => PRESET_NAMES.filter(has).join(', ');
    const ibot = field(overrides, 'ibot');
    if (ibot !== undefined && PRESETS[preset].ibot === null) {
      const allowed = presetsWhere((name) => PRESETS[name].ibot !== null);
      addIssue(['recipe', 'overrides', 'ibot'], `preset '${preset}' has no iBOT objective; ibot overrides are allowed with presets ${allowed}`, ibot);
    }
    const gram = field(overrides, 'gram');
    if (gram !== undefined && PRESETS[preset].gram === null) {
      const allowed = presetsWhere((name) => PRESETS[name].gram !== null);
      addIssue(['recipe', 'overrides', 'gram'], `preset '${preset}' has no Gram anchoring; gram overrides are allowed with presets ${allowed}`, gram);
    }
  }
  // Every rank needs at least one image of the global batch per step.
  const batch = field(field(spec, 'training'), 'globalBatchSize') ?? (preset === undefined ? undefined : PRESETS[preset].globalBatchSize);
  if (typeof batch !== 'number' || !Number.isInteger(batch) || batch < 1) return;
  const fleet = field(spec, 'fleet');
  const maxWorkers = workerCountOf(field(fleet, 'maxWorkers'));
  const workers = workerCountOf(field(fleet, 'workers'));
  const [name, count] = maxWorkers !== undefined ? (['maxWorkers', maxWorkers] as const) : (['workers', workers] as const);
  if (count !== undefined && count > batch) {
    addIssue(['fleet', name], `must be <= training.globalBatchSize (${batch}) so every worker gets at least one image per step, got ${count}`, count);
  }
}

function resolveSpecBody(spec: z.output<typeof SPEC_SCHEMA>): JobSpecBody {
  const { recipe, data, training, fleet, checkpoint, fault, collective } = spec;
  const common = {
    globalBatchSize: training.globalBatchSize ?? PRESETS[recipe.preset].globalBatchSize,
    seed: training.seed,
    backend: training.backend,
  };
  // The training check guarantees exactly one of steps / epochs is set.
  const length: TrainingSpec =
    training.steps !== undefined && training.steps !== null
      ? { steps: training.steps, epochs: null, ...common }
      : { steps: null, epochs: training.epochs ?? 0, ...common };
  return {
    recipe: { preset: recipe.preset, overrides: recipe.overrides },
    data: { manifest: data.manifest, format: data.format, shards: data.shards ?? null, recordSamples: data.recordSamples, shuffleWindow: data.shuffleWindow },
    training: length,
    fleet: { workers: fleet.workers, minWorkers: fleet.minWorkers, maxWorkers: fleet.maxWorkers ?? fleet.workers },
    checkpoint:
      checkpoint === undefined || checkpoint === null ? null : { uri: normalizeS3Prefix(checkpoint.uri), everySteps: checkpoint.everySteps },
    fault: { maxNonFiniteSteps: fault.maxNonFiniteSteps, maxFailedGenerations: fault.maxFailedGenerations },
    collective: {
      transport: collective.transport,
      compression: collective.compression,
      chunkBytes: collective.chunkBytes,
      smallMessageBytes: collective.smallMessageBytes ?? (collective.transport === 'tcp' ? DEFAULT_COLLECTIVE.smallMessageBytes : 0),
      fusionBucketBytes: collective.fusionBucketBytes,
    },
  };
}

/**
 * The job spec schema. Parsing with it validates, fills defaults and returns a
 * {@link JobSpec}; prefer `resolveJobSpec`, which turns zod's issues into a
 * `JobSpecError` naming every bad field.
 */
export const JOB_SPEC_SCHEMA = strictMapping({
  apiVersion: z.literal(JOB_SPEC_API_VERSION, { error: `must be '${JOB_SPEC_API_VERSION}'` }).describe('Spec version.'),
  kind: z.literal(JOB_SPEC_KIND, { error: `must be '${JOB_SPEC_KIND}'` }).describe('Object kind.'),
  metadata: METADATA_SCHEMA.describe('Job name and labels.'),
  spec: SPEC_SCHEMA.describe('The training job.'),
})
  .check(
    z.superRefine(
      (job, ctx) => {
        // `job` may be partly invalid, or not an object at all, here (see `when`): read it defensively.
        checkAcrossSections(field(job, 'spec'), (path, message, input) => ctx.addIssue({ code: 'custom', path: ['spec', ...path], message, input }));
      },
      { when: () => true },
    ),
  )
  .transform((job): JobSpec => ({
    apiVersion: job.apiVersion,
    kind: job.kind,
    metadata: { name: job.metadata.name, labels: job.metadata.labels },
    spec: resolveSpecBody(job.spec),
  }))
  .describe('A dinofleet training job.');

/** A job spec as users write it: everything with a default may be left out. */
export type JobSpecInput = z.input<typeof JOB_SPEC_SCHEMA>;
