/**
 * The dinofleet job spec: one zod schema for jobs submitted from the CLI, by tests or
 * through the Helm chart, with the same defaults everywhere.
 */
export {
  COLLECTIVE_COMPRESSIONS,
  COLLECTIVE_TRANSPORTS,
  COMPUTE_BACKEND_NAMES,
  DEFAULT_COLLECTIVE,
  DEFAULT_PRESET,
  JOB_SPEC_API_VERSION,
  JOB_SPEC_KIND,
  DEFAULT_SHUFFLE_WINDOW,
  JOB_SPEC_LIMITS,
  JOB_SPEC_SCHEMA,
  MANIFEST_FORMATS,
  type CheckpointSpec,
  type CollectiveCompression,
  type CollectiveSpec,
  type CollectiveTransport,
  type ComputeBackendName,
  type DataSpec,
  type EpochsTrainingSpec,
  type FaultSpec,
  type FleetSpec,
  type JobMetadata,
  type JobSpec,
  type JobSpecBody,
  type JobSpecInput,
  type ManifestFormat,
  type RecipeSpec,
  type StepsTrainingSpec,
  type TrainingSpec,
} from './job-spec-schema.ts';
export { JobSpecError, type JobSpecIssue } from './job-spec-error.ts';
export { RECIPE_OVERRIDES_SCHEMA, type RecipeOverrides } from './recipe-overrides.ts';
export { jobSpecJsonSchema, resolveJobSpec, resolveRecipe } from './resolve-job-spec.ts';
export { parseJobSpec, type JobSpecFormat } from './parse-job-spec.ts';
export { normalizeS3Prefix, parseS3Uri, s3UriProblem, type S3Location, type S3UriKind } from './s3-uri.ts';
