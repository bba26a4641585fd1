// Row texts for the tooltip and the match lists: the embedded columns (or the columns
// asked for, each prefixed with its name), read with BatchGetRows and cached.

import { ingest } from "./api";
import { valueText } from "./table";

export class RowTexts {
  private readonly text = new Map<string, string>();

  constructor(
    private readonly datasetName: string,
    /** The embedded columns: their values are shown bare. */
    readonly textColumns: string[],
  ) {}

  /** The text of a row already read with these columns, or undefined. */
  cached(row: number, columns: string[] = this.textColumns): string | undefined {
    return this.text.get(key(columns, row));
  }

  async of(rows: number[], columns: string[] = this.textColumns): Promise<Map<number, string>> {
    const labelled = columns !== this.textColumns;
    const missing = [...new Set(rows.filter((r) => !this.text.has(key(columns, r))))];
    for (let k = 0; k < missing.length; k += 1000) {
      const res = await ingest.batchGetRows({ parent: this.datasetName, indexes: missing.slice(k, k + 1000).map(BigInt), columns });
      for (const r of res.rows)
        this.text.set(key(columns, Number(r.index)), r.values.map((v, i) => (labelled ? `${res.columns[i]}: ${valueText(v)}` : valueText(v))).filter((t) => t !== "").join("\n") || "(empty)");
    }
    return new Map(rows.map((r) => [r, this.text.get(key(columns, r)) ?? "(row not found)"]));
  }
}

const key = (columns: string[], row: number) => `${columns.join("\u0000")}|${row}`;
