// The linked table: the rows of the selection, or (with nothing selected) of the points
// that pass the filters, a page at a time, with their clusters counted above. Its sort and
// columns live in the view state, so a link reopens the same table. A click on a row
// centres the map on its point. Which rows, in which order, are pure functions.

import { ingest } from "./api";
import { formatCount, h } from "./dom";
import { cellOf, countsByCluster, maskIndexes, type ColumnData } from "./filters";
import type { Column } from "./gen/embedviz/v1/ingest_pb";
import type { MapContext } from "./mapcontext";
import { rowsTable } from "./table";
import { hasFilters, type TableSort, type ViewState } from "./viewstate";

const TABLE_PAGE = 100;
/** Selections up to this many rows can be sorted by a column (the column is read whole,
 * as Arrow, and the rows sorted here; past this a sort would hold up the table too long). */
export const SORTABLE_ROWS = 200_000;

type TableNeeds = Pick<MapContext, "store" | "datasetName" | "points" | "scene" | "reader" | "hooks" | "centreOn" | "onError">;

/** The table's rows: the selected ones that pass the filters, else every passing row once anything filters. */
export function linkedRows(s: ViewState, mask: Uint8Array, visible: number, points: { n: number; rows: ArrayLike<number>; pointOfRow(row: number): number }): number[] {
  if (s.selection.length) return s.selection.filter((r) => mask[points.pointOfRow(r)] === 1);
  if (visible < points.n || hasFilters(s.filters) || s.hidden.length) return Array.from(maskIndexes(mask), (p) => points.rows[p]).sort((a, b) => a - b);
  return [];
}

/** A click on a column's header: ascending, then descending, then row order again. */
export function nextSort(sort: TableSort | null, column: string): TableSort | null {
  if (sort?.column !== column) return { column, desc: false };
  return sort.desc ? null : { column, desc: true };
}

/** Rows ordered by a column's values (ties by row). */
export function sortRows(rows: number[], col: ColumnData, desc: boolean, pointOfRow: (row: number) => number): number[] {
  const val = (r: number) => {
    const p = pointOfRow(r);
    return col.kind === "number" ? col.values[p] : cellOf(col, p);
  };
  const dir = desc ? -1 : 1;
  const keyed = rows.map((r) => ({ r, v: val(r) })); // each value read once, not per comparison
  keyed.sort((a, b) => (a.v < b.v ? -1 : a.v > b.v ? 1 : a.r - b.r) * dir);
  return keyed.map((k) => k.r);
}

export class LinkedTable {
  private readonly info = h("div", { id: "selection-count", "data-testid": "selection-count", class: "muted" });
  private readonly clusterCounts = h("div", { id: "selection-clusters", "data-testid": "selection-clusters", class: "cluster-counts" });
  private readonly picker = h("details", { class: "column-picker" }, h("summary", {}, "Columns"));
  private readonly prev = h("button", { id: "selection-prev", type: "button", class: "secondary", disabled: true }, "‹");
  private readonly next = h("button", { id: "selection-next", type: "button", class: "secondary", disabled: true }, "›");
  private readonly pageText = h("span", { id: "selection-page", class: "muted" });
  private readonly host = h("div", { id: "selection-table-host", class: "table-scroll" });
  /** The table panel, with the export controls in its tool row. */
  readonly el: HTMLElement;
  private page = 0;
  private seq = 0;
  private lastKey = "";
  private ctx: TableNeeds | null = null;
  private onRows: (rows: number[]) => void = () => {};

  constructor(private readonly columns: Column[], exportControls: Node[]) {
    this.el = h(
      "section",
      { id: "selection-panel", "data-testid": "selection-panel" },
      h("div", { class: "table-tools row" }, this.info, this.picker, this.prev, this.pageText, this.next, ...exportControls),
      this.clusterCounts,
      this.host,
    );
  }

  /** `onRows` hears the rows each time the table renders. */
  connect(ctx: TableNeeds, onRows: (rows: number[]) => void): () => void {
    this.ctx = ctx;
    this.onRows = onRows;
    const { store, scene } = ctx;
    const start = this.shownColumns();
    this.picker.append(
      ...this.columns.map((c) => {
        const cb = h("input", { type: "checkbox", checked: start.includes(c.name), value: c.name, "data-testid": "table-column" });
        cb.addEventListener("change", () => {
          const ticked = [...this.picker.querySelectorAll<HTMLInputElement>("input:checked")].map((i) => i.value);
          store.update({ tableColumns: ticked.length === this.columns.length ? [] : ticked });
        });
        return h("label", { class: "inline" }, cb, ` ${c.name}`);
      }),
    );
    this.prev.addEventListener("click", () => {
      this.page = Math.max(0, this.page - 1);
      void this.render();
    });
    this.next.addEventListener("click", () => {
      this.page++;
      void this.render();
    });
    const unwatch = [
      scene.onDrawn(() => void this.render()),
      // With "only the selection" the mask changes and onDrawn renders; else the rows do.
      store.watch(
        (s) => s.selection,
        () =>
          void scene.serial(async () => {
            if (!store.get().filters.selectionOnly) void this.render();
          }),
      ),
      store.watch((s) => [s.sort, s.tableColumns], () => void this.render()),
    ];
    return () => unwatch.forEach((u) => u());
  }

