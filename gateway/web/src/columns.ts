// One column of ReadColumns (Arrow IPC, a self-contained stream a message) decoded into the
// typed arrays the map and filters use, one entry per map point. No DOM: tested in Node.
//
// - dictionary<int32, string> (a category): the indices are copied as they stand into an
//   Int32Array of codes (-1 = null) and the dictionary becomes the labels, most frequent
//   first as the server sends it (the same dictionary in every message);
// - numbers (float, int, int64 as BigInt, decimal-free): a Float64Array, NaN = null;
// - anything else (bool, plain strings, timestamps): plain values, then `toColumnData`.

import { tableFromIPC, makeVector, DataType, type Data, type Table, type Vector } from "apache-arrow";
import { toColumnData, type ColumnData } from "./filters";

type Plain = string | number | boolean | null;

/** Assembles one column from ReadColumns batches; `pointOfRow` maps a dataset row to a map point (-1: not on the map). */
export class ColumnAssembler {
  private kind: "category" | "number" | "plain" | null = null;
  private codes: Int32Array | null = null;
  private numbers: Float64Array | null = null;
  private plain: Plain[] | null = null;
  private dict: string[] = [];
  rows = 0;
  totalRows = 0;

  constructor(
    private readonly n: number,
    private readonly pointOfRow: (row: number) => number,
    private readonly column = 0,
  ) {}

  /** Adds one ReadColumns message: rows [startRow, startRow + count) in `ipc`. */
  add(startRow: number, ipc: Uint8Array | Table, totalRows = 0): void {
    const table = ipc instanceof Uint8Array ? tableFromIPC(ipc) : ipc;
    const vector = table.getChildAt(this.column);
    if (!vector) throw new Error(`ReadColumns batch has no column ${this.column}`);
    if (this.kind === null) this.start(vector);
    let row = startRow;
    for (const data of vector.data) {
      this.addData(data, row);
      row += data.length;
    }
    this.rows += row - startRow;
    if (totalRows) this.totalRows = totalRows;
  }

  private start(vector: Vector): void {
    const type = vector.type;
    if (DataType.isDictionary(type) && DataType.isUtf8(type.dictionary)) {
      this.kind = "category";
      this.codes = new Int32Array(this.n).fill(-1);
    } else if (DataType.isFloat(type) || DataType.isInt(type)) {
      this.kind = "number";
      this.numbers = new Float64Array(this.n).fill(Number.NaN);
    } else {
      this.kind = "plain";
      this.plain = new Array<Plain>(this.n).fill(null);
    }
  }

  private addData(data: Data, startRow: number): void {
    const len = data.length;
    const nulls = data.nullCount > 0;
    if (this.kind === "category") {
      const remap = this.remapFor(data.dictionary);
      const idx = data.values as Int32Array;
      const codes = this.codes!;
      for (let i = 0; i < len; i++) {
        const p = this.pointOfRow(startRow + i);
        if (p < 0) continue;
        if (nulls && !data.getValid(i)) codes[p] = -1;
        else codes[p] = remap ? remap[idx[data.offset + i]] : idx[data.offset + i];
      }
    } else if (this.kind === "number") {
      const vals = data.values as ArrayLike<number | bigint>;
      const out = this.numbers!;
      for (let i = 0; i < len; i++) {
        const p = this.pointOfRow(startRow + i);
        if (p < 0) continue;
        out[p] = nulls && !data.getValid(i) ? Number.NaN : Number(vals[data.offset + i]);
      }
    } else {
      const out = this.plain!;
      // Plain values through the Arrow vector's own getter (bools, strings, dates).
      for (let i = 0; i < len; i++) {
        const p = this.pointOfRow(startRow + i);
        if (p < 0) continue;
        if (nulls && !data.getValid(i)) continue;
        out[p] = plainOf(getFrom(data, i));
      }
    }
  }

  private lastDictionary: Vector | undefined;
  private lastRemap: Int32Array | null = null;
  private dictIndex: Map<string, number> | null = null;

  /**
   * The server sends the same dictionary in every message, so its indices are codes as they
   * stand (null here); a message whose dictionary differs is remapped onto the first one's.
   */
  private remapFor(d: Vector | undefined): Int32Array | null {
    if (!d || d === this.lastDictionary) return this.lastRemap;
    const labels: string[] = [];
    for (let k = 0; k < d.length; k++) labels.push(String(d.get(k) ?? ""));
    this.lastDictionary = d;
    if (this.dict.length === 0) {
      this.dict = labels;
      return (this.lastRemap = null);
    }
    if (labels.length <= this.dict.length && labels.every((l, k) => l === this.dict[k])) return (this.lastRemap = null);
    const index = (this.dictIndex ??= new Map(this.dict.map((l, k) => [l, k])));
    const remap = new Int32Array(labels.length);
    labels.forEach((l, k) => {
      let c = index.get(l);
      if (c === undefined) index.set(l, (c = this.dict.push(l) - 1));
      remap[k] = c;
    });
    return (this.lastRemap = remap);
  }

  finish(): ColumnData {
    if (this.kind === "category") return { kind: "category", codes: this.codes!, dict: this.dict };
    if (this.kind === "number") {
      const values = this.numbers!;
      let min = Infinity, max = -Infinity;
      for (let i = 0; i < values.length; i++) {
        const v = values[i];
        if (v < min) min = v;
        if (v > max) max = v;
      }
      if (!Number.isFinite(min)) (min = 0), (max = 0);
      return { kind: "number", values, min, max };
    }
    return toColumnData(this.plain ?? new Array<Plain>(this.n).fill(null));
  }
}

/** One value of a Data chunk, read through a one-chunk Vector. */
function getFrom(data: Data, i: number): unknown {
  return vectorOf(data).get(i);
}

const vectors = new WeakMap<Data, Vector>();
function vectorOf(data: Data): Vector {
  let v = vectors.get(data);
  if (!v) vectors.set(data, (v = makeVector(data)));
  return v;
}

function plainOf(v: unknown): Plain {
  if (v === null || v === undefined) return null;
  if (typeof v === "bigint") return Number(v);
  if (typeof v === "number" || typeof v === "string" || typeof v === "boolean") return v;
  if (v instanceof Date) return v.toISOString();
  return String(v);
}

/** Decodes a whole ReadColumns stream's messages for several columns at once. */
export function assembleColumns(
  names: string[],
  n: number,
  pointOfRow: (row: number) => number,
  messages: Iterable<{ startRow: number | bigint; arrowIpc: Uint8Array }>,
): Map<string, ColumnData> {
  const parts = names.map((_, c) => new ColumnAssembler(n, pointOfRow, c));
  for (const m of messages) {
    const table = tableFromIPC(m.arrowIpc);
    for (const a of parts) a.add(Number(m.startRow), table);
  }
  return new Map(names.map((name, c) => [name, parts[c].finish()]));
}
