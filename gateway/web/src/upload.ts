// Resumable upload: CreateUpload → AppendUploadChunk (1 MiB, offset + CRC-32C) → FinishUpload.

import { ingest } from "./api";
import { CHUNK_BYTES, planChunks } from "./chunks";
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

/** Uploads a file into a project and starts its import; resolves with the new dataset. */
export async function uploadFile(
  project: string,
  file: File,
  onProgress: (sent: number, total: number, bytesPerSecond: number) => void,
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
      // A dropped connection: ask how much arrived and carry on from there, a few times.
      if (++failures > 3) throw err;
      await new Promise((r) => setTimeout(r, 500 * failures));
      const state = await ingest.getUpload({ name: upload.name });
      sent = Number(state.receivedBytes);
      chunks = planChunks(file.size, CHUNK_BYTES, sent);
    }
    const seconds = (performance.now() - started) / 1000;
    onProgress(sent, file.size, seconds > 0 ? sent / seconds : 0);
  }
  return ingest.finishUpload({ name: upload.name, displayName: file.name, format: formatOf(file.name) });
}
