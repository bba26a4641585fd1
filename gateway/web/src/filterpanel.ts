// The filters panel: how many points pass, one block per filtered column (values with
// their counts, or a histogram with a range), "only search hits" and "only the selection".
// Every control changes the view state's filters; the panel renders from the view state and
// the map's mask each time the map applies one. The block contents and the filter edits are
// pure functions (filterBlocks, withCategory, ...), tested in Node.

import { formatCount, h } from "./dom";
import { categoryCounts, histogram, type ColumnData, type Histogram } from "./filters";
import type { Column } from "./gen/embedviz/v1/ingest_pb";
import type { MapContext } from "./mapcontext";
import { emptyFilters, type Filters, type ViewStore } from "./viewstate";

/** Values listed per category filter. */
const MAX_VALUES = 50;

export type FilterBlock =
  | { name: string; kind: "loading" }
  | { name: string; kind: "category"; values: { value: string; count: number; passing: number; kept: boolean }[] }
  | { name: string; kind: "number"; histogram: Histogram; lo: number; hi: number };

/** One block per filtered column, in the order the filters were added. */
export function filterBlocks(filters: Filters, columns: Map<string, ColumnData>, mask: Uint8Array): FilterBlock[] {
  const names = [...new Set([...Object.keys(filters.categories), ...Object.keys(filters.ranges)])];
  return names.map((name): FilterBlock => {
    const col = columns.get(name);
    if (!col) return { name, kind: "loading" };
    if (col.kind === "category") {
      const keep = new Set(filters.categories[name] ?? []);
      return { name, kind: "category", values: categoryCounts(col, mask).slice(0, MAX_VALUES).map((c) => ({ ...c, kept: keep.has(c.value) })) };
    }
    const [lo, hi] = filters.ranges[name] ?? [col.min, col.max];
    return { name, kind: "number", histogram: histogram(col, 24, mask), lo, hi };
  });
}

/** A new filter on a column keeps everything: all its values, or its whole range. */
export function withNewFilter(f: Filters, name: string, col: ColumnData): Filters {
  if (col.kind === "number") return { ...f, ranges: { ...f.ranges, [name]: [col.min, col.max] } };
  return { ...f, categories: { ...f.categories, [name]: [...col.dict] } };
}

export function withoutFilter(f: Filters, name: string): Filters {
  const categories = { ...f.categories };
  const ranges = { ...f.ranges };
  delete categories[name];
  delete ranges[name];
  return { ...f, categories, ranges };
}

export function withCategory(f: Filters, name: string, value: string, kept: boolean): Filters {
  const values = new Set(f.categories[name] ?? []);
  if (kept) values.add(value);
  else values.delete(value);
  return { ...f, categories: { ...f.categories, [name]: [...values] } };
}

/** The range between two numbers in either order; null unless both are finite. */
export function withRange(f: Filters, name: string, a: number, b: number): Filters | null {
  if (!Number.isFinite(a) || !Number.isFinite(b)) return null;
  return { ...f, ranges: { ...f.ranges, [name]: [Math.min(a, b), Math.max(a, b)] } };
}

/** Everything shown again: no filter and no hidden legend entry. */
export function clearFilters(store: ViewStore): void {
  store.update({ filters: emptyFilters(), hidden: [] });
}

const editFilters = (store: ViewStore, edit: (f: Filters) => Filters | null) =>
  store.update((s) => {
    const next = edit(s.filters);
    return next ? { filters: next } : {};
  });

export class FilterPanel {
  private readonly count = h("div", { id: "filter-count", "data-testid": "filter-count", class: "filter-count" });
  private readonly add: HTMLSelectElement;
  private readonly onlySearch = h("input", { type: "checkbox", id: "filter-search-only", "data-testid": "filter-search-only" });
  private readonly onlySelection = h("input", { type: "checkbox", id: "filter-selection-only", "data-testid": "filter-selection-only" });
  private readonly list = h("div", { id: "filter-list", "data-testid": "filter-list" });
  /** The panel, in the side panel. */
  readonly el: HTMLElement;

