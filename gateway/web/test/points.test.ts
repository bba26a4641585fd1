import { describe, expect, it } from "vitest";
import { clusterCategories, decodePointChunk, normalizeCoordinates, PointSet, type PointChunk } from "../src/points";

/** Packs arrays little-endian the way the projection service does. */
function pack(rows: number[], coords: number[], clusters: number[], total: number, pad = 0): PointChunk {
  // Put all three fields in one buffer after `pad` bytes, like a protobuf message buffer,
  // so each field is a Uint8Array view with an arbitrary byteOffset.
  const size = pad + rows.length * 4 + coords.length * 4 + clusters.length * 4;
  const buf = new ArrayBuffer(size);
  const view = new DataView(buf);
  let at = pad;
  const start = (n: number) => {
    const s = at;
    at += n * 4;
    return s;
  };
  const r0 = start(rows.length);
  rows.forEach((v, i) => view.setUint32(r0 + i * 4, v, true));
  const c0 = start(coords.length);
  coords.forEach((v, i) => view.setFloat32(c0 + i * 4, v, true));
  const k0 = start(clusters.length);
  clusters.forEach((v, i) => view.setInt32(k0 + i * 4, v, true));
  return {
    count: rows.length,
    dimensions: 2,
    rowIndexes: new Uint8Array(buf, r0, rows.length * 4),
    coordinates: new Uint8Array(buf, c0, coords.length * 4),
    clusterIds: new Uint8Array(buf, k0, clusters.length * 4),
    totalCount: BigInt(total),
  };
}

describe("decodePointChunk", () => {
  it("decodes packed little-endian rows, coordinates and clusters", () => {
    const chunk = pack([0, 1, 4_000_000_000], [1.5, -2, 0.25, 3, -1e-3, 7], [0, 2, -1], 3);
    const { rows, coords, clusters } = decodePointChunk(chunk);
    expect([...rows]).toEqual([0, 1, 4_000_000_000]);
    expect([...coords]).toEqual([1.5, -2, 0.25, 3, Math.fround(-1e-3), 7]);
    expect([...clusters]).toEqual([0, 2, -1]);
  });

  it("decodes fields whose views start at an odd byteOffset", () => {
    const chunk = pack([7, 9], [0.5, 0.75, -0.5, -0.75], [3, 4], 2, 1);
    expect(chunk.rowIndexes.byteOffset % 4).toBe(1);
    const { rows, coords, clusters } = decodePointChunk(chunk);
    expect([...rows]).toEqual([7, 9]);
    expect([...coords]).toEqual([0.5, 0.75, -0.5, -0.75]);
    expect([...clusters]).toEqual([3, 4]);
  });

  it("rejects a chunk whose byte lengths disagree with its count", () => {
    const chunk = pack([1, 2], [0, 0, 0, 0], [0, 0], 2);
    expect(() => decodePointChunk({ ...chunk, count: 3 })).toThrow(/row_indexes/);
  });
});

describe("PointSet", () => {
  it("joins chunks at odd offsets into one set of arrays sized by total_count", () => {
    const set = new PointSet();
    set.add(pack([0, 1], [0, 1, 2, 3], [0, 1], 3, 3));
    expect(set.rows.length).toBe(3);
    set.add(pack([2], [4, 5], [-1], 3, 1));
    expect(set.length).toBe(3);
    expect([...set.rows]).toEqual([0, 1, 2]);
    expect([...set.coords]).toEqual([0, 1, 2, 3, 4, 5]);
    expect([...set.clusters]).toEqual([0, 1, -1]);
  });

  it("grows when more points arrive than total_count announced", () => {
    const set = new PointSet();
    set.add(pack([0], [1, 1], [0], 1));
    set.add(pack([1], [2, 2], [0], 1));
    expect(set.length).toBe(2);
    expect([...set.rows.subarray(0, 2)]).toEqual([0, 1]);
    expect([...set.coords.subarray(0, 4)]).toEqual([1, 1, 2, 2]);
  });
});

