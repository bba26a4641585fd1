import { describe, expect, it } from "vitest";
import { filterMask, toColumnData, type ColumnData } from "../src/filters";
import { clearFilters, filterBlocks, histogramSvg, withCategory, withNewFilter, withoutFilter, withRange, type FilterBlock } from "../src/filterpanel";
import { emptyFilters, emptyView, ViewStore, type Filters } from "../src/viewstate";

const topic = toColumnData(["lava", "ash", "lava", null, "lava", "ice"]);
const score = toColumnData([1, 2, 3, 4, 5, null]);
const columns = new Map<string, ColumnData>([["topic", topic], ["score", score]]);

/** The blocks the panel renders for the store's filters, with the mask those filters make. */
function panelOf(store: ViewStore): { blocks: FilterBlock[]; visible: number } {
  const { filters } = store.get();
  const { mask, count } = filterMask({ n: 6, filters, columns });
  return { blocks: filterBlocks(filters, columns, mask), visible: count };
}

const edit = (store: ViewStore, fn: (f: Filters) => Filters | null) => store.update((s) => ({ filters: fn(s.filters) ?? s.filters }));

describe("filters panel renders from the store", () => {
  it("a new category filter keeps every value; unticking one updates the counts", () => {
    const store = new ViewStore(emptyView());
    expect(panelOf(store).blocks).toEqual([]);

    edit(store, (f) => withNewFilter(f, "topic", topic));
    let { blocks, visible } = panelOf(store);
    expect(visible).toBe(5); // the null row has no value to keep
    expect(blocks).toEqual([
      {
        name: "topic",
        kind: "category",
        values: [
          { value: "lava", count: 3, passing: 3, kept: true },
          { value: "ash", count: 1, passing: 1, kept: true },
          { value: "ice", count: 1, passing: 1, kept: true },
        ],
      },
    ]);

    edit(store, (f) => withCategory(f, "topic", "lava", false));
    ({ blocks, visible } = panelOf(store));
    expect(visible).toBe(2);
    expect(blocks[0].kind === "category" && blocks[0].values.map((v) => [v.value, v.passing, v.kept])).toEqual([
      ["lava", 0, false],
      ["ash", 1, true],
      ["ice", 1, true],
    ]);
  });

  it("a range filter shows its histogram, passing bars following the range", () => {
    const store = new ViewStore(emptyView());
    edit(store, (f) => withNewFilter(f, "score", score));
    let block = panelOf(store).blocks[0];
    expect(block).toMatchObject({ name: "score", kind: "number", lo: 1, hi: 5 });
    edit(store, (f) => withRange(f, "score", 4, 2)); // either order
    const { blocks, visible } = panelOf(store);
    block = blocks[0];
    expect(store.get().filters.ranges.score).toEqual([2, 4]);
    expect(visible).toBe(3);
    if (block.kind !== "number") throw new Error("expected a range block");
    expect(block.histogram.counts.reduce((a, b) => a + b)).toBe(5);
    expect(block.histogram.passing.reduce((a, b) => a + b)).toBe(3);
    expect([block.lo, block.hi]).toEqual([2, 4]);
  });

  it("a column not read yet shows as loading", () => {
    const f = withNewFilter(emptyFilters(), "topic", topic);
    expect(filterBlocks(f, new Map(), new Uint8Array(6).fill(1))).toEqual([{ name: "topic", kind: "loading" }]);
  });

  it("remove, bad ranges and clear", () => {
    const store = new ViewStore(emptyView());
    edit(store, (f) => withNewFilter(f, "topic", topic));
    edit(store, (f) => withNewFilter(f, "score", score));
    expect(panelOf(store).blocks.map((b) => b.name)).toEqual(["topic", "score"]);
    expect(withRange(store.get().filters, "score", Number(""), NaN)).toBeNull();
    edit(store, (f) => withoutFilter(f, "topic"));
    expect(panelOf(store).blocks.map((b) => b.name)).toEqual(["score"]);
    store.update({ hidden: ["0"] });
    clearFilters(store);
    expect(store.get().filters).toEqual(emptyFilters());
    expect(store.get().hidden).toEqual([]);
  });

  it("the histogram is two bars a bin, scaled to the fullest bin", () => {
    const svg = histogramSvg({ lo: 0, hi: 1, counts: [4, 2], passing: [1, 0] });
    expect(svg).toContain('data-testid="filter-histogram"');
    expect(svg.match(/<rect /g)).toHaveLength(4);
    expect(svg).toContain('<rect x="0" y="0" width="5" height="30" fill="#d0d5e2"/>');
    expect(svg).toContain('<rect x="6" y="30" width="5" height="0" fill="#3d63dd"/>');
  });
});
