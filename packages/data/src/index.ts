export {
  FASHION_MNIST_CLASS_NAMES,
  fashionMnistCacheDir,
  fashionMnistImage,
  loadFashionMnist,
  type DecodedImage,
  type FashionMnist,
  type FashionMnistOptions,
  type LabelledImages,
} from './fashion-mnist.ts';
export {
  createS3Client,
  DEFAULT_S3_MAX_ATTEMPTS,
  DEFAULT_S3_REGION,
  DEFAULT_S3_REQUEST_TIMEOUT_MS,
  describeS3Config,
  resolveS3Config,
  S3ConfigError,
  type S3Config,
  type S3Credentials,
  type S3Options,
} from './s3-config.ts';
export { getObjectRange, RangeReadError, type ObjectRange, type ObjectRangeOptions } from './s3-range.ts';
export {
  backoffDelayMs,
  DEFAULT_BACKOFF_BASE_MS,
  DEFAULT_BACKOFF_CAP_MS,
  isRetryableS3Error,
  type BackoffOptions,
} from './retry-backoff.ts';
export {
  DEFAULT_MAX_RECORD_BYTES,
  DEFAULT_SPLIT_BLOCK_BYTES,
  MAX_MANIFEST_SPLITS,
  ManifestFormatError,
  ManifestReadError,
  manifestSplit,
  manifestSplitCount,
  planManifestObjectSplits,
  planManifestSplits,
  readSplitRecordBatches,
  readSplitRecords,
  listManifestOffsets,
  statManifest,
  type ManifestObject,
  type ManifestRecord,
  type ManifestSplit,
  type ManifestSplitPlanOptions,
  type ReadSplitOptions,
} from './manifest-splits.ts';
export { ManifestRecordError, parseManifestRecord, type ManifestEntry } from './manifest-record.ts';
export {
  DEFAULT_MAX_DECODE_PIXELS,
  DecodeError,
  DecodeErrorCode,
  decodeImage,
  encodePng,
  type DecodeImageOptions,
} from './image-decode.ts';
export {
  DEFAULT_FETCH_CONCURRENCY,
  DEFAULT_FETCH_RETRIES,
  DEFAULT_MAX_IMAGE_OBJECT_BYTES,
  FetchSkipReason,
  fetchImages,
  fetchObjects,
  isNoSuchKeyError,
  type FetchedImage,
  type FetchedObject,
  type FetchImagesOptions,
} from './image-fetcher.ts';
export { CropPool, CropPoolError, ObjectReadError, allocateCropBatch, cropBatchBytes, type CropJobResult, type CropPoolOptions, type ImageSource } from './crop-pool.ts';
export type { CropTarget, ObjectToFetch } from './crop-pool-protocol.ts';
export { windowPermutation } from './shuffle-window.ts';
export {
  decodeSafetensors,
  encodeSafetensors,
  MAX_SAFETENSORS_HEADER_BYTES,
  SAFETENSORS_METADATA_KEY,
  SafetensorsError,
  type DecodedSafetensors,
  type NamedTensor,
} from './safetensors.ts';
export {
  CHECKPOINT_LATEST_FILE,
  CHECKPOINT_MANIFEST_FILE,
  CHECKPOINT_MODEL_FILE,
  CHECKPOINT_STATE_FILE,
  CheckpointError,
  readCheckpoint,
  writeCheckpoint,
  type CheckpointFile,
  type CheckpointManifest,
  type LoadedCheckpoint,
  type WriteCheckpointOptions,
} from './checkpoint.ts';
export {
  createRecordParser,
  readManifestHeader,
  type LineManifestFormat,
  type ReadManifestHeaderOptions,
  type RecordParser,
  type RecordParserOptions,
} from './manifest-format.ts';
export {
  bytesTarSource,
  DEFAULT_MAX_TAR_EXTENSION_BYTES,
  encodeTar,
  readTarMembers,
  TAR_BLOCK_BYTES,
  TarFormatError,
  TarMemberType,
  type EncodeTarOptions,
  type ReadTarMembersOptions,
  type TarByteSource,
  type TarEntry,
  type TarMember,
  type TarMemberInput,
} from './tar-format.ts';
export {
  DEFAULT_MAX_TAR_MEMBER_BYTES,
  DEFAULT_TAR_BLOCK_BYTES,
  DEFAULT_TAR_READ_RETRIES,
  readWebDatasetSamples,
  TarReadError,
  WEBDATASET_IMAGE_EXTENSIONS,
  webDatasetSampleId,
  type ReadWebDatasetOptions,
  type WebDatasetSample,
} from './webdataset.ts';
