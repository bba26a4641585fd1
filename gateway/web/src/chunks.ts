// How a file is cut into upload chunks: consecutive [offset, offset + length) ranges.

export const CHUNK_BYTES = 1024 * 1024;

export interface ChunkRange {
  offset: number;
  length: number;
}

/** Plans the chunks of a file of `size` bytes, starting at `from` (bytes the server already has). */
export function planChunks(size: number, chunkBytes = CHUNK_BYTES, from = 0): ChunkRange[] {
  if (!Number.isInteger(size) || size < 0) throw new RangeError(`bad file size ${size}`);
  if (!Number.isInteger(chunkBytes) || chunkBytes <= 0) throw new RangeError(`bad chunk size ${chunkBytes}`);
  const chunks: ChunkRange[] = [];
  for (let offset = Math.max(0, from); offset < size; offset += chunkBytes) {
    chunks.push({ offset, length: Math.min(chunkBytes, size - offset) });
  }
  return chunks;
}

/** How long to wait before retry `attempt` (1, 2, …): 0.5 s doubling, at most 8 s. */
export function backoffMs(attempt: number): number {
  return Math.min(8000, 500 * 2 ** Math.max(0, attempt - 1));
}

/** Retries in a row before an upload gives up (about a minute of backoff in all). */
export const MAX_UPLOAD_RETRIES = 10;
