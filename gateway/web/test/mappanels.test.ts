import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { sameCamera } from "../src/camera";
import { drawPalette, clusterEncoding, columnEncoding, sizeValues } from "../src/encoding";
import { toColumnData } from "../src/filters";
import { filterColumns, highlightedPoints, selectionStyle } from "../src/scene";
import { rowsOfPoints, strokePolygon } from "../src/selecttools";
import { emptyView, type ViewState } from "../src/viewstate";
import { smallMap } from "./mapfixture";

// Rows 10..14 on the map (row 12 is not), clusters 0, 0, 1, -1.
const points = smallMap([10, 11, 13, 14], [0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 1, -1], [{ id: 1, label: "ice", terms: ["ice", "glacier", "snow"] }]);

// linkedtable.ts and tooltip.ts reach the API module, which reads the page's origin when
// loaded: give them one.
let table: typeof import("../src/linkedtable");
let tooltip: typeof import("../src/tooltip");
beforeAll(async () => {
  vi.stubGlobal("window", { location: new URL("http://localhost:8080/") });
  table = await import("../src/linkedtable");
  tooltip = await import("../src/tooltip");
});
afterAll(() => vi.unstubAllGlobals());

describe("the map's points", () => {
  it("rows to points, clusters in legend order, labels and terms", () => {
    expect([10, 11, 12, 13, 14, 99, -1].map(points.pointOfRow)).toEqual([0, 1, -1, 2, 3, -1, -1]);
    expect(points.clusterIds).toEqual([0, 1, -1]);
    expect([points.clusterLabel(0), points.clusterLabel(1), points.clusterLabel(-1)]).toEqual(["cluster 0", "ice", "noise"]);
    expect(points.clusterTerms(1)).toEqual(["ice", "glacier", "snow"]);
    expect(points.clusterTerms(0)).toEqual([]);
  });
});

describe("encodings", () => {
  it("one colour per cluster; a one-entry palette is doubled for the scatterplot", () => {
    const enc = clusterEncoding(points);
    expect([...enc.valueA]).toEqual([0, 0, 1, 2]);
    expect(enc.keyOf(2)).toBe("1");
    const one = columnEncoding("kind", toColumnData(["a", "a", "a", "a"]), 4);
    expect(drawPalette(one)).toEqual([one.palette[0], one.palette[0]]);
  });

  it("numbers colour by a ramp and size in [0, 1]; text cannot size", () => {
    const score = toColumnData([2, 4, null, 6]);
    const enc = columnEncoding("score", score, 4);
    expect(enc.range).toEqual({ lo: 2, hi: 6 });
    expect([...sizeValues("score", score, 4)]).toEqual([0, 0.5, 0, 1]);
    expect(() => sizeValues("title", toColumnData(["x", "y", "z", "w"]), 4)).toThrow("size needs a numeric column; 'title' holds text");
  });
});