  /** The rows the table lists now (selection or filters), ascending. */
  rows(): number[] {
    const ctx = this.ctx;
    return ctx ? linkedRows(ctx.store.get(), ctx.scene.mask, ctx.scene.visible, ctx.points) : [];
  }

  private sort(): TableSort | null {
    const sort = this.ctx?.store.get().sort ?? null;
    return sort && this.columns.some((c) => c.name === sort.column) ? sort : null;
  }

  /** The view's known columns, or all of them. */
  private shownColumns(): string[] {
    const known = (this.ctx?.store.get().tableColumns ?? []).filter((n) => this.columns.some((c) => c.name === n));
    return known.length ? known : this.columns.map((c) => c.name);
  }

  async render(): Promise<void> {
    const ctx = this.ctx;
    if (!ctx) return;
    const { store, points, hooks } = ctx;
    const mine = ++this.seq;
    let rows = this.rows();
    const key = `${rows.length}:${rows[0]}:${rows[rows.length - 1]}`;
    if (key !== this.lastKey) this.page = 0;
    this.lastKey = key;
    hooks.linkedRows = rows;
    hooks.selected = store.get().selection;
    this.onRows(rows);
    const s = store.get();
    this.info.dataset.count = String(rows.length);
    this.info.dataset.kind = s.selection.length ? "selection" : "filter";
    document.body.dataset.table = rows.length ? "open" : "closed";
    if (!rows.length) {
      this.info.textContent = s.selection.length ? "no selected point passes the filters" : "Select points with the lasso or box, or filter the map, to list their rows here.";
      this.clusterCounts.replaceChildren();
      this.host.replaceChildren();
      this.pageText.textContent = "";
      this.prev.disabled = this.next.disabled = true;
      return;
    }
    this.info.textContent = `${formatCount(rows.length)} ${s.selection.length ? "points selected" : "points pass the filters"}`;
    const byCluster = countsByCluster(points.clusters, rows.map(points.pointOfRow));
    this.clusterCounts.replaceChildren(
      ...[...byCluster.entries()].sort((a, b) => b[1] - a[1]).slice(0, 12).map(([id, c]) => h("span", { class: "pill", "data-testid": "selection-cluster", "data-cluster": String(id) }, `${points.clusterLabel(id)}: ${formatCount(c)}`)),
    );
    const sort = this.sort();
    // The sort the table really shows: none past SORTABLE_ROWS or when its column cannot be read.
    let sorted: TableSort | null = null;
    try {
      if (sort && rows.length <= SORTABLE_ROWS) {
        const col = await ctx.reader.read(sort.column).catch(() => null);
        if (col) {
          rows = sortRows(rows, col, sort.desc, points.pointOfRow);
          sorted = sort;
        }
      }
      if (sort && !sorted) {
        this.info.textContent += rows.length > SORTABLE_ROWS
          ? ` · in row order: sorting takes at most ${formatCount(SORTABLE_ROWS)} rows`
          : ` · in row order: ${sort.column} could not be read`;
      }
      const pages = Math.ceil(rows.length / TABLE_PAGE);
      this.page = Math.min(this.page, pages - 1);
      const shown = rows.slice(this.page * TABLE_PAGE, (this.page + 1) * TABLE_PAGE);
      this.pageText.textContent = `page ${this.page + 1} of ${pages}`;
      this.prev.disabled = this.page === 0;
      this.next.disabled = this.page >= pages - 1;
      const res = await ingest.batchGetRows({ parent: ctx.datasetName, indexes: shown.map(BigInt), columns: this.shownColumns() });
      if (mine !== this.seq) return;
      const order = new Map(res.rows.map((r) => [Number(r.index), r]));
      const ordered = shown.map((r) => order.get(r)).filter((r) => r !== undefined);
      const table = rowsTable("selection-table", res.columns, ordered, {
        indexHeader: "row",
        sortable: (th, c) => {
          th.classList.add("sortable");
          if (sorted?.column === c) {
            th.dataset.sort = sorted.desc ? "desc" : "asc";
            th.append(sorted.desc ? " ▼" : " ▲");
          }
          th.addEventListener("click", () => store.update({ sort: nextSort(this.sort(), c) }));
        },
      });
      for (const tr of table.querySelectorAll<HTMLElement>("tbody tr")) {
        tr.addEventListener("click", () => {
          const p = points.pointOfRow(Number(tr.dataset.row));
          if (p >= 0) ctx.centreOn(p);
          for (const other of table.querySelectorAll(".current")) other.classList.remove("current");
          tr.classList.add("current");
        });
      }
      this.host.replaceChildren(table);
    } catch (err) {
      if (mine === this.seq) ctx.onError(err);
    }
  }
}
