import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { clusterEncoding, columnEncoding } from "../src/encoding";
import { filterMask, toColumnData } from "../src/filters";
import { legendClicks, legendItems, soloHidden, toggleHidden } from "../src/legend";
import { emptyView, ViewStore } from "../src/viewstate";
import { smallMap } from "./mapfixture";

// Six points: three in "volcanoes" (0), two in cluster 1 (no label), one noise.
const points = smallMap([10, 11, 12, 13, 14, 15], [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5], [0, 0, 0, 1, 1, -1], [{ id: 0, label: "volcanoes", terms: ["lava", "ash"] }]);

/** The legend as the panel renders it from a store: encoding, hidden keys, the mask they make. */
function legendOf(store: ViewStore, enc = clusterEncoding(points)) {
  const s = store.get();
  const { mask } = filterMask({ n: points.n, filters: s.filters, columns: new Map(), keyOf: enc.keyOf, hidden: new Set(s.hidden) });
  return legendItems(enc, s.hidden, mask, points.n, points.clusterTerms);
}

describe("legend entries from the view state", () => {
  it("one entry per cluster, noise last, with sizes, labels and terms", () => {
    const items = legendOf(new ViewStore(emptyView()));
    expect(items.map((e) => [e.key, e.label, e.count, e.passing, e.hidden])).toEqual([
      ["0", "volcanoes", 3, 3, false],
      ["1", "cluster 1", 2, 2, false],
      ["-1", "noise", 1, 1, false],
    ]);
    expect(items[0].title).toBe("lava, ash");
    expect(items[1].title).toBe("");
    expect(new Set(items.map((e) => e.color)).size).toBe(3);
  });

  it("hidden keys in the store mark their entries and pass none of their points", () => {
    const items = legendOf(new ViewStore({ ...emptyView(), hidden: ["1"] }));
    expect(items.find((e) => e.key === "1")).toMatchObject({ hidden: true, passing: 0, count: 2 });
    expect(items.find((e) => e.key === "0")).toMatchObject({ hidden: false, passing: 3 });
  });

  it("coloured by a column: its values by count, nulls last, passing counts under a filter", () => {
    const topic = toColumnData(["lava", "ash", "lava", null, "lava", "ash"]);
    const enc = columnEncoding("topic", topic, points.n);
    const s = { ...emptyView(), filters: { ...emptyView().filters, categories: { topic: ["lava"] } } };
    const { mask } = filterMask({ n: points.n, filters: s.filters, columns: new Map([["topic", topic]]), keyOf: enc.keyOf, hidden: new Set() });
    const items = legendItems(enc, s.hidden, mask, points.n, points.clusterTerms);
    expect(items.map((e) => [e.key, e.count, e.passing])).toEqual([
      ["lava", 3, 3],
      ["ash", 2, 0],
      ["__null__", 1, 0],
    ]);
    expect(items.every((e) => e.title === "")).toBe(true);
  });
});

describe("legend clicks change the store", () => {
  it("toggle and solo as pure edits", () => {
    expect(toggleHidden([], "a")).toEqual(["a"]);
    expect(toggleHidden(["a", "b"], "a")).toEqual(["b"]);
    expect(soloHidden([], "a", ["a", "b", "c"])).toEqual(["b", "c"]);
    // Only "a" shows already: a double-click on it shows everything again.
    expect(soloHidden(["b", "c"], "a", ["a", "b", "c"])).toEqual([]);
    expect(soloHidden(["b", "c"], "b", ["a", "b", "c"])).toEqual(["a", "c"]);
  });

  beforeEach(() => {
    vi.useFakeTimers();
    vi.stubGlobal("window", globalThis);
  });
  afterEach(() => {
    vi.useRealTimers();
    vi.unstubAllGlobals();
  });

  it("a click hides the entry (after the double-click wait), another shows it; a double-click shows only it", () => {
    const store = new ViewStore(emptyView());
    const keys = () => ["0", "1", "-1"];
    const entry = new EventTarget() as HTMLElement;
    legendClicks(entry, store, "1", keys);

    entry.dispatchEvent(new Event("click"));
    expect(store.get().hidden).toEqual([]);
    vi.advanceTimersByTime(220);
    expect(store.get().hidden).toEqual(["1"]);
    expect(legendOf(store).find((e) => e.key === "1")?.hidden).toBe(true);

    entry.dispatchEvent(new Event("click"));
    vi.advanceTimersByTime(220);
    expect(store.get().hidden).toEqual([]);

    // The two clicks of a double-click do not toggle: only the solo lands.
    entry.dispatchEvent(new Event("click"));
    entry.dispatchEvent(new Event("click"));
    entry.dispatchEvent(new Event("dblclick"));
    vi.advanceTimersByTime(1000);
    expect(store.get().hidden).toEqual(["0", "-1"]);
    expect(legendOf(store).map((e) => e.passing)).toEqual([0, 2, 0]);

    entry.dispatchEvent(new Event("dblclick"));
    expect(store.get().hidden).toEqual([]);
  });
});
