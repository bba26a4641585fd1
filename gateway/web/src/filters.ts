// Column values as typed arrays (one entry per map point) and the filter logic on them:
// which points pass the category, range, search and selection filters, counts per legend
// entry, and small histograms. No DOM: tested in Node.

import type { Filters } from "./viewstate";

/** Strings (and booleans) as codes into a dictionary; -1 is null. */
export interface CategoryColumn {
  kind: "category";
  codes: Int32Array;
  dict: string[];
}

/** Numbers; NaN is null. */
export interface NumberColumn {
  kind: "number";
  values: Float64Array;
  min: number;
  max: number;
}

export type ColumnData = CategoryColumn | NumberColumn;

/**
 * Typed column data from plain values. A column whose non-null values are all numbers is
 * numeric; anything else is categorical (numbers become their text).
 */
export function toColumnData(values: ArrayLike<string | number | boolean | null>): ColumnData {
  const n = values.length;
  let numeric = true;
  for (let i = 0; i < n; i++) {
    const v = values[i];
    if (v !== null && typeof v !== "number") {
      numeric = false;
      break;
    }
  }
  if (numeric) {
    const out = new Float64Array(n);
    let min = Infinity, max = -Infinity;
    for (let i = 0; i < n; i++) {
      const v = values[i];
      out[i] = typeof v === "number" ? v : Number.NaN;
      if (typeof v === "number" && Number.isFinite(v)) {
        if (v < min) min = v;
        if (v > max) max = v;
      }
    }
    if (!Number.isFinite(min)) (min = 0), (max = 0);
    return { kind: "number", values: out, min, max };
  }
  const codes = new Int32Array(n);
  const index = new Map<string, number>();
  const dict: string[] = [];
  for (let i = 0; i < n; i++) {
    const v = values[i];
    if (v === null) {
      codes[i] = -1;
      continue;
    }
    const key = String(v);
    let c = index.get(key);
    if (c === undefined) {
      c = dict.length;
      dict.push(key);
      index.set(key, c);
    }
    codes[i] = c;
  }
  return { kind: "category", codes, dict };
}

/** The text of point i's value ("" for null). */
export function cellOf(col: ColumnData, i: number): string {
  if (col.kind === "number") {
    const v = col.values[i];
    return Number.isNaN(v) ? "" : String(v);
  }
  const c = col.codes[i];
  return c < 0 ? "" : col.dict[c];
}

export interface MaskInputs {
  /** Number of points. */
  n: number;
  filters: Filters;
  /** Column data by name (only the filtered columns are needed). */
  columns: Map<string, ColumnData>;
  /** Point indexes of the search hits. */
  searchHits?: ArrayLike<number>;
  /** Point indexes of the selection. */
  selected?: ArrayLike<number>;
  /** Legend-hidden points: a key per point and the hidden keys. */
  keyOf?: (i: number) => string;
  hidden?: Set<string>;
}

/**
 * 1 for each point that passes every filter, 0 otherwise; and how many pass. A filter on a
 * column that is not loaded yet lets everything through.
 */
export function filterMask(inp: MaskInputs): { mask: Uint8Array; count: number } {
  const { n, filters } = inp;
  const mask = new Uint8Array(n).fill(1);
  for (const [name, keep] of Object.entries(filters.categories)) {
    const col = inp.columns.get(name);
    if (!col) continue;
    const wanted = new Set(keep);
    if (col.kind === "category") {
      const ok = new Uint8Array(col.dict.length + 1);
      col.dict.forEach((v, c) => (ok[c + 1] = wanted.has(v) ? 1 : 0));
      ok[0] = wanted.has("") || wanted.has("__null__") ? 1 : 0;
      for (let i = 0; i < n; i++) if (!ok[col.codes[i] + 1]) mask[i] = 0;
    } else {
      for (let i = 0; i < n; i++) if (!wanted.has(cellOf(col, i))) mask[i] = 0;
    }
  }
  for (const [name, [lo, hi]] of Object.entries(filters.ranges)) {
    const col = inp.columns.get(name);
    if (!col || col.kind !== "number") continue;
    for (let i = 0; i < n; i++) {
      const v = col.values[i];
      if (!(v >= lo && v <= hi)) mask[i] = 0;
    }
  }
  const keepOnly = (pts: ArrayLike<number> | undefined) => {
    const keep = new Uint8Array(n);
    if (pts) for (let k = 0; k < pts.length; k++) if (pts[k] >= 0 && pts[k] < n) keep[pts[k]] = 1;
    for (let i = 0; i < n; i++) mask[i] &= keep[i];
  };
  if (filters.searchOnly) keepOnly(inp.searchHits);
  if (filters.selectionOnly) keepOnly(inp.selected);
  if (inp.keyOf && inp.hidden?.size) {
    for (let i = 0; i < n; i++) if (mask[i] && inp.hidden.has(inp.keyOf(i))) mask[i] = 0;
  }
  let count = 0;
  for (let i = 0; i < n; i++) count += mask[i];
  return { mask, count };
}

/** Indexes where mask is 1. */
export function maskIndexes(mask: Uint8Array): Uint32Array {
  let count = 0;
  for (let i = 0; i < mask.length; i++) count += mask[i];
  const out = new Uint32Array(count);
  for (let i = 0, k = 0; i < mask.length; i++) if (mask[i]) out[k++] = i;
  return out;
}

export interface Histogram {
  lo: number;
  hi: number;
  /** Points per bin, all of them. */
  counts: number[];
  /** Points per bin that pass the mask. */
  passing: number[];
}

/** Equal-width bins over [min, max]; `mask` (optional) gives the passing counts too. */
export function histogram(col: NumberColumn, bins = 24, mask?: Uint8Array): Histogram {
  const counts = new Array<number>(bins).fill(0);
  const passing = new Array<number>(bins).fill(0);
  const { min: lo, max: hi, values } = col;
  const width = hi > lo ? (hi - lo) / bins : 1;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!Number.isFinite(v)) continue;
    const b = Math.min(bins - 1, Math.max(0, Math.floor((v - lo) / width)));
    counts[b]++;
    if (!mask || mask[i]) passing[b]++;
  }
  return { lo, hi, counts, passing };
}

/** Count of points per category value (all, and passing the mask). */
export function categoryCounts(col: CategoryColumn, mask?: Uint8Array): { value: string; count: number; passing: number }[] {
  const all = new Array<number>(col.dict.length).fill(0);
  const pass = new Array<number>(col.dict.length).fill(0);
  for (let i = 0; i < col.codes.length; i++) {
    const c = col.codes[i];
    if (c < 0) continue;
    all[c]++;
    if (!mask || mask[i]) pass[c]++;
  }
  return col.dict.map((value, c) => ({ value, count: all[c], passing: pass[c] })).sort((a, b) => b.count - a.count);
}

/** Points per cluster id among the given points. */
export function countsByCluster(clusters: Int32Array, points: ArrayLike<number>): Map<number, number> {
  const out = new Map<number, number>();
  for (let k = 0; k < points.length; k++) {
    const id = clusters[points[k]];
    out.set(id, (out.get(id) ?? 0) + 1);
  }
  return out;
}
