// Resumable upload: CreateUpload → AppendUploadChunk (1 MiB, offset + CRC-32C) → FinishUpload.

import { Code, ConnectError, errorMessage, ingest } from "./api";
import { backoffMs, CHUNK_BYTES, MAX_UPLOAD_RETRIES, planChunks } from "./chunks";
import { crc32c } from "./crc32c";
import { DataFormat, type Dataset } from "./gen/embedviz/v1/ingest_pb";

export function formatOf(filename: string): DataFormat {
  const lower = filename.toLowerCase();
  if (lower.endsWith(".csv") || lower.endsWith(".tsv") || lower.endsWith(".txt")) return DataFormat.CSV;
  if (lower.endsWith(".parquet") || lower.endsWith(".pq")) return DataFormat.PARQUET;
  if (lower.endsWith(".jsonl") || lower.endsWith(".ndjson")) return DataFormat.JSONL;
  if (lower.endsWith(".arrow") || lower.endsWith(".feather") || lower.endsWith(".ipc")) return DataFormat.ARROW;
  return DataFormat.UNSPECIFIED;
}

/**
 * Uploads a file into a project and starts its import; resolves with the new dataset.
 * When a chunk call fails (a dropped connection, a server restart), it waits with
 * backoff, asks the server how many bytes arrived (GetUpload) and goes on from there.
 */
export async function uploadFile(
  project: string,
  file: File,
  onProgress: (sent: number, total: number, bytesPerSecond: number) => void,
  onRetry: (attempt: number, reason: string, waitMs: number) => void = () => {},
): Promise<Dataset> {
  const upload = await ingest.createUpload({
    parent: project,
    upload: { filename: file.name, sizeBytes: BigInt(file.size) },
  });
  const started = performance.now();
  let sent = 0;
  onProgress(0, file.size, 0);
  let chunks = planChunks(file.size, CHUNK_BYTES);
  let failures = 0;
  while (chunks.length > 0) {
    const { offset, length } = chunks[0];
    const data = new Uint8Array(await file.slice(offset, offset + length).arrayBuffer());
    try {
      const res = await ingest.appendUploadChunk({ name: upload.name, offset: BigInt(offset), data, crc32c: crc32c(data) });
      sent = Number(res.receivedBytes) || offset + length;
      chunks.shift();
      failures = 0;
    } catch (err) {
      if (!retryable(err) || ++failures > MAX_UPLOAD_RETRIES) throw err;
      // Wait, then ask how much arrived; if that fails too, the next round tries again.
      for (;;) {
        const wait = backoffMs(failures);
        const w = window as { __embedvizUpload?: { retries: number } };
        w.__embedvizUpload = { retries: (w.__embedvizUpload?.retries ?? 0) + 1 };
        onRetry(failures, errorMessage(err), wait);
        await new Promise((r) => setTimeout(r, wait));
        try {
          const state = await ingest.getUpload({ name: upload.name });
          sent = Number(state.receivedBytes);
          chunks = planChunks(file.size, CHUNK_BYTES, sent);
          break;
        } catch (again) {
          if (!retryable(again) || ++failures > MAX_UPLOAD_RETRIES) throw again;
          err = again;
        }
      }
    }
    const seconds = (performance.now() - started) / 1000;
    onProgress(sent, file.size, seconds > 0 ? sent / seconds : 0);
  }
  return ingest.finishUpload({ name: upload.name, displayName: file.name, format: formatOf(file.name) });
}

/** Failures worth retrying: the network or the server being away, not a refusal. */
function retryable(err: unknown): boolean {
  const code = ConnectError.from(err).code;
  return code === Code.Unavailable || code === Code.Unknown || code === Code.Internal || code === Code.DeadlineExceeded || code === Code.Aborted;
}
