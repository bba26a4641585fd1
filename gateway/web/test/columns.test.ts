import { describe, expect, it } from "vitest";
import { Dictionary, Float64, Int32, Int64, Utf8, Bool, tableToIPC, tableFromArrays, vectorFromArray, Table } from "apache-arrow";
import { ColumnAssembler, assembleColumns } from "../src/columns";

const identity = (row: number) => row;

describe("ReadColumns Arrow IPC → typed arrays", () => {
  it("a dictionary<int32, string> column becomes Int32 codes + labels, nulls -1, across batches", () => {
    const dict = new Dictionary(new Utf8(), new Int32());
    const b1 = tableToIPC(new Table({ topic: vectorFromArray(["b", "a", null, "b"], dict) }));
    const b2 = tableToIPC(new Table({ topic: vectorFromArray(["a", "b"], dict) }));
    const a = new ColumnAssembler(6, identity);
    a.add(0, b1);
    a.add(4, b2);
    const col = a.finish();
    expect(col.kind).toBe("category");
    if (col.kind !== "category") return;
    expect(col.codes).toBeInstanceOf(Int32Array);
    const labels = Array.from(col.codes, (c) => (c < 0 ? null : col.dict[c]));
    expect(labels).toEqual(["b", "a", null, "b", "a", "b"]);
  });

  it("int64 (BigInt) and float64 become a Float64Array with min/max, nulls NaN", () => {
    const t = new Table({
      stars: vectorFromArray([5n, 1n, null, 3n], new Int64()),
      score: vectorFromArray([0.5, null, -2, 4.25], new Float64()),
    });
    const cols = assembleColumns(["stars", "score"], 4, identity, [{ startRow: 0n, arrowIpc: tableToIPC(t) }]);
    const stars = cols.get("stars")!;
    const score = cols.get("score")!;
    expect(stars.kind).toBe("number");
    expect(score.kind).toBe("number");
    if (stars.kind !== "number" || score.kind !== "number") return;
    expect(stars.values).toBeInstanceOf(Float64Array);
    expect(Array.from(stars.values)).toEqual([5, 1, Number.NaN, 3]);
    expect([stars.min, stars.max]).toEqual([1, 5]);
    expect(Array.from(score.values)).toEqual([0.5, Number.NaN, -2, 4.25]);
    expect([score.min, score.max]).toEqual([-2, 4.25]);
  });

  it("rows map to points: rows not on the map are skipped, points are in map order", () => {
    // Map point p shows dataset row 3 - p; row 4 is not on the map.
    const pointOfRow = (row: number) => (row < 4 ? 3 - row : -1);
    const t = tableFromArrays({ v: new Float64Array([10, 11, 12, 13, 14]) });
    const a = new ColumnAssembler(4, pointOfRow);
    a.add(0, tableToIPC(t));
    const col = a.finish();
    if (col.kind !== "number") throw new Error("expected number");
    expect(Array.from(col.values)).toEqual([13, 12, 11, 10]);
  });

  it("plain strings and bools fall back to categories built here", () => {
    const t = new Table({
      body: vectorFromArray(["x", "y", "x"], new Utf8()),
      ok: vectorFromArray([true, false, null], new Bool()),
    });
    const cols = assembleColumns(["body", "ok"], 3, identity, [{ startRow: 0, arrowIpc: tableToIPC(t) }]);
    const body = cols.get("body")!, ok = cols.get("ok")!;
    if (body.kind !== "category" || ok.kind !== "category") throw new Error("expected categories");
    expect(Array.from(body.codes, (c) => body.dict[c])).toEqual(["x", "y", "x"]);
    expect(Array.from(ok.codes, (c) => (c < 0 ? null : ok.dict[c]))).toEqual(["true", "false", null]);
  });
});
