// The dataset's columns as the map needs them: read once with ReadColumns (Arrow IPC,
// decoded straight into typed arrays in point order) when first asked for, then cached.

import { ingest, withAuthRetry } from "./api";
import { formatCount } from "./dom";
import type { ColumnData } from "./filters";
import type { Column } from "./gen/embedviz/v1/ingest_pb";

/** Rows a ReadColumns message (the server allows up to 262,144). */
const COLUMN_BATCH_ROWS = 131_072;

export interface ColumnReaderOptions {
  datasetName: string;
  columns: Column[];
  /** Points on the map, and the point of a row. */
  n: number;
  pointOfRow: (row: number) => number;
  /** Told how far a read has come, in words. */
  onProgress: (text: string) => void;
}

export class ColumnReader {
  /** Columns read so far, by name. */
  readonly cache = new Map<string, ColumnData>();
  private readonly loads = new Map<string, Promise<ColumnData>>();

  constructor(private readonly opts: ColumnReaderOptions) {}

  /** The column's values; one read however many ask at once, tried again after a failure. */
  read(name: string): Promise<ColumnData> {
    const cached = this.loads.get(name);
    if (cached) return cached;
    const { datasetName, columns, n, pointOfRow, onProgress } = this.opts;
    const load = (async () => {
      if (!columns.some((c) => c.name === name)) throw new Error(`column '${name}' not found; the dataset has: ${columns.map((c) => c.name).join(", ")}`);
      // apache-arrow (~190 kB minified) is its own chunk, loaded with the first column.
      const { ColumnAssembler } = await import("./columns");
      const assembler = new ColumnAssembler(n, pointOfRow);
      for await (const res of withAuthRetry(() => ingest.readColumns({ dataset: datasetName, columns: [name], batchRows: COLUMN_BATCH_ROWS }))) {
        assembler.add(Number(res.startRow), res.arrowIpc, Number(res.totalRows));
        onProgress(`reading ${name}: ${formatCount(assembler.rows)} of ${formatCount(assembler.totalRows)} rows…`);
      }
      const data = assembler.finish();
      this.cache.set(name, data);
      return data;
    })();
    this.loads.set(name, load);
    load.catch(() => this.loads.delete(name));
    return load;
  }
}