describe("highlight and selection tools", () => {
  const view = (patch: Partial<ViewState>): ViewState => ({ ...emptyView(), ...patch });

  it("the selection wins; else the focused point and its listed neighbours", () => {
    expect(highlightedPoints(view({ selection: [11, 12, 14], focus: 10 }), points.pointOfRow, [13])).toEqual([1, 3]);
    expect(highlightedPoints(view({ focus: 10 }), points.pointOfRow, [13, 12, 11])).toEqual([0, 2, 1]);
    expect(highlightedPoints(view({ focus: 12 }), points.pointOfRow, [13])).toEqual([]);
    expect(highlightedPoints(view({}), points.pointOfRow, [13])).toEqual([]);
  });

  it("a box stroke is the rectangle of its corners; a lasso its path; rows come out sorted", () => {
    expect(strokePolygon("box", [0, 0, 5, 5, 10, 20])).toEqual([0, 0, 10, 0, 10, 20, 0, 20]);
    expect(strokePolygon("box", [3, 4])).toEqual([3, 4]);
    expect(strokePolygon("lasso", [0, 0, 5, 5, 10, 0])).toEqual([0, 0, 5, 5, 10, 0]);
    expect(rowsOfPoints([3, 0, 2], points.rows)).toEqual([10, 13, 14]);
  });

  it("a few highlighted points are drawn large with an outline; a big selection fades the rest instead", () => {
    const few = selectionStyle(12, 63_681, 2.5);
    expect(few).toEqual({ pointSizeSelected: 5.5, pointOutlineWidth: 2, opacityInactiveScale: 1 });
    const many = selectionStyle(42_085, 63_681, 2.5);
    expect(many.pointSizeSelected).toBeGreaterThan(0); // the scatterplot ignores 0
    expect(many.pointSizeSelected).toBeLessThan(0.01);
    expect(many.pointOutlineWidth).toBeLessThan(0.01);
    expect(many.opacityInactiveScale).toBeLessThan(0.5);
    // on a small map, a lasso of a few hundred points still stands out
    expect(selectionStyle(300, 2_000, 7).pointOutlineWidth).toBe(2);
    expect(selectionStyle(501, 2_000, 7).pointOutlineWidth).toBeLessThan(0.01);
  });

  it("filters name the columns they read; cameras match within 1e-4", () => {
    const s = view({ filters: { categories: { topic: [] }, ranges: { score: [0, 1] }, searchOnly: false, selectionOnly: false } });
    expect(filterColumns(s)).toEqual(["topic", "score"]);
    expect(sameCamera({ x: 0, y: 0, distance: 1 }, { x: 0.00005, y: 0, distance: 1 })).toBe(true);
    expect(sameCamera({ x: 0, y: 0, distance: 1 }, { x: 0, y: 0, distance: 0.5 })).toBe(false);
  });
});

describe("linked table", () => {
  it("lists the selected rows that pass; else the passing rows once anything filters", () => {
    const mask = Uint8Array.from([1, 0, 1, 1]);
    expect(table.linkedRows({ ...emptyView(), selection: [10, 11, 12] }, mask, 3, points)).toEqual([10]);
    expect(table.linkedRows(emptyView(), mask, 3, points)).toEqual([10, 13, 14]);
    expect(table.linkedRows(emptyView(), new Uint8Array(4).fill(1), 4, points)).toEqual([]);
    expect(table.linkedRows({ ...emptyView(), hidden: ["9"] }, new Uint8Array(4).fill(1), 4, points)).toEqual([10, 11, 13, 14]);
  });

  it("a header click sorts up, down, then back to row order; ties by row", () => {
    expect(table.nextSort(null, "title")).toEqual({ column: "title", desc: false });
    expect(table.nextSort({ column: "title", desc: false }, "title")).toEqual({ column: "title", desc: true });
    expect(table.nextSort({ column: "title", desc: true }, "title")).toBeNull();
    expect(table.nextSort({ column: "title", desc: true }, "score")).toEqual({ column: "score", desc: false });
    const score = toColumnData([3, 1, 3, 2]);
    expect(table.sortRows([10, 11, 13, 14], score, false, points.pointOfRow)).toEqual([11, 14, 10, 13]);
    expect(table.sortRows([10, 11, 13, 14], score, true, points.pointOfRow)).toEqual([13, 10, 14, 11]);
  });
});

describe("tooltip columns", () => {
  it("the view's known picks, else the embedded text; ticking the embedded text stores []", () => {
    const known = new Set(["title", "text", "score"]);
    const text = ["text"];
    expect(tooltip.tooltipColumns([], known, text)).toBe(text);
    expect(tooltip.tooltipColumns(["gone"], known, text)).toBe(text);
    expect(tooltip.tooltipColumns(["title", "gone", "score"], known, text)).toEqual(["title", "score"]);
    expect(tooltip.tooltipChoice(["text"], text)).toEqual([]);
    expect(tooltip.tooltipChoice([], text)).toEqual([]);
    expect(tooltip.tooltipChoice(["title", "text"], text)).toEqual(["title", "text"]);
  });
});
