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
    };
    const hash = viewToHash(s);
    expect(hash.startsWith(`#/${P}?`)).toBe(true);
    expect(hashToView(hash)).toEqual(s);
    expect(hashPath(hash)).toBe(P);
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
