import type { ManifestRecord } from './manifest-splits.ts';

/**
 * Manifest line format: an object key, optionally followed by one TAB and a label
 * (`train/n01440764/img_1.JPEG\tn01440764`). The label is kept as text: Fashion-MNIST
 * manifests carry class indices, ImageNet ones synset ids; the evaluator maps them.
 */

/** A parsed manifest line. */
export interface ManifestEntry {
  /** Byte offset of the line in the manifest: the sample's stable id. */
  readonly offset: number;
  /** Object key, relative to the bucket (and prefix) the job names. */
  readonly key: string;
  /** Label text after the TAB, if the line has one. */
  readonly label?: string;
}

/** Thrown for a manifest line that is not `key` or `key<TAB>label`. */
export class ManifestRecordError extends Error {
  override readonly name = 'ManifestRecordError';
  /** Stable code. */
  readonly code = 'invalid_manifest_record';
  /** Byte offset of the bad line. */
  readonly offset: number;

  constructor(offset: number, reason: string) {
    super(`manifest line at byte ${offset}: ${reason}`);
    this.offset = offset;
  }
}

/** Parses one record into key and optional label; throws {@link ManifestRecordError}. */
export function parseManifestRecord(record: ManifestRecord): ManifestEntry {
  const { offset, text } = record;
  const tab = text.indexOf('\t');
  const key = tab === -1 ? text : text.slice(0, tab);
  if (key === '') throw new ManifestRecordError(offset, 'the object key is empty');
  if (tab === -1) return { offset, key };
  const label = text.slice(tab + 1);
  if (label === '') throw new ManifestRecordError(offset, 'a TAB is followed by an empty label');
  if (label.includes('\t')) throw new ManifestRecordError(offset, 'more than one TAB (expected key<TAB>label)');
  return { offset, key, label };
}
