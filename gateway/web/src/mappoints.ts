// The points of one 2-D map once they are in: where each is drawn, its row and cluster, and
// the way back from a row to its point. Built from a PointSet; no DOM, tested in Node.

import { countsByCluster } from "./filters";
import type { Cluster } from "./gen/embedviz/v1/projection_pb";
import { normalizeCoordinates, type PointSet } from "./points";

export interface MapPoints {
  /** Points on the map. */
  n: number;
  /** Points the server said the map has. */
  total: number;
  /** Position of point i in normalised map coordinates ([-1, 1]). */
  x: Float32Array;
  y: Float32Array;
  /** Dataset row of point i (arrays may be longer than n). */
  rows: Uint32Array;
  /** Cluster of point i, -1 for noise. */
  clusters: Int32Array;
  /** Cluster ids in legend order: by id, noise last. */
  clusterIds: number[];
  clusterSize: Map<number, number>;
  /** The point of a dataset row, or -1. */
  pointOfRow(row: number): number;
  /** A cluster's label, or "cluster 3" / "noise" when it has none. */
  clusterLabel(id: number): string;
  /** A cluster's terms, best first ([] when unlabelled). */
  clusterTerms(id: number): string[];
  /** Cluster levels: 1 when the map has only the clusters its points carry, up to 3. */
  levels: number;
  /** The cluster of each point at `level` (0: `clusters`; coarser levels through each
   * cluster's parent; noise stays -1). */
  clustersAt(level: number): Int32Array;
}

/** Each point's cluster one level up, through the clusters' parent ids. */
export function liftClusters(clusters: Int32Array, n: number, parentOf: Map<number, number>): Int32Array {
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const id = clusters[i];
    out[i] = id < 0 ? -1 : (parentOf.get(id) ?? -1);
  }
  return out;
}

export function mapPoints(set: PointSet, total: number, clusters: Cluster[]): MapPoints {
  const n = set.length;
  const { x, y } = normalizeCoordinates(set.coords, n, set.dimensions);
  let maxRow = -1;
  for (let i = 0; i < n; i++) if (set.rows[i] > maxRow) maxRow = set.rows[i];
  const pointOf = new Int32Array(maxRow + 1).fill(-1);
  for (let i = 0; i < n; i++) pointOf[set.rows[i]] = i;
  const byId = new Map<number, Cluster>();
  for (const c of clusters) if (!byId.has(c.id)) byId.set(c.id, c);
  const levels = Math.max(1, ...clusters.map((c) => c.level + 1));
  const parentOf = new Map<number, number>();
  for (const c of clusters) if (c.parentId >= 0) parentOf.set(c.id, c.parentId);
  const byLevel: Int32Array[] = [set.clusters];
  for (let level = 1; level < levels; level++) byLevel.push(liftClusters(byLevel[level - 1], n, parentOf));
  return {
    n,
    total,
    x,
    y,
    rows: set.rows,
    clusters: set.clusters,
    clusterIds: [...new Set(set.clusters.subarray(0, n))].sort((a, b) => Number(a < 0) - Number(b < 0) || a - b),
    clusterSize: countsByCluster(set.clusters, Array.from({ length: n }, (_, i) => i)),
    pointOfRow: (row) => (row >= 0 && row < pointOf.length ? pointOf[row] : -1),
    clusterLabel: (id) => byId.get(id)?.label || (id < 0 ? "noise" : `cluster ${id}`),
    clusterTerms: (id) => byId.get(id)?.terms ?? [],
    levels,
    clustersAt: (level) => byLevel[Math.max(0, Math.min(level, levels - 1))],
  };
}
