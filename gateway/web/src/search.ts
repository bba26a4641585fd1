// Search: the form in the toolbar (by meaning, or text in a column) and the list of hits in
// the side panel. The query lives in the view state; a new one moves the camera to its hits
// (unless the view has a camera), rings them on the map and may filter the map to them.

import { projection as projectionApi } from "./api";
import { h } from "./dom";
import type { Column } from "./gen/embedviz/v1/ingest_pb";
import type { PointMatch } from "./gen/embedviz/v1/projection_pb";
import type { MapContext } from "./mapcontext";

type SearchNeeds = Pick<MapContext, "store" | "projectionName" | "scatterplot" | "points" | "scene" | "texts" | "centreOn" | "onError" | "clearError">;

/**
 * Fills a list with matches (score and text); a click centres the map on the row and opens
 * its details. "nothing found" when there are none.
 */
export function matchList(list: HTMLElement, itemId: string, matches: PointMatch[], texts: Map<number, string>, open: (row: number) => void): void {
  list.replaceChildren(
    ...matches.map((m) => {
      const row = Number(m.rowIndex);
      const li = h("li", { "data-testid": itemId, "data-row": String(row), title: "Show on the map and list its neighbours" }, h("span", { class: "match-score" }, m.score.toFixed(3)), h("span", { class: "match-text" }, texts.get(row) ?? ""));
      li.addEventListener("click", () => open(row));
      return li;
    }),
  );
  if (!matches.length) list.append(h("li", { class: "muted" }, "nothing found"));
}

/** Opening a row from a list: centre the map on its point (if drawn) and focus it. */
export function openRow(ctx: Pick<MapContext, "store" | "points" | "centreOn">): (row: number) => void {
  return (row) => {
    const p = ctx.points.pointOfRow(row);
    if (p >= 0) ctx.centreOn(p);
    ctx.store.update({ focus: row });
  };
}

/** Why a map of imported vectors has no search by meaning. */
export const SEARCH_NEEDS_A_MODEL = "This map's vectors came with the dataset: no model turns a query into a vector like them, so search by meaning is off. Search a column's text, or click a point for its neighbours.";

export class SearchPanel {
  readonly input = h("input", { id: "map-search", "data-testid": "map-search", type: "search", placeholder: "Search by meaning…" });
  readonly mode: HTMLSelectElement;
  readonly button = h("button", { id: "map-search-button", "data-testid": "map-search-button", type: "submit" }, "Search");
  /** The form, in the toolbar. */
  readonly form: HTMLFormElement;
  readonly results = h("ol", { id: "search-results", "data-testid": "search-results", class: "matches" });
  /** The results, in the side panel. */
  readonly el = h("div", { id: "search-panel", class: "panel-block", hidden: true }, h("h3", {}, "Search results"), this.results);
  private seq = 0;
  private ctx: SearchNeeds | null = null;

  /** `byMeaning` false: the map's vectors came with the data, no model turns a query into
   * one; the form searches a column's text (the first, unless the view names another). */
  constructor(columns: Column[], private readonly byMeaning = true) {
    const meaning = h("option", { value: "", disabled: !byMeaning }, byMeaning ? "by meaning" : "by meaning (needs a model)");
    this.mode = h("select", { id: "map-search-mode", "data-testid": "map-search-mode", "aria-label": "Search in" }, meaning, ...columns.map((c) => h("option", { value: c.name }, `text in ${c.name}`)));
    if (!byMeaning) {
      this.input.placeholder = "Search a column's text…";
      this.mode.title = SEARCH_NEEDS_A_MODEL;
      if (columns.length) this.mode.value = columns[0].name;
    }
    this.form = h("form", { class: "map-search" }, this.input, this.mode, this.button);
  }

  connect(ctx: SearchNeeds): () => void {
    this.ctx = ctx;
    const { store } = ctx;
    this.form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      ctx.clearError();
      const query = this.input.value.trim();
      const column = this.mode.value;
      const same = store.get().search.query === query && store.get().search.column === column;
      // A new search moves the view to its hits: the stored camera is let go.
      store.update({ search: { query, column }, camera: null });
      // The same search again does not change the store: run it here.
      if (same) void this.run(query, column);
    });
    return store.watch((s) => s.search, (q) => void ctx.scene.serial(() => this.run(q.query, q.column)));
  }

  /** Shows the view's search in the form (before connect's first run). */
  show(query: string, column: string): void {
    this.input.value = query;
    if (column || this.byMeaning) this.mode.value = column;
  }

  async run(query: string, column: string): Promise<void> {
    const ctx = this.ctx;
    if (!ctx) return;
    const { scene, points } = ctx;
    const mine = ++this.seq;
    if (!query) {
      scene.searchHits = [];
      this.el.hidden = true;
      await scene.refilter();
      return;
    }
    this.button.disabled = true;
    this.results.dataset.state = "loading";
    try {
      const res = await projectionApi.searchPoints({ name: ctx.projectionName, query, column, limit: 50 });
      const texts = await ctx.texts.of(res.matches.map((m) => Number(m.rowIndex)));
      if (mine !== this.seq) return;
      this.el.hidden = false;
      matchList(this.results, "search-result", res.matches, texts, openRow(ctx));
      scene.searchHits = res.matches.map((m) => points.pointOfRow(Number(m.rowIndex))).filter((p) => p >= 0);
      await scene.refilter();
      const shown = scene.searchHits.filter((p) => scene.mask[p]);
      if (shown.length && !ctx.store.get().camera) await ctx.scatterplot.zoomToPoints(shown, { padding: 0.4, transition: true });
      this.results.dataset.state = "done";
      this.results.dataset.query = query;
    } catch (err) {
      this.results.dataset.state = "error";
      ctx.onError(err);
    } finally {
      this.button.disabled = false;
    }
  }
}
