/** Default size of a kept log tail, bytes (64 KiB). */
export const DEFAULT_LOG_TAIL_BYTES = 64 * 1024;

/** Keeps the last `capacityBytes` bytes written to it; for error messages of child processes. */
export class LogTail {
  private chunks: Buffer[] = [];
  private sizeBytes = 0;

  constructor(private readonly capacityBytes: number = DEFAULT_LOG_TAIL_BYTES) {}

  /** Appends a chunk, dropping the oldest bytes beyond the capacity. */
  push(chunk: Buffer | string): void {
    const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    this.chunks.push(buffer);
    this.sizeBytes += buffer.length;
    while (this.sizeBytes > this.capacityBytes && this.chunks.length > 0) {
      const first = this.chunks[0]!;
      const excess = this.sizeBytes - this.capacityBytes;
      if (first.length <= excess) {
        this.chunks.shift();
        this.sizeBytes -= first.length;
      } else {
        this.chunks[0] = first.subarray(excess);
        this.sizeBytes -= excess;
      }
    }
  }

  /** The kept bytes as UTF-8 text. */
  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}
