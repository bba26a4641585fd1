// Points of a projection as typed arrays, built straight from StreamPoints' packed bytes.

/** The fields of one StreamPointsResponse this module reads. */
export interface PointChunk {
  count: number;
  dimensions: number;
  rowIndexes: Uint8Array;
  coordinates: Uint8Array;
  clusterIds: Uint8Array;
  totalCount: bigint | number;
  /** POINT_ENCODING_PACKED: `count` records of x, y (, z) float32 and a uint16 cluster. */
  packed?: Uint8Array;
  /** Row index of the chunk's first point (packed chunks: point i is row start + i). */
  start?: bigint | number;
}

/** Bytes a packed record takes: 12 for 2-D, 16 for 3-D. */
export function packedRecordSize(dimensions: number): number {
  return dimensions * 4 + 4;
}

const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * Copies `count` 4-byte little-endian elements from `src` into `dest` starting at element
 * `at`. Works whatever the alignment of src.byteOffset (a slice of a protobuf buffer can
 * start at any byte), because it copies bytes rather than viewing them.
 */
function copyWords(
  dest: Float32Array | Uint32Array | Int32Array,
  at: number,
  src: Uint8Array,
  count: number,
  what: string,
): void {
  if (src.byteLength !== count * 4) {
    throw new Error(`${what}: expected ${count * 4} bytes, got ${src.byteLength}`);
  }
  if (at + count > dest.length) throw new Error(`${what}: chunk overruns the point buffer`);
  if (HOST_IS_LITTLE_ENDIAN) {
    new Uint8Array(dest.buffer, dest.byteOffset + at * 4, count * 4).set(src);
    return;
  }
  const view = new DataView(src.buffer, src.byteOffset, src.byteLength);
  for (let i = 0; i < count; i++) {
    if (dest instanceof Float32Array) dest[at + i] = view.getFloat32(i * 4, true);
    else if (dest instanceof Uint32Array) dest[at + i] = view.getUint32(i * 4, true);
    else dest[at + i] = view.getInt32(i * 4, true);
  }
}

/** One chunk decoded on its own. */
export function decodePointChunk(chunk: PointChunk): {
  rows: Uint32Array;
  coords: Float32Array;
  clusters: Int32Array;
} {
  const n = chunk.count;
  const dims = chunk.dimensions || 2;
  const rows = new Uint32Array(n);
  const coords = new Float32Array(n * dims);
  const clusters = new Int32Array(n);
  copyWords(rows, 0, chunk.rowIndexes, n, "row_indexes");
  copyWords(coords, 0, chunk.coordinates, n * dims, "coordinates");
  copyWords(clusters, 0, chunk.clusterIds, n, "cluster_ids");
  return { rows, coords, clusters };
}

/** Accumulates the chunks of a StreamPoints call into arrays allocated once. */
export class PointSet {
  rows = new Uint32Array(0);
  coords = new Float32Array(0);
  clusters = new Int32Array(0);
  dimensions = 2;
  length = 0;

  add(chunk: PointChunk): void {
    const n = chunk.count;
    const dims = chunk.dimensions || 2;
    if (this.length === 0) this.dimensions = dims;
    else if (dims !== this.dimensions) throw new Error(`chunk has ${dims} dimensions, expected ${this.dimensions}`);
    this.reserve(Math.max(Number(chunk.totalCount), this.length + n));
    if (chunk.packed && chunk.packed.byteLength) {
      this.addPacked(chunk.packed, n, dims, Number(chunk.start ?? 0));
      return;
    }
    copyWords(this.rows, this.length, chunk.rowIndexes, n, "row_indexes");
    copyWords(this.coords, this.length * dims, chunk.coordinates, n * dims, "coordinates");
    copyWords(this.clusters, this.length, chunk.clusterIds, n, "cluster_ids");
    this.length += n;
  }

  /** 12-byte (2-D) or 16-byte (3-D) records; the row is implicit: start + i. */
  private addPacked(bytes: Uint8Array, n: number, dims: number, start: number): void {
    const size = packedRecordSize(dims);
    if (bytes.byteLength !== n * size) throw new Error(`packed: expected ${n * size} bytes, got ${bytes.byteLength}`);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const at = this.length;
    for (let i = 0; i < n; i++) {
      const o = i * size;
      this.rows[at + i] = start + i;
      for (let a = 0; a < dims; a++) this.coords[(at + i) * dims + a] = view.getFloat32(o + 4 * a, true);
      const c = view.getUint16(o + 4 * dims, true);
      this.clusters[at + i] = c === 0xffff ? -1 : c;
    }
    this.length += n;
  }

  private reserve(capacity: number): void {
    if (capacity <= this.rows.length) return;
    const rows = new Uint32Array(capacity);
    const coords = new Float32Array(capacity * this.dimensions);
    const clusters = new Int32Array(capacity);
    rows.set(this.rows.subarray(0, this.length));
    coords.set(this.coords.subarray(0, this.length * this.dimensions));
    clusters.set(this.clusters.subarray(0, this.length));
    this.rows = rows;
    this.coords = coords;
    this.clusters = clusters;
  }
}

/**
 * Maps the first two coordinates of each point into [-1, 1] (what regl-scatterplot
 * expects), with one scale for both axes so the map keeps its shape, centred.
 * Non-finite coordinates are placed at the centre.
 */
export function normalizeCoordinates(
  coords: Float32Array,
  count: number,
  dimensions = 2,
): { x: Float32Array; y: Float32Array } {
  let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
  for (let i = 0; i < count; i++) {
    const x = coords[i * dimensions], y = coords[i * dimensions + 1];
    if (Number.isFinite(x)) {
      if (x < minX) minX = x;
      if (x > maxX) maxX = x;
    }
    if (Number.isFinite(y)) {
      if (y < minY) minY = y;
      if (y > maxY) maxY = y;
    }
  }
  const cx = Number.isFinite(minX) ? (minX + maxX) / 2 : 0;
  const cy = Number.isFinite(minY) ? (minY + maxY) / 2 : 0;
  const half = Math.max(Number.isFinite(minX) ? (maxX - minX) / 2 : 0, Number.isFinite(minY) ? (maxY - minY) / 2 : 0);
  const scale = half > 0 ? 1 / half : 0;
  const x = new Float32Array(count);
  const y = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    const px = coords[i * dimensions], py = coords[i * dimensions + 1];
    x[i] = Number.isFinite(px) ? Math.max(-1, Math.min(1, (px - cx) * scale)) : 0;
    y[i] = Number.isFinite(py) ? Math.max(-1, Math.min(1, (py - cy) * scale)) : 0;
  }
  return { x, y };
}

/**
 * Turns cluster ids (any int32, -1 for noise) into dense category indexes 0..k-1 for
 * colouring, ordered by id with noise last, and returns the ids in category order.
 */
export function clusterCategories(clusters: Int32Array, count: number): { categories: Float32Array; ids: number[] } {
  const seen = new Set<number>();
  for (let i = 0; i < count; i++) seen.add(clusters[i]);
  const ids = [...seen].sort((a, b) => Number(a < 0) - Number(b < 0) || a - b);
  const index = new Map(ids.map((id, i) => [id, i]));
  const categories = new Float32Array(count);
  for (let i = 0; i < count; i++) categories[i] = index.get(clusters[i]) ?? 0;
  return { categories, ids };
}