describe("normalizeCoordinates", () => {
  it("maps the wider axis onto [-1, 1] and keeps the aspect ratio", () => {
    const coords = new Float32Array([10, 100, 30, 110, 20, 105]);
    const { x, y } = normalizeCoordinates(coords, 3);
    expect([...x]).toEqual([-1, 1, 0]);
    expect(y[0]).toBeCloseTo(-0.5);
    expect(y[1]).toBeCloseTo(0.5);
    expect(y[2]).toBeCloseTo(0);
  });

  it("keeps every point inside [-1, 1]", () => {
    const n = 1000;
    const coords = new Float32Array(n * 2).map((_, i) => Math.sin(i) * 1e4 + i);
    const { x, y } = normalizeCoordinates(coords, n);
    for (let i = 0; i < n; i++) {
      expect(Math.abs(x[i])).toBeLessThanOrEqual(1);
      expect(Math.abs(y[i])).toBeLessThanOrEqual(1);
    }
    expect(Math.max(...x, ...y)).toBeCloseTo(1);
  });

  it("puts a single point, identical points and non-finite values at the centre", () => {
    expect([...normalizeCoordinates(new Float32Array([5, 5]), 1).x]).toEqual([0]);
    const same = normalizeCoordinates(new Float32Array([2, 3, 2, 3]), 2);
    expect([...same.x, ...same.y]).toEqual([0, 0, 0, 0]);
    const withNaN = normalizeCoordinates(new Float32Array([0, 0, NaN, Infinity, 2, 2]), 3);
    expect([withNaN.x[1], withNaN.y[1]]).toEqual([0, 0]);
    expect([withNaN.x[2], withNaN.y[2]]).toEqual([1, 1]);
  });

  it("reads only the first two of three dimensions", () => {
    const { x, y } = normalizeCoordinates(new Float32Array([0, 0, 99, 2, 2, -99]), 2, 3);
    expect([...x, ...y]).toEqual([-1, 1, -1, 1]);
  });
});

describe("clusterCategories", () => {
  it("numbers clusters densely by id with noise last", () => {
    const { categories, ids } = clusterCategories(new Int32Array([5, -1, 2, 5, 2]), 5);
    expect(ids).toEqual([2, 5, -1]);
    expect([...categories]).toEqual([1, 2, 0, 1, 0]);
  });
});

describe("packed points (12 bytes a 2-D point)", () => {
  it("decodes records with the row implicit from the chunk's start, noise as 0xFFFF", () => {
    const buf = new ArrayBuffer(2 + 3 * 12);
    const view = new DataView(buf, 2);
    const pts: [number, number, number][] = [[1.5, -2, 3], [0, 0.25, -1], [7, 8, 65533]];
    pts.forEach(([x, y, c], i) => {
      view.setFloat32(i * 12, x, true);
      view.setFloat32(i * 12 + 4, y, true);
      view.setUint16(i * 12 + 8, c < 0 ? 0xffff : c, true);
    });
    const set = new PointSet();
    const empty = new Uint8Array(0);
    set.add({ count: 3, dimensions: 2, rowIndexes: empty, coordinates: empty, clusterIds: empty, totalCount: 5n, packed: new Uint8Array(buf, 2, 36), start: 10n });
    expect(set.length).toBe(3);
    expect([...set.rows.subarray(0, 3)]).toEqual([10, 11, 12]);
    expect([...set.coords.subarray(0, 6)]).toEqual([1.5, -2, 0, 0.25, 7, 8]);
    expect([...set.clusters.subarray(0, 3)]).toEqual([3, -1, 65533]);
  });

  it("refuses a chunk of the wrong size", () => {
    const set = new PointSet();
    const empty = new Uint8Array(0);
    expect(() => set.add({ count: 2, dimensions: 2, rowIndexes: empty, coordinates: empty, clusterIds: empty, totalCount: 2, packed: new Uint8Array(20) })).toThrow(/expected 24 bytes/);
  });
});
