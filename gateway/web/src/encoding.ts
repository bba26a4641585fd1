// How points are coloured and sized: the legend entries of an encoding and the per-point
// values regl-scatterplot draws with (valueA picks the colour, valueB the size). Pure,
// tested in Node.

import type { ColumnData } from "./filters";
import type { MapPoints } from "./mappoints";
import { categoricalPalette, categoryEntries, NOISE_COLOR, numericScale, sequentialRamp, type CategoryEntry } from "./scales";

export interface Encoding {
  mode: "cluster" | "category" | "number";
  /** "" when coloured by cluster. */
  column: string;
  entries: CategoryEntry[];
  /** Legend key of point i. */
  keyOf: (i: number) => string;
  valueA: Float32Array;
  palette: string[];
  range?: { lo: number; hi: number };
}

/** Colour by cluster: one entry per cluster, noise grey. */
export function clusterEncoding(points: Pick<MapPoints, "n" | "clusters" | "clusterIds" | "clusterSize" | "clusterLabel">): Encoding {
  const { n, clusters, clusterIds } = points;
  const palette = categoricalPalette(clusterIds.filter((id) => id >= 0).length);
  let k = 0;
  const entries = clusterIds.map((id) => ({ key: String(id), label: points.clusterLabel(id), color: id < 0 ? NOISE_COLOR : palette[k++], count: points.clusterSize.get(id) ?? 0 }));
  const index = new Map(clusterIds.map((id, i) => [id, i]));
  const valueA = new Float32Array(n);
  for (let i = 0; i < n; i++) valueA[i] = index.get(clusters[i]) ?? 0;
  return { mode: "cluster", column: "", entries, keyOf: (i) => String(clusters[i]), valueA, palette: entries.map((e) => e.color) };
}

/** Colour by a column: a ramp for numbers, the most common values for anything else. */
export function columnEncoding(name: string, col: ColumnData, n: number): Encoding {
  if (col.kind === "number") {
    const scale = numericScale(col.values);
    const valueA = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const t = scale.normalize(col.values[i]);
      valueA[i] = Number.isNaN(t) ? 0 : t;
    }
    return { mode: "number", column: name, entries: [], keyOf: () => "", valueA, palette: sequentialRamp(64), range: { lo: scale.lo, hi: scale.hi } };
  }
  const counts = new Map<string, number>();
  let nulls = 0;
  for (let i = 0; i < n; i++) {
    const c = col.codes[i];
    if (c < 0) nulls++;
    else counts.set(col.dict[c], (counts.get(col.dict[c]) ?? 0) + 1);
  }
  const entries = categoryEntries(counts, nulls);
  const entryIndex = new Map(entries.map((e, i) => [e.key, i]));
  const other = entryIndex.get("__other__") ?? 0;
  const codeEntry = new Int32Array(col.dict.length).map((_, c) => entryIndex.get(col.dict[c]) ?? other);
  const nullEntry = entryIndex.get("__null__") ?? 0;
  const keyOfCode = (c: number) => (c < 0 ? "__null__" : entries[codeEntry[c]].key);
  const valueA = new Float32Array(n);
  for (let i = 0; i < n; i++) valueA[i] = col.codes[i] < 0 ? nullEntry : codeEntry[col.codes[i]];
  return { mode: "category", column: name, entries, keyOf: (i) => keyOfCode(col.codes[i]), valueA, palette: entries.map((e) => e.color) };
}

/** Size by a numeric column: each point's value in [0, 1] (null → 0). */
export function sizeValues(name: string, col: ColumnData, n: number): Float32Array {
  if (col.kind !== "number") throw new Error(`size needs a numeric column; '${name}' holds text`);
  const scale = numericScale(col.values);
  const values = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const t = scale.normalize(col.values[i]);
    values[i] = Number.isNaN(t) ? 0 : t;
  }
  return values;
}

/** regl-scatterplot wants at least two colours for a categorical encoding. */
export function drawPalette(enc: Encoding): string[] {
  if (enc.mode === "number" || enc.palette.length > 1) return enc.palette;
  const only = enc.palette[0] ?? "#4e79a7";
  return [only, only];
}