  constructor(columns: Column[]) {
    this.add = h("select", { id: "add-filter", "data-testid": "add-filter", "aria-label": "Filter by a column" }, h("option", { value: "" }, "+ Filter by column…"), ...columns.map((c) => h("option", { value: c.name }, c.name)));
    this.el = h("div", { class: "panel-block", id: "filters-panel" }, h("h3", {}, "Filters"), this.count, this.add, h("label", { class: "inline" }, this.onlySearch, " only search hits"), h("label", { class: "inline" }, this.onlySelection, " only the selection"), this.list);
  }

  connect(ctx: Pick<MapContext, "store" | "scene" | "points" | "reader" | "onError">): () => void {
    const { store, reader } = ctx;
    this.add.addEventListener("change", () => {
      const name = this.add.value;
      this.add.value = "";
      if (!name) return;
      void reader
        .read(name)
        .then((col) => editFilters(store, (f) => withNewFilter(f, name, col)))
        .catch(ctx.onError);
    });
    this.onlySearch.addEventListener("change", () => store.update((s) => ({ filters: { ...s.filters, searchOnly: this.onlySearch.checked } })));
    this.onlySelection.addEventListener("change", () => store.update((s) => ({ filters: { ...s.filters, selectionOnly: this.onlySelection.checked } })));
    return ctx.scene.onDrawn(() => this.render(ctx));
  }

  render(ctx: Pick<MapContext, "store" | "scene" | "points" | "reader">): void {
    const { store, scene } = ctx;
    const s = store.get();
    this.count.textContent = `${formatCount(scene.visible)} of ${formatCount(ctx.points.n)} points shown`;
    this.count.dataset.count = String(scene.visible);
    this.onlySearch.checked = s.filters.searchOnly;
    this.onlySelection.checked = s.filters.selectionOnly;
    this.list.replaceChildren(...filterBlocks(s.filters, ctx.reader.cache, scene.mask).map((b) => this.block(store, b)));
  }

  private block(store: ViewStore, b: FilterBlock): HTMLElement {
    const name = b.name;
    const remove = h("button", { type: "button", class: "link", "data-testid": "filter-remove", title: "Remove this filter" }, "×");
    remove.addEventListener("click", () => editFilters(store, (f) => withoutFilter(f, name)));
    const box = h("div", { class: "filter", "data-testid": "filter", "data-column": name }, h("div", { class: "filter-head" }, h("strong", {}, name), remove));
    if (b.kind === "loading") {
      box.append(h("div", { class: "muted small" }, "loading…"));
    } else if (b.kind === "category") {
      box.append(
        ...b.values.map((c) => {
          const cb = h("input", { type: "checkbox", checked: c.kept, "data-testid": "filter-value", value: c.value });
          cb.addEventListener("change", () => editFilters(store, (f) => withCategory(f, name, c.value, cb.checked)));
          return h("label", { class: "inline filter-value" }, cb, ` ${c.value || "(empty)"} `, h("span", { class: "muted small" }, `${formatCount(c.passing)} / ${formatCount(c.count)}`));
        }),
      );
    } else {
      const holder = h("div", {});
      holder.innerHTML = histogramSvg(b.histogram);
      const lo = h("input", { type: "number", step: "any", value: b.lo, "data-testid": "filter-min", "aria-label": `${name} from` });
      const hi = h("input", { type: "number", step: "any", value: b.hi, "data-testid": "filter-max", "aria-label": `${name} to` });
      const apply = () => editFilters(store, (f) => withRange(f, name, Number(lo.value), Number(hi.value)));
      lo.addEventListener("change", apply);
      hi.addEventListener("change", apply);
      box.append(holder, h("div", { class: "range-inputs" }, lo, "–", hi));
    }
    return box;
  }
}

/** Bars of all points (grey) and of the passing ones (blue), as an SVG string. */
export function histogramSvg(hist: Histogram): string {
  const peak = Math.max(1, ...hist.counts);
  const bar = (b: number, c: number, fill: string) => `<rect x="${b * 6}" y="${30 - (30 * c) / peak}" width="5" height="${(30 * c) / peak}" fill="${fill}"/>`;
  return `<svg viewBox="0 0 ${hist.counts.length * 6} 30" preserveAspectRatio="none" class="hist" data-testid="filter-histogram">${hist.counts.map((c, b) => bar(b, c, "#d0d5e2") + bar(b, hist.passing[b], "#3d63dd")).join("")}</svg>`;
}
