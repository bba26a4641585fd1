import { describe, expect, it } from "vitest";
import { decodeRows, emptyView, encodeRows, hashPath, hashToView, viewToHash, ViewStore, type ViewState } from "../src/viewstate";

const P = "projects/p1/datasets/d1/embeddings/e1/projections/x1";

describe("view state in the URL", () => {
  it("round-trips every field", () => {
    const s: ViewState = {
      ...emptyView(),
      project: "projects/p1",
      dataset: "projects/p1/datasets/d1",
      embedding: "projects/p1/datasets/d1/embeddings/e1",
      projection: P,
      camera: { x: 0.12345, y: -0.5, distance: 0.25 },
      colorBy: "topic",
      sizeBy: "score",
      hidden: ["volcanoes", "__null__"],
      filters: { categories: { topic: ["a, b", "c&d"] }, ranges: { score: [1.5, 9] }, searchOnly: true, selectionOnly: false },
      selection: [1, 2, 3, 7, 9, 10, 200],
      search: { query: "ash & lava?", column: "text" },
      focus: 7,
      tooltip: ["title", "score"],
      sort: { column: "score", desc: true },
      tableColumns: ["title", "topic"],
    };
    const hash = viewToHash(s);
    expect(hash.startsWith(`#/${P}?`)).toBe(true);
    expect(hashToView(hash)).toEqual(s);
    expect(hashPath(hash)).toBe(P);
  });

  it("each part of the view round-trips on its own", () => {
    const base: ViewState = { ...emptyView(), project: "projects/p1", dataset: "projects/p1/datasets/d1", embedding: "projects/p1/datasets/d1/embeddings/e1", projection: P };
    const parts: Partial<ViewState>[] = [
      { camera: { x: -0.75, y: 0.5, distance: 0.3 } },
      { colorBy: "topic" },
      { sizeBy: "score" },
      { filters: { categories: { topic: ["x"] }, ranges: {}, searchOnly: false, selectionOnly: false } },
      { filters: { categories: {}, ranges: { score: [-1, 2.5] }, searchOnly: false, selectionOnly: false } },
      { filters: { categories: {}, ranges: {}, searchOnly: false, selectionOnly: true } },
      { filters: { categories: {}, ranges: {}, searchOnly: true, selectionOnly: true } },
      { selection: [0, 4, 5, 6] },
      { search: { query: "lava", column: "" } },
      { search: { query: "lava", column: "title" } },
      { hidden: ["3", "-1"] },
      { tooltip: ["title"] },
      { sort: { column: "title", desc: false } },
      { sort: { column: "a,b:c", desc: true } },
      { tableColumns: ["score"] },
      { focus: 0 },
      // The 2-D/3-D choice is the projection in the path: a 3-D map is another projection.
      { projection: "projects/p1/datasets/d1/embeddings/e1/projections/x3d" },
    ];
    for (const part of parts) {
      const s = { ...base, ...part };
      const hash = viewToHash(s);
      expect(hash, JSON.stringify(part)).not.toBe(viewToHash(base));
      expect(hashToView(hash), JSON.stringify(part)).toEqual(s);
    }
  });

  it("an empty view is just the path", () => {
    const s = { ...emptyView(), project: "projects/p", dataset: "projects/p/datasets/d" };
    expect(viewToHash(s)).toBe("#/projects/p/datasets/d");
    expect(hashToView("#/projects/p/datasets/d")).toEqual(s);
  });

  it("ignores garbage in the query", () => {
    const v = hashToView(`#/${P}?cam=a,b&hide=%7Bx&filter=[1]&sel=x,3-4&focus=-3`);
    expect(v.camera).toBeNull();
    expect(v.hidden).toEqual([]);
    expect(v.filters.categories).toEqual({});
    expect(v.selection).toEqual([3, 4]);
    expect(v.focus).toBe(-1);
    const w = hashToView(`#/${P}?tip=3&sort=%5B%22a%22%2C%22up%22%5D&cols=%7B%7D`);
    expect(w.tooltip).toEqual([]);
    expect(w.sort).toBeNull();
    expect(w.tableColumns).toEqual([]);
  });

  it("rows as runs", () => {
    expect(encodeRows([5, 1, 2, 3, 9])).toBe("1-3,5,9");
    expect(decodeRows("1-3,5,9")).toEqual([1, 2, 3, 5, 9]);
    expect(encodeRows([])).toBe("");
  });
});

describe("ViewStore", () => {
  it("notifies on change only, and watch sees only its slice", () => {
    const store = new ViewStore();
    const seen: string[] = [];
    const colours: string[] = [];
    store.subscribe((s) => seen.push(s.colorBy));
    store.watch((s) => s.colorBy, (c) => colours.push(c));
    store.update({ colorBy: "topic" });
    store.update({ colorBy: "topic" });
    store.update({ selection: [1] });
    store.update((s) => ({ colorBy: s.colorBy + "2" }));
    expect(seen).toEqual(["topic", "topic", "topic2"]);
    expect(colours).toEqual(["topic", "topic2"]);
  });
});
