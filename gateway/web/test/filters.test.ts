import { describe, expect, it } from "vitest";
import { categoryCounts, countsByCluster, filterMask, histogram, maskIndexes, toColumnData, type NumberColumn } from "../src/filters";
import { emptyFilters } from "../src/viewstate";

describe("column data", () => {
  it("numbers become a Float64Array with NaN for null; anything else categories", () => {
    const num = toColumnData([1, null, 3.5]);
    expect(num.kind).toBe("number");
    if (num.kind === "number") {
      expect([...num.values].map((v) => (Number.isNaN(v) ? null : v))).toEqual([1, null, 3.5]);
      expect([num.min, num.max]).toEqual([1, 3.5]);
    }
    const cat = toColumnData(["a", "b", null, "a", true]);
    expect(cat.kind).toBe("category");
    if (cat.kind === "category") {
      expect([...cat.codes]).toEqual([0, 1, -1, 0, 2]);
      expect(cat.dict).toEqual(["a", "b", "true"]);
    }
  });
});

describe("filter mask", () => {
  const topic = toColumnData(["x", "y", "x", "z", null, "y"]);
  const score = toColumnData([1, 2, 3, 4, 5, null]);
  const columns = new Map([["topic", topic], ["score", score]]);

  it("categories and ranges combine with AND", () => {
    const f = emptyFilters();
    f.categories.topic = ["x", "y"];
    expect(filterMask({ n: 6, filters: f, columns }).count).toBe(4);
    f.ranges.score = [2, 4];
    const { mask, count } = filterMask({ n: 6, filters: f, columns });
    expect([...mask]).toEqual([0, 1, 1, 0, 0, 0]);
    expect(count).toBe(2);
    expect([...maskIndexes(mask)]).toEqual([1, 2]);
  });

  it("search hits, selection and hidden legend keys", () => {
    const f = { ...emptyFilters(), searchOnly: true, selectionOnly: true };
    const { mask } = filterMask({ n: 6, filters: f, columns, searchHits: [0, 1, 2], selected: [1, 2, 3] });
    expect([...mask]).toEqual([0, 1, 1, 0, 0, 0]);
    const hidden = filterMask({ n: 6, filters: emptyFilters(), columns, keyOf: (i) => (i % 2 ? "odd" : "even"), hidden: new Set(["odd"]) });
    expect([...hidden.mask]).toEqual([1, 0, 1, 0, 1, 0]);
  });

  it("a filter on a column not loaded yet passes everything", () => {
    const f = emptyFilters();
    f.categories.nope = ["a"];
    expect(filterMask({ n: 3, filters: f, columns: new Map() }).count).toBe(3);
  });

  it("histograms and counts follow the mask", () => {
    const h = histogram(score as NumberColumn, 4, new Uint8Array([1, 1, 0, 0, 0, 1]));
    expect(h.counts).toEqual([1, 1, 1, 2]);
    expect(h.passing).toEqual([1, 1, 0, 0]);
    if (topic.kind === "category") expect(categoryCounts(topic, new Uint8Array([1, 0, 0, 1, 1, 1]))).toEqual([
      { value: "x", count: 2, passing: 1 },
      { value: "y", count: 2, passing: 1 },
      { value: "z", count: 1, passing: 1 },
    ]);
    expect(countsByCluster(new Int32Array([0, 1, 1, -1]), [1, 2, 3])).toEqual(new Map([[1, 2], [-1, 1]]));
  });
});
