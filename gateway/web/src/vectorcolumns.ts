// Vectors a dataset brings (no model): which columns can hold them, and which columns a
// point's text is read from on a map of them. Pure; tested in Node.

import type { Embedding } from "./gen/embedviz/v1/embedding_pb";
import type { Column } from "./gen/embedviz/v1/ingest_pb";

const NUMBER = /^(u?int(8|16|32|64)|halffloat|float|double|decimal\d*\(.*\))$/;
const NUMBER_LIST = /^(large_|fixed_size_)?list<[^:]*: *(u?int(8|16|32|64)|halffloat|float|double)>(\[\d+\])?$/;

/** Columns that can hold vectors: lists of numbers first (one is a whole vector), then
 * numeric columns (one number of the vector each). */
export function vectorColumnChoices(columns: Pick<Column, "name" | "type">[]): { lists: string[]; numbers: string[] } {
  return {
    lists: columns.filter((c) => NUMBER_LIST.test(c.type)).map((c) => c.name),
    numbers: columns.filter((c) => NUMBER.test(c.type)).map((c) => c.name),
  };
}

/** The columns a point's text is read from: the embedded ones; for imported vectors
 * without text columns, the dataset's other columns. */
export function shownColumns(emb: Pick<Embedding, "textColumns" | "vectorColumns">, columns: Pick<Column, "name">[]): string[] {
  if (emb.textColumns.length || !emb.vectorColumns.length) return emb.textColumns;
  return columns.map((c) => c.name).filter((name) => !emb.vectorColumns.includes(name));
}

