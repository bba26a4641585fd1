// The map of a projection in the workspace. Everything it shows comes from the view store
// (camera, colour and size encodings, hidden legend entries, filters, selection, search,
// the focused point); user gestures change the store, never the picture directly. The
// arithmetic (scales, filter masks, lasso geometry, label placement) lives in pure modules
// (scales.ts, filters.ts, geometry.ts); this file wires them to regl-scatterplot and the DOM.

import createScatterplot from "regl-scatterplot";
import { errorMessage, ingest, projection as projectionApi, withAuthRetry } from "./api";
import { formatBytes, formatCount, h } from "./dom";
import type { Column } from "./gen/embedviz/v1/ingest_pb";
import { ExportFormat, PointEncoding, type Cluster, type PointMatch } from "./gen/embedviz/v1/projection_pb";
import { categoryCounts, countsByCluster, filterMask, histogram, maskIndexes, cellOf, type ColumnData } from "./filters";
import { boxPolygon, clusterCentroids, placeLabels, pointsInPolygon, subCentroids, toScreen, type LabelCandidate, type PlacedLabel } from "./geometry";
import { ProgressBar } from "./jobs";
import { normalizeCoordinates, PointSet } from "./points";
import { categoricalPalette, categoryEntries, NOISE_COLOR, numericScale, sequentialRamp, type CategoryEntry } from "./scales";
import { rowsTable, valueText } from "./table";
import { alignPositions, interpolate, progressAt, TRANSITION_MAX_POINTS, TRANSITION_MS, type Positions } from "./transition";
import { hasFilters, type ViewState, type ViewStore } from "./viewstate";

export const MAP_BACKGROUND = "#ffffff";
/** Rows a ReadColumns message (the server allows up to 262,144). */
const COLUMN_BATCH_ROWS = 131_072;
const TABLE_PAGE = 100;
/** Selections up to this many rows can be sorted by a column (their rows are fetched). */
const SORTABLE_ROWS = 5_000;

export interface MapOptions {
  store: ViewStore;
  projectionName: string;
  datasetName: string;
  textColumns: string[];
  columns: Column[];
  /** Where the parts go: the map stage, the side panel (legend, filters, details), the table panel. */
  stage: HTMLElement;
  toolbar: HTMLElement;
  side: HTMLElement;
  table: HTMLElement;
  onError: (err: unknown) => void;
  onClearError: () => void;
}

export interface EmbedvizTestHooks {
  pointCount: number;
  totalCount: number;
  ready: boolean;
  projection: string;
  background: string;
  screenPositionOf(i: number): { x: number; y: number } | null;
  rowOfPoint(i: number): number;
  hoveredPoint: number;
  pointOfRow(row: number): number;
  selectPoints(points: number[]): void;
  selected: number[];
  lastExport: { filename: string; bytes: number; text: string } | null;
  /** Labels drawn now, with their screen boxes (canvas px). */
  labels: { text: string; left: number; top: number; width: number; height: number }[];
  /** Points that pass the filters now. */
  visibleCount: number;
  /** Rows of the linked table's set (selection and filters), ascending. */
  linkedRows: number[];
  /** Colour of the legend entry with this key, or "". */
  legendColor(key: string): string;
  /** Camera as in the view state. */
  camera(): { x: number; y: number; distance: number };
}

declare global {
  interface Window {
    __embedviz?: Partial<EmbedvizTestHooks>;
  }
}

function pointSizeFor(n: number): number {
  if (n < 2_000) return 7;
  if (n < 50_000) return 4;
  if (n < 500_000) return 2.5;
  return 1.5;
}


/** Where the last 2-D map drew its points, so the next map of the same rows moves from there. */
let lastPositions: (Positions & { dataset: string; projection: string }) | null = null;

/** A 3-D map (or anything that is not a 2-D map) came between: the next 2-D map just appears. */
export function forgetMapPositions(): void {
  lastPositions = null;
}

/** Builds the map; returns a function that tears it down. */
export async function showMap(opts: MapOptions): Promise<() => void> {
  const { store, onError } = opts;
  const clearError = opts.onClearError;
  const cleanups: (() => void)[] = [];
  const allColumns = opts.columns;
  const columnNames = new Set(allColumns.map((c) => c.name));

  // ---------- DOM ----------
  const canvas = h("canvas", { id: "map-canvas", "data-testid": "map-canvas" });
  const overlay = h("canvas", { id: "map-labels", "data-testid": "map-labels", class: "map-labels" });
  const lassoLayer = h("div", { id: "map-lasso-layer", class: "lasso-layer", hidden: true });
  const tooltip = h("div", { id: "map-tooltip", "data-testid": "map-tooltip", class: "tooltip", hidden: true });
  const noMatch = h("div", { id: "map-no-match", "data-testid": "map-no-match", class: "map-message", hidden: true }, "No point matches these filters. ", h("button", { type: "button", class: "secondary", id: "clear-filters-button", onclick: () => store.update({ filters: { categories: {}, ranges: {}, searchOnly: false, selectionOnly: false }, hidden: [] }) }, "Clear filters"));
  const loading = new ProgressBar("points-progress", "Loading points");
  const frame = h("div", { id: "map-container", "data-testid": "map-container", class: "map-frame" }, canvas, overlay, lassoLayer, tooltip, noMatch, h("div", { class: "map-loading" }, loading.el));
  opts.stage.replaceChildren(frame);

  const colorBy = h("select", { id: "color-by", "data-testid": "color-by", "aria-label": "Colour by" }, h("option", { value: "" }, "Colour: cluster"), ...allColumns.map((c) => h("option", { value: c.name }, `Colour: ${c.name}`)));
  const sizeBy = h("select", { id: "size-by", "data-testid": "size-by", "aria-label": "Size by" }, h("option", { value: "" }, "Size: same"), ...allColumns.map((c) => h("option", { value: c.name }, `Size: ${c.name}`)));
  const searchInput = h("input", { id: "map-search", "data-testid": "map-search", type: "search", placeholder: "Search by meaning…" });
  const searchIn = h("select", { id: "map-search-mode", "data-testid": "map-search-mode", "aria-label": "Search in" }, h("option", { value: "" }, "by meaning"), ...allColumns.map((c) => h("option", { value: c.name }, `text in ${c.name}`)));
  const searchButton = h("button", { id: "map-search-button", "data-testid": "map-search-button", type: "submit" }, "Search");
  const searchForm = h("form", { class: "map-search" }, searchInput, searchIn, searchButton);
  const lassoButton = h("button", { id: "lasso-button", "data-testid": "lasso-button", type: "button", class: "secondary", "aria-pressed": "false", title: "Draw around points to select them (or hold Shift and drag)" }, "Lasso");
  const boxButton = h("button", { id: "box-button", "data-testid": "box-button", type: "button", class: "secondary", "aria-pressed": "false", title: "Drag a rectangle to select the points in it" }, "Box");
  const clearSelection = h("button", { id: "clear-selection-button", type: "button", class: "secondary", title: "Clear the selection (Esc)" }, "Clear");
  opts.toolbar.replaceChildren(colorBy, sizeBy, searchForm, lassoButton, boxButton, clearSelection);

  const status = h("div", { id: "map-status", "data-testid": "map-status", class: "map-status muted" });
  const legend = h("ul", { id: "map-legend", "data-testid": "map-legend", class: "legend" });
  const legendScale = h("div", { id: "legend-scale", class: "legend-scale", hidden: true });
  const filterCount = h("div", { id: "filter-count", "data-testid": "filter-count", class: "filter-count" });
  const addFilter = h("select", { id: "add-filter", "data-testid": "add-filter", "aria-label": "Filter by a column" }, h("option", { value: "" }, "+ Filter by column…"), ...allColumns.map((c) => h("option", { value: c.name }, c.name)));
  const onlySearch = h("input", { type: "checkbox", id: "filter-search-only", "data-testid": "filter-search-only" });
  const onlySelection = h("input", { type: "checkbox", id: "filter-selection-only", "data-testid": "filter-selection-only" });
  const filterList = h("div", { id: "filter-list", "data-testid": "filter-list" });
  const tooltipPicker = h("div", { class: "tooltip-picker" });
  const searchResults = h("ol", { id: "search-results", "data-testid": "search-results", class: "matches" });
  const searchBox = h("div", { id: "search-panel", class: "panel-block", hidden: true }, h("h3", {}, "Search results"), searchResults);
  const detailsBody = h("div", { id: "point-details", "data-testid": "point-details" });
  const neighborsTitle = h("h3", { id: "neighbors-title" }, "Nearest neighbours");
  const neighbors = h("ol", { id: "neighbors-list", "data-testid": "neighbors-list", class: "matches" });
  const neighborsBox = h("div", { id: "neighbors-panel", class: "panel-block", hidden: true }, h("h3", {}, "Point"), detailsBody, neighborsTitle, h("p", { class: "muted small" }, "by cosine similarity in the embedding space"), neighbors);
  opts.side.replaceChildren(
    status,
    searchBox,
    neighborsBox,
    h("div", { class: "panel-block" }, h("h3", {}, "Legend"), h("p", { class: "muted small" }, "Click an entry to hide or show it; double-click to show only it."), legendScale, legend),
    h("details", { class: "panel-block", id: "tooltip-columns" }, h("summary", {}, "Tooltip shows…"), tooltipPicker),
    h("div", { class: "panel-block", id: "filters-panel" }, h("h3", {}, "Filters"), filterCount, addFilter, h("label", { class: "inline" }, onlySearch, " only search hits"), h("label", { class: "inline" }, onlySelection, " only the selection"), filterList),
  );

  const selectionInfo = h("div", { id: "selection-count", "data-testid": "selection-count", class: "muted" });
  const clusterCounts = h("div", { id: "selection-clusters", "data-testid": "selection-clusters", class: "cluster-counts" });
  const columnPicker = h("details", { class: "column-picker" }, h("summary", {}, "Columns"));
  const tablePrev = h("button", { id: "selection-prev", type: "button", class: "secondary", disabled: true }, "‹");
  const tableNext = h("button", { id: "selection-next", type: "button", class: "secondary", disabled: true }, "›");
  const tablePage = h("span", { id: "selection-page", class: "muted" });
  const selectionHost = h("div", { id: "selection-table-host", class: "table-scroll" });
  const exportFormat = h("select", { id: "export-format", "data-testid": "export-format", "aria-label": "Export format" }, h("option", { value: String(ExportFormat.CSV) }, "CSV"), h("option", { value: String(ExportFormat.JSONL) }, "JSON Lines"), h("option", { value: String(ExportFormat.PARQUET) }, "Parquet"));
  const exportColumns = h("input", { id: "export-columns", "data-testid": "export-columns", type: "checkbox", checked: true });
  const exportAll = h("button", { id: "export-all-button", "data-testid": "export-all-button", type: "button", class: "secondary" }, "Export all");
  const exportSelection = h("button", { id: "export-selection-button", "data-testid": "export-selection-button", type: "button", class: "secondary", disabled: true }, "Export these rows");
  const exportStatus = h("span", { id: "export-status", "data-testid": "export-status", class: "muted" });
  const selectionBox = h(
    "section",
    { id: "selection-panel", "data-testid": "selection-panel" },
    h("div", { class: "table-tools row" }, selectionInfo, columnPicker, tablePrev, tablePage, tableNext, exportFormat, h("label", { class: "inline", title: "Add the dataset's columns to row, coordinates, cluster and label" }, exportColumns, " with columns"), exportSelection, exportAll, exportStatus),
    clusterCounts,
    selectionHost,
  );
  opts.table.replaceChildren(selectionBox);

  const hooks: Partial<EmbedvizTestHooks> = { pointCount: 0, totalCount: 0, ready: false, projection: opts.projectionName, background: MAP_BACKGROUND, hoveredPoint: -1, selected: [], lastExport: null, labels: [], linkedRows: [] };
  window.__embedviz = hooks;

  // ---------- points ----------
  const points = new PointSet();
  let total = 0;
  for await (const chunk of withAuthRetry(() => projectionApi.streamPoints({ name: opts.projectionName, encoding: PointEncoding.PACKED }))) {
    points.add(chunk);
    total = Number(chunk.totalCount) || points.length;
    loading.set(total ? points.length / total : 1, `${formatCount(points.length)} of ${formatCount(total)} points`, "running");
  }
  loading.set(1, `${formatCount(points.length)} points`, "succeeded");
  loading.el.hidden = true;
  const n = points.length;
  const { x, y } = normalizeCoordinates(points.coords, n, points.dimensions);
  // Switched from another 2-D map of this dataset: the points start where they were there
  // and move to their places here (src/transition.ts), keeping colours, filters, selection.
  const before = lastPositions;
  lastPositions = null;
  const moveFrom = before && before.dataset === opts.datasetName && before.projection !== opts.projectionName && n <= TRANSITION_MAX_POINTS ? alignPositions(before, { rows: points.rows, x, y }, n) : null;
  let drawX = moveFrom ? Float32Array.from(moveFrom.x) : x;
  let drawY = moveFrom ? Float32Array.from(moveFrom.y) : y;
  let maxRow = -1;
  for (let i = 0; i < n; i++) if (points.rows[i] > maxRow) maxRow = points.rows[i];
  const pointOf = new Int32Array(maxRow + 1).fill(-1);
  for (let i = 0; i < n; i++) pointOf[points.rows[i]] = i;
  const pointOfRow = (row: number) => (row >= 0 && row < pointOf.length ? pointOf[row] : -1);
  const clusterIds = [...new Set(points.clusters.subarray(0, n))].sort((a, b) => Number(a < 0) - Number(b < 0) || a - b);
  const clusterSize = countsByCluster(points.clusters, Array.from({ length: n }, (_, i) => i));

  // ---------- the scatterplot ----------
  const baseSize = pointSizeFor(n);
  const scatterplot = createScatterplot({
    canvas,
    width: "auto",
    height: "auto",
    backgroundColor: MAP_BACKGROUND,
    pointSize: baseSize,
    pointSizeSelected: baseSize + 3,
    pointOutlineWidth: 2,
    pointColor: ["#4e79a7", "#4e79a7"],
    colorBy: "valueA",
    opacity: n > 100_000 ? 0.6 : 0.9,
    lassoOnLongPress: false,
    // A little margin around the map, so edge points and their labels are not cut.
    cameraDistance: 1.08,
  });
  cleanups.push(() => scatterplot.destroy());
  // Past 100k points, opacity follows the density on screen, so dense regions do not turn
  // into one blob and sparse ones stay visible ("density" is in the library, not its types).
  if (n > 100_000) scatterplot.set({ opacityBy: "density" } as unknown as Parameters<typeof scatterplot.set>[0]);

  const columnCache = new Map<string, ColumnData>();
  const columnLoads = new Map<string, Promise<ColumnData>>();
  const columnType = new Map(allColumns.map((c) => [c.name, c.type]));
  const fetchColumn = (name: string): Promise<ColumnData> => {
    const cached = columnLoads.get(name);
    if (cached) return cached;
    const load = (async () => {
      if (!columnType.has(name)) throw new Error(`column '${name}' not found; the dataset has: ${allColumns.map((c) => c.name).join(", ")}`);
      // ReadColumns: the column as Arrow IPC batches, decoded straight into typed arrays.
      // apache-arrow (~190 kB minified) is its own chunk, loaded with the first column.
      const { ColumnAssembler } = await import("./columns");
      const assembler = new ColumnAssembler(n, pointOfRow);
      for await (const res of withAuthRetry(() => ingest.readColumns({ dataset: opts.datasetName, columns: [name], batchRows: COLUMN_BATCH_ROWS }))) {
        assembler.add(Number(res.startRow), res.arrowIpc, Number(res.totalRows));
        status.textContent = `reading ${name}: ${formatCount(assembler.rows)} of ${formatCount(assembler.totalRows)} rows…`;
      }
      const data = assembler.finish();
      columnCache.set(name, data);
      return data;
    })();
    columnLoads.set(name, load);
    load.catch(() => columnLoads.delete(name));
    return load;
  };

  // ---------- clusters and their labels ----------
  let clusters: Cluster[] = [];
  const clusterLabel = (id: number) => clusters.find((c) => c.id === id)?.label || (id < 0 ? "noise" : `cluster ${id}`);
  try {
    clusters = (await projectionApi.listClusters({ parent: opts.projectionName })).clusters;
  } catch {
    // Labels are optional; the map keeps plain cluster numbers.
  }

  // ---------- encodings → legend entries and per-point values ----------
  interface Encoding {
    mode: "cluster" | "category" | "number";
    column: string;
    entries: CategoryEntry[];
    /** Legend key of point i. */
    keyOf: (i: number) => string;
    valueA: Float32Array;
    palette: string[];
    range?: { lo: number; hi: number };
  }
  let encoding: Encoding | null = null;
  let mask: Uint8Array = new Uint8Array(n).fill(1);
  let visible = n;
  let searchHits: number[] = [];

  const clusterEncoding = (): Encoding => {
    const palette = categoricalPalette(clusterIds.filter((id) => id >= 0).length);
    let k = 0;
    const entries = clusterIds.map((id) => ({ key: String(id), label: clusterLabel(id), color: id < 0 ? NOISE_COLOR : palette[k++], count: clusterSize.get(id) ?? 0 }));
    const index = new Map(clusterIds.map((id, i) => [id, i]));
    const valueA = new Float32Array(n);
    for (let i = 0; i < n; i++) valueA[i] = index.get(points.clusters[i]) ?? 0;
    return { mode: "cluster", column: "", entries, keyOf: (i) => String(points.clusters[i]), valueA, palette: entries.map((e) => e.color) };
  };

  const columnEncoding = (name: string, col: ColumnData): Encoding => {
    if (col.kind === "number") {
      const scale = numericScale(col.values);
      const valueA = new Float32Array(n);
      for (let i = 0; i < n; i++) {
        const t = scale.normalize(col.values[i]);
        valueA[i] = Number.isNaN(t) ? 0 : t;
      }
      return { mode: "number", column: name, entries: [], keyOf: () => "", valueA, palette: sequentialRamp(64), range: { lo: scale.lo, hi: scale.hi } };
    }
    const counts = new Map<string, number>();
    let nulls = 0;
    for (let i = 0; i < n; i++) {
      const c = col.codes[i];
      if (c < 0) nulls++;
      else counts.set(col.dict[c], (counts.get(col.dict[c]) ?? 0) + 1);
    }
    const entries = categoryEntries(counts, nulls);
    const entryIndex = new Map(entries.map((e, i) => [e.key, i]));
    const other = entryIndex.get("__other__") ?? 0;
    const codeEntry = new Int32Array(col.dict.length).map((_, c) => entryIndex.get(col.dict[c]) ?? other);
    const nullEntry = entryIndex.get("__null__") ?? 0;
    const keyOfCode = (c: number) => (c < 0 ? "__null__" : entries[codeEntry[c]].key);
    const valueA = new Float32Array(n);
    for (let i = 0; i < n; i++) valueA[i] = col.codes[i] < 0 ? nullEntry : codeEntry[col.codes[i]];
    return { mode: "category", column: name, entries, keyOf: (i) => keyOfCode(col.codes[i]), valueA, palette: entries.map((e) => e.color) };
  };

  const twoAtLeast = (c: string[]) => (c.length > 1 ? c : [c[0] ?? "#4e79a7", c[0] ?? "#4e79a7"]);
  let sizeValues: Float32Array | null = null;

  /** Draws points with the current encoding and size, then applies the filter mask. */
  const pointData = (enc: Encoding) => {
    const data: { x: Float32Array; y: Float32Array; valueA: Float32Array; valueB?: Float32Array } = { x: drawX, y: drawY, valueA: enc.valueA };
    if (sizeValues) data.valueB = sizeValues;
    return data;
  };
  const redraw = async () => {
    if (!encoding) return;
    const data = pointData(encoding);
    scatterplot.set({
      pointColor: encoding.mode === "number" ? encoding.palette : twoAtLeast(encoding.palette),
      colorBy: "valueA",
      sizeBy: sizeValues ? "valueB" : null,
      pointSize: sizeValues ? Array.from({ length: 16 }, (_, i) => baseSize * (0.5 + (2.5 * i) / 15)) : baseSize,
    });
    await scatterplot.draw(data, { zDataType: encoding.mode === "number" ? "continuous" : "categorical", wDataType: "continuous" });
    await applyMask();
  };

  const recomputeMask = () => {
    const s = store.get();
    const selectedPts = s.selection.map(pointOfRow).filter((p) => p >= 0);
    const result = filterMask({ n, filters: s.filters, columns: columnCache, searchHits, selected: selectedPts, keyOf: encoding?.keyOf, hidden: new Set(s.hidden) });
    mask = result.mask;
    visible = result.count;
    hooks.visibleCount = visible;
  };

  const applyMask = async () => {
    if (visible === n) await scatterplot.unfilter({ preventEvent: true });
    else await scatterplot.filter(Array.from(maskIndexes(mask)), { preventEvent: true });
    noMatch.hidden = visible > 0;
    frame.dataset.visible = String(visible);
    filterCount.textContent = `${formatCount(visible)} of ${formatCount(n)} points shown`;
    filterCount.dataset.count = String(visible);
    status.textContent = `${formatCount(n)} points · ${clusterIds.filter((id) => id >= 0).length} clusters${encoding?.column ? ` · coloured by ${encoding.column}` : ""}`;
    status.dataset.points = String(n);
    status.dataset.colorBy = encoding?.column ?? "";
    renderLegend();
    renderFilters();
    drawLabels();
    void renderTable();
  };

  // ---------- legend ----------
  const renderLegend = () => {
    if (!encoding) return;
    const s = store.get();
    const hidden = new Set(s.hidden);
    legend.dataset.mode = encoding.mode === "cluster" ? "cluster" : "column";
    if (encoding.column) legend.dataset.column = encoding.column;
    else delete legend.dataset.column;
    legendScale.hidden = encoding.mode !== "number";
    if (encoding.mode === "number" && encoding.range) {
      legendScale.replaceChildren(
        h("div", { class: "ramp", style: `background:linear-gradient(to right, ${sequentialRamp(9).join(",")})` }),
        h("div", { class: "ramp-range" }, h("span", { "data-testid": "scale-lo" }, String(+encoding.range.lo.toPrecision(4))), h("span", { "data-testid": "scale-hi" }, String(+encoding.range.hi.toPrecision(4)))),
      );
    }
    const passing = new Map<string, number>();
    for (let i = 0; i < n; i++) if (mask[i]) passing.set(encoding.keyOf(i), (passing.get(encoding.keyOf(i)) ?? 0) + 1);
    legend.replaceChildren(
      ...encoding.entries.map((e) => {
        const li = h(
          "li",
          {
            "data-testid": "legend-item",
            "data-value": e.key,
            "data-cluster": encoding?.mode === "cluster" ? e.key : null,
            "data-hidden": hidden.has(e.key) ? "true" : "false",
            "data-color": e.color,
            class: hidden.has(e.key) ? "off" : null,
            title: encoding?.mode === "cluster" ? (clusters.find((c) => String(c.id) === e.key)?.terms.join(", ") ?? "") : "",
          },
          h("span", { class: "swatch", style: `background:${e.color}` }),
          h("span", { class: "legend-label" }, e.label),
          h("span", { class: "legend-size" }, formatCount(e.count)),
          h("span", { class: "legend-passing muted small" }, hidden.has(e.key) ? "" : passing.get(e.key) !== e.count ? formatCount(passing.get(e.key) ?? 0) : ""),
        );
        let clickTimer = 0;
        li.addEventListener("click", () => {
          clearTimeout(clickTimer);
          clickTimer = window.setTimeout(() => {
            store.update((st) => ({ hidden: st.hidden.includes(e.key) ? st.hidden.filter((k) => k !== e.key) : [...st.hidden, e.key] }));
          }, 220);
        });
        li.addEventListener("dblclick", () => {
          clearTimeout(clickTimer);
          const others = (encoding?.entries ?? []).map((x) => x.key).filter((k) => k !== e.key);
          store.update((st) => ({ hidden: st.hidden.length === others.length && !st.hidden.includes(e.key) ? [] : others }));
        });
        return li;
      }),
    );
  };

  // ---------- filters panel ----------
  const renderFilters = () => {
    const s = store.get();
    onlySearch.checked = s.filters.searchOnly;
    onlySelection.checked = s.filters.selectionOnly;
    const names = [...new Set([...Object.keys(s.filters.categories), ...Object.keys(s.filters.ranges)])];
    filterList.replaceChildren(
      ...names.map((name) => {
        const col = columnCache.get(name);
        const remove = h("button", { type: "button", class: "link", "data-testid": "filter-remove", title: "Remove this filter" }, "×");
        remove.addEventListener("click", () =>
          store.update((st) => {
            const categories = { ...st.filters.categories };
            const ranges = { ...st.filters.ranges };
            delete categories[name];
            delete ranges[name];
            return { filters: { ...st.filters, categories, ranges } };
          }),
        );
        const head = h("div", { class: "filter-head" }, h("strong", {}, name), remove);
        const box = h("div", { class: "filter", "data-testid": "filter", "data-column": name }, head);
        if (!col) {
          box.append(h("div", { class: "muted small" }, "loading…"));
          return box;
        }
        if (col.kind === "category") {
          const keep = new Set(s.filters.categories[name] ?? []);
          const counts = categoryCounts(col, mask).slice(0, 50);
          box.append(
            ...counts.map((c) => {
              const cb = h("input", { type: "checkbox", checked: keep.has(c.value), "data-testid": "filter-value", value: c.value });
              cb.addEventListener("change", () =>
                store.update((st) => {
                  const cur = new Set(st.filters.categories[name] ?? []);
                  if (cb.checked) cur.add(c.value);
                  else cur.delete(c.value);
                  return { filters: { ...st.filters, categories: { ...st.filters.categories, [name]: [...cur] } } };
                }),
              );
              return h("label", { class: "inline filter-value" }, cb, ` ${c.value || "(empty)"} `, h("span", { class: "muted small" }, `${formatCount(c.passing)} / ${formatCount(c.count)}`));
            }),
          );
        } else {
          const hist = histogram(col, 24, mask);
          const peak = Math.max(1, ...hist.counts);
          const svg = `<svg viewBox="0 0 ${hist.counts.length * 6} 30" preserveAspectRatio="none" class="hist" data-testid="filter-histogram">${hist.counts
            .map((c, b) => `<rect x="${b * 6}" y="${30 - (30 * c) / peak}" width="5" height="${(30 * c) / peak}" fill="#d0d5e2"/><rect x="${b * 6}" y="${30 - (30 * hist.passing[b]) / peak}" width="5" height="${(30 * hist.passing[b]) / peak}" fill="#3d63dd"/>`)
            .join("")}</svg>`;
          const holder = h("div", {});
          holder.innerHTML = svg;
          const [lo, hi] = s.filters.ranges[name] ?? [col.min, col.max];
          const loInput = h("input", { type: "number", step: "any", value: lo, "data-testid": "filter-min", "aria-label": `${name} from` });
          const hiInput = h("input", { type: "number", step: "any", value: hi, "data-testid": "filter-max", "aria-label": `${name} to` });
          const apply = () => {
            const a = Number(loInput.value), b = Number(hiInput.value);
            if (!Number.isFinite(a) || !Number.isFinite(b)) return;
            store.update((st) => ({ filters: { ...st.filters, ranges: { ...st.filters.ranges, [name]: [Math.min(a, b), Math.max(a, b)] } } }));
          };
          loInput.addEventListener("change", apply);
          hiInput.addEventListener("change", apply);
          box.append(holder, h("div", { class: "range-inputs" }, loInput, "–", hiInput));
        }
        return box;
      }),
    );
  };
  addFilter.addEventListener("change", () => {
    const name = addFilter.value;
    addFilter.value = "";
    if (!name) return;
    void fetchColumn(name)
      .then((col) => {
        store.update((st) => {
          if (col.kind === "number") return { filters: { ...st.filters, ranges: { ...st.filters.ranges, [name]: [col.min, col.max] } } };
          return { filters: { ...st.filters, categories: { ...st.filters.categories, [name]: [...col.dict] } } };
        });
      })
      .catch(onError);
  });
  onlySearch.addEventListener("change", () => store.update((st) => ({ filters: { ...st.filters, searchOnly: onlySearch.checked } })));
  onlySelection.addEventListener("change", () => store.update((st) => ({ filters: { ...st.filters, selectionOnly: onlySelection.checked } })));

  // ---------- labels over the map ----------
  const labelFont = (size: number, weight = 600) => `${weight} ${size}px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif`;
  let labelFrame = 0;
  const transform = () => ({ width: canvas.clientWidth, height: canvas.clientHeight, view: scatterplot.get("cameraView") as unknown as ArrayLike<number> });
  const drawLabels = () => {
    cancelAnimationFrame(labelFrame);
    labelFrame = requestAnimationFrame(() => {
      const w = canvas.clientWidth, hgt = canvas.clientHeight;
      const dpr = window.devicePixelRatio || 1;
      if (overlay.width !== Math.round(w * dpr) || overlay.height !== Math.round(hgt * dpr)) {
        overlay.width = Math.round(w * dpr);
        overlay.height = Math.round(hgt * dpr);
      }
      const ctx = overlay.getContext("2d");
      if (!ctx) return;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, w, hgt);
      const t = transform();
      const distance = Number(scatterplot.get("cameraDistance")) || 1;
      // Search hits: strong rings under the labels.
      if (searchHits.length) {
        ctx.lineWidth = 2.5;
        ctx.strokeStyle = "#ff2d55";
        for (const p of searchHits) {
          if (!mask[p]) continue;
          const [sx, sy] = toScreen(t, x[p], y[p]);
          ctx.beginPath();
          ctx.arc(sx, sy, baseSize + 5, 0, 2 * Math.PI);
          ctx.stroke();
        }
      }
      const cands: LabelCandidate[] = [];
      const centres = clusterCentroids(x, y, points.clusters, mask);
      const mainSize = 14;
      for (const c of centres) {
        const text = clusterLabel(c.id);
        ctx.font = labelFont(mainSize);
        const [sx, sy] = toScreen(t, c.x, c.y);
        cands.push({ text, key: `c${c.id}`, x: sx, y: sy, width: ctx.measureText(text).width + 6, height: mainSize + 4, priority: 1e9 + c.size });
      }
      // Finer labels (the cluster's next terms at the centres of its parts) once zoomed in.
      if (distance < 0.8) {
        ctx.font = labelFont(11, 500);
        for (const sc of subCentroids(x, y, points.clusters, centres, Math.max(3, Math.round(n / 400)), mask)) {
          const terms = clusters.find((c) => c.id === sc.id)?.terms ?? [];
          const text = terms[1 + sc.part] ?? terms[sc.part % Math.max(1, terms.length)] ?? `${clusterLabel(sc.id)} · ${sc.part + 1}`;
          const [sx, sy] = toScreen(t, sc.x, sc.y);
          cands.push({ text, key: `s${sc.id}:${sc.part}`, x: sx, y: sy, width: ctx.measureText(text).width + 6, height: 15, priority: sc.size });
        }
      }
      const placed: PlacedLabel[] = placeLabels(cands, w, hgt);
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.lineJoin = "round";
      for (const l of placed) {
        const main = l.key.startsWith("c");
        ctx.font = main ? labelFont(mainSize) : labelFont(11, 500);
        ctx.lineWidth = 4;
        ctx.strokeStyle = "rgba(255,255,255,0.92)";
        ctx.strokeText(l.text, l.x, l.y);
        ctx.fillStyle = main ? "#1d2433" : "#3b4254";
        ctx.fillText(l.text, l.x, l.y);
      }
      hooks.labels = placed.map((l) => ({ text: l.text, left: l.left, top: l.top, width: l.width, height: l.height }));
      overlay.dataset.labels = String(placed.length);
    });
  };

  // ---------- camera ↔ store ----------
  let cameraTimer = 0;
  let applyingCamera = false;
  scatterplot.subscribe("view", () => {
    drawLabels();
    if (applyingCamera) return;
    clearTimeout(cameraTimer);
    cameraTimer = window.setTimeout(() => {
      const target = scatterplot.get("cameraTarget") as unknown as number[];
      const distance = Number(scatterplot.get("cameraDistance"));
      store.update({ camera: { x: target[0], y: target[1], distance } });
    }, 250);
  });
  const applyCamera = async (s: ViewState) => {
    if (!s.camera) return;
    const target = scatterplot.get("cameraTarget") as unknown as number[];
    const d = Number(scatterplot.get("cameraDistance"));
    if (Math.abs(target[0] - s.camera.x) < 1e-4 && Math.abs(target[1] - s.camera.y) < 1e-4 && Math.abs(d - s.camera.distance) < 1e-4) return;
    applyingCamera = true;
    try {
      await scatterplot.zoomToLocation([s.camera.x, s.camera.y], s.camera.distance, { transition: false });
    } finally {
      applyingCamera = false;
    }
    drawLabels();
  };
  const centreOn = (p: number) => {
    const d = Math.min(Number(scatterplot.get("cameraDistance")) || 1, 0.35);
    void scatterplot.zoomToLocation([x[p], y[p]], d, { transition: true, transitionDuration: 400 });
  };

  // ---------- tooltip ----------
  // Row texts by the columns asked for (the embedded ones, or what the tooltip shows), cached.
  const rowText = new Map<string, string>();
  const textKey = (columns: string[], row: number) => `${columns.join("\u0000")}|${row}`;
  const textsOf = async (rows: number[], columns: string[] = opts.textColumns): Promise<Map<number, string>> => {
    const labelled = columns !== opts.textColumns;
    const missing = [...new Set(rows.filter((r) => !rowText.has(textKey(columns, r))))];
    for (let k = 0; k < missing.length; k += 1000) {
      const res = await ingest.batchGetRows({ parent: opts.datasetName, indexes: missing.slice(k, k + 1000).map(BigInt), columns });
      for (const r of res.rows)
        rowText.set(textKey(columns, Number(r.index)), r.values.map((v, i) => (labelled ? `${res.columns[i]}: ${valueText(v)}` : valueText(v))).filter((t) => t !== "").join("\n") || "(empty)");
    }
    return new Map(rows.map((r) => [r, rowText.get(textKey(columns, r)) ?? "(row not found)"]));
  };
  // What the tooltip shows: the embedded text unless the user picks other columns.
  // The view state keeps the picked columns ([] = the embedded text), so a link carries them.
  const knownTooltip = store.get().tooltip.filter((c) => columnNames.has(c));
  let tooltipColumns = knownTooltip.length ? knownTooltip : opts.textColumns;
  tooltipPicker.append(
    ...allColumns.map((c) => {
      const cb = h("input", { type: "checkbox", value: c.name, checked: tooltipColumns.includes(c.name), "data-testid": "tooltip-column" });
      cb.addEventListener("change", () => {
        const picked = [...tooltipPicker.querySelectorAll<HTMLInputElement>("input:checked")].map((i) => i.value);
        const same = picked.length === opts.textColumns.length && picked.every((p, i) => p === opts.textColumns[i]);
        tooltipColumns = same || !picked.length ? opts.textColumns : picked;
        store.update({ tooltip: tooltipColumns === opts.textColumns ? [] : picked });
      });
      return h("label", { class: "inline" }, cb, ` ${c.name}`);
    }),
  );
  let mouse = { x: 0, y: 0 };
  let hovered = -1;
  frame.addEventListener("mousemove", (ev) => {
    const r = frame.getBoundingClientRect();
    mouse = { x: ev.clientX - r.left, y: ev.clientY - r.top };
    if (hovered >= 0) placeTooltip();
  });
  const placeTooltip = () => {
    tooltip.style.left = `${Math.min(mouse.x + 14, Math.max(0, frame.clientWidth - 340))}px`;
    tooltip.style.top = `${mouse.y + 14}px`;
  };
  const renderTooltip = (i: number, text: string | null) => {
    const row = points.rows[i];
    const cluster = points.clusters[i];
    const col = encoding?.column ? columnCache.get(encoding.column) : undefined;
    const extra = col && encoding ? ` · ${encoding.column}: ${cellOf(col, i) || "null"}` : "";
    tooltip.replaceChildren(
      h("div", { class: "tooltip-head" }, `Row ${row}`, cluster >= 0 ? ` · ${clusterLabel(cluster)}` : " · noise", extra),
      h("div", { class: "tooltip-text", "data-testid": "map-tooltip-text", id: "map-tooltip-text" }, text ?? "loading…"),
    );
    tooltip.dataset.row = String(row);
    tooltip.dataset.loaded = text === null ? "false" : "true";
  };
  scatterplot.subscribe("pointOver", (i: number) => {
    hovered = i;
    hooks.hoveredPoint = i;
    const row = points.rows[i];
    tooltip.hidden = false;
    placeTooltip();
    const columns = tooltipColumns;
    const cached = rowText.get(textKey(columns, row));
    renderTooltip(i, cached ?? null);
    if (cached !== undefined) return;
    textsOf([row], columns)
      .then((texts) => hovered === i && renderTooltip(i, texts.get(row) ?? ""))
      .catch((err) => hovered === i && renderTooltip(i, `could not load the row: ${errorMessage(err)}`));
  });
  scatterplot.subscribe("pointOut", () => {
    hovered = -1;
    hooks.hoveredPoint = -1;
    tooltip.hidden = true;
  });

  // ---------- search ----------
  const matchList = (list: HTMLElement, itemId: string, matches: PointMatch[], texts: Map<number, string>) => {
    list.replaceChildren(
      ...matches.map((m) => {
        const row = Number(m.rowIndex);
        const li = h("li", { "data-testid": itemId, "data-row": String(row), title: "Show on the map and list its neighbours" }, h("span", { class: "match-score" }, m.score.toFixed(3)), h("span", { class: "match-text" }, texts.get(row) ?? ""));
        li.addEventListener("click", () => {
          const p = pointOfRow(row);
          if (p >= 0) centreOn(p);
          store.update({ focus: row });
        });
        return li;
      }),
    );
    if (!matches.length) list.append(h("li", { class: "muted" }, "nothing found"));
  };
  let searchSeq = 0;
  const runSearch = async (query: string, column: string) => {
    const mine = ++searchSeq;
    if (!query) {
      searchHits = [];
      searchBox.hidden = true;
      recomputeMask();
      await applyMask();
      return;
    }
    searchButton.disabled = true;
    searchResults.dataset.state = "loading";
    try {
      const res = await projectionApi.searchPoints({ name: opts.projectionName, query, column, limit: 50 });
      const texts = await textsOf(res.matches.map((m) => Number(m.rowIndex)));
      if (mine !== searchSeq) return;
      searchBox.hidden = false;
      matchList(searchResults, "search-result", res.matches, texts);
      searchHits = res.matches.map((m) => pointOfRow(Number(m.rowIndex))).filter((p) => p >= 0);
      recomputeMask();
      await applyMask();
      const shown = searchHits.filter((p) => mask[p]);
      if (shown.length && !store.get().camera) await scatterplot.zoomToPoints(shown, { padding: 0.4, transition: true });
      searchResults.dataset.state = "done";
      searchResults.dataset.query = query;
    } catch (err) {
      searchResults.dataset.state = "error";
      onError(err);
    } finally {
      searchButton.disabled = false;
    }
  };
  searchForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearError();
    const query = searchInput.value.trim();
    const same = store.get().search.query === query && store.get().search.column === searchIn.value;
    // A new search moves the view to its hits: the stored camera is let go.
    store.update({ search: { query, column: searchIn.value }, camera: null });
    if (same) void runSearch(query, searchIn.value);
  });

  // ---------- a point's details and neighbours ----------
  let neighborsSeq = 0;
  const showDetails = async (row: number) => {
    const mine = ++neighborsSeq;
    if (row < 0) {
      neighborsBox.hidden = true;
      return;
    }
    neighborsBox.hidden = false;
    neighbors.dataset.state = "loading";
    neighbors.dataset.row = String(row);
    try {
      const [full, res] = await Promise.all([ingest.batchGetRows({ parent: opts.datasetName, indexes: [BigInt(row)] }), projectionApi.findNeighbors({ name: opts.projectionName, rowIndex: BigInt(row), limit: 10 })]);
      const texts = await textsOf(res.neighbors.map((m) => Number(m.rowIndex)));
      if (mine !== neighborsSeq) return;
      const r = full.rows[0];
      detailsBody.replaceChildren(
        h("dl", { class: "details" }, h("dt", {}, "row"), h("dd", {}, String(row)), ...(r ? full.columns.flatMap((c, i) => [h("dt", {}, c), h("dd", {}, valueText(r.values[i]))]) : [])),
      );
      neighborsTitle.replaceChildren(`Nearest neighbours of row ${row}`);
      matchList(neighbors, "neighbor-item", res.neighbors, texts);
      neighbors.dataset.state = "done";
      highlight();
    } catch (err) {
      if (mine !== neighborsSeq) return;
      neighbors.dataset.state = "error";
      onError(err);
    }
  };

  // ---------- selection: click, lasso, box ----------
  let neighborPoints: number[] = [];
  const highlight = () => {
    const s = store.get();
    const sel = s.selection.map(pointOfRow).filter((p) => p >= 0);
    neighborPoints = s.focus >= 0 ? [...neighbors.querySelectorAll<HTMLElement>("[data-testid=neighbor-item]")].map((li) => pointOfRow(Number(li.dataset.row))).filter((p) => p >= 0) : [];
    const focus = pointOfRow(s.focus);
    const pts = sel.length ? sel : focus >= 0 ? [focus, ...neighborPoints] : [];
    if (pts.length) scatterplot.select(pts.filter((p) => mask[p]), { preventEvent: true });
    else scatterplot.deselect({ preventEvent: true });
  };
  scatterplot.subscribe("select", ({ points: pts }: { points: number[] }) => {
    // A click on a point (regl-scatterplot's own selection): open its details.
    if (pts.length === 1) store.update({ focus: points.rows[pts[0]], selection: [] });
  });
  scatterplot.subscribe("deselect", () => {
    if (store.get().selection.length || store.get().focus >= 0) store.update({ selection: [], focus: -1 });
  });

  let tool: "" | "lasso" | "box" = "";
  const setTool = (t: "" | "lasso" | "box") => {
    tool = t;
    lassoLayer.hidden = !t;
    frame.dataset.tool = t;
    for (const [b, name] of [[lassoButton, "lasso"], [boxButton, "box"]] as const) {
      b.setAttribute("aria-pressed", String(t === name));
      b.classList.toggle("active", t === name);
    }
  };
  lassoButton.addEventListener("click", () => setTool(tool === "lasso" ? "" : "lasso"));
  boxButton.addEventListener("click", () => setTool(tool === "box" ? "" : "box"));
  clearSelection.addEventListener("click", () => store.update({ selection: [], focus: -1 }));
  const onKey = (ev: KeyboardEvent) => {
    if (ev.key === "Escape" && !(ev.target instanceof HTMLInputElement)) {
      setTool("");
      store.update({ selection: [], focus: -1 });
    }
  };
  document.addEventListener("keydown", onKey);
  cleanups.push(() => document.removeEventListener("keydown", onKey));

  // The stroke is drawn and hit-tested here, on a layer above the WebGL canvas, so it works
  // wherever it starts (on a point too: the canvas never sees the press).
  let stroke: number[] | null = null;
  let strokeKind: "lasso" | "box" = "lasso";
  const localPos = (ev: PointerEvent) => {
    const r = canvas.getBoundingClientRect();
    return [ev.clientX - r.left, ev.clientY - r.top] as const;
  };
  const drawStroke = () => {
    drawLabels();
    if (!stroke) return;
    requestAnimationFrame(() => {
      const ctx = overlay.getContext("2d");
      if (!ctx || !stroke) return;
      const poly = strokeKind === "box" && stroke.length >= 4 ? boxPolygon(stroke[0], stroke[1], stroke[stroke.length - 2], stroke[stroke.length - 1]) : stroke;
      ctx.beginPath();
      for (let k = 0; k < poly.length; k += 2) (k ? ctx.lineTo : ctx.moveTo).call(ctx, poly[k], poly[k + 1]);
      ctx.closePath();
      ctx.fillStyle = "rgba(61,99,221,0.08)";
      ctx.fill();
      ctx.setLineDash([5, 4]);
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "#3d63dd";
      ctx.stroke();
      ctx.setLineDash([]);
    });
  };
  const startStroke = (ev: PointerEvent, kind: "lasso" | "box") => {
    ev.preventDefault();
    ev.stopPropagation();
    strokeKind = kind;
    stroke = [...localPos(ev)];
    lassoLayer.hidden = false;
    lassoLayer.setPointerCapture(ev.pointerId);
    frame.dataset.stroking = "true";
  };
  lassoLayer.addEventListener("pointerdown", (ev) => startStroke(ev, tool === "box" ? "box" : "lasso"));
  // Shift+drag lassoes in pan mode too.
  canvas.addEventListener(
    "pointerdown",
    (ev) => {
      if (ev.shiftKey && !tool) startStroke(ev, "lasso");
    },
    { capture: true },
  );
  lassoLayer.addEventListener("pointermove", (ev) => {
    if (!stroke) return;
    const [px, py] = localPos(ev);
    if (strokeKind === "box") stroke = [stroke[0], stroke[1], px, py];
    else stroke.push(px, py);
    drawStroke();
  });
  const endStroke = (ev: PointerEvent) => {
    if (!stroke) return;
    const poly = strokeKind === "box" && stroke.length >= 4 ? boxPolygon(stroke[0], stroke[1], stroke[2], stroke[3]) : stroke;
    stroke = null;
    delete frame.dataset.stroking;
    lassoLayer.hidden = !tool;
    if (lassoLayer.hasPointerCapture(ev.pointerId)) lassoLayer.releasePointerCapture(ev.pointerId);
    drawLabels();
    if (poly.length < 6) return;
    const inside = pointsInPolygon(x, y, transform(), poly, mask);
    store.update({ selection: inside.map((p) => points.rows[p]).sort((a, b) => a - b), focus: -1 });
  };
  lassoLayer.addEventListener("pointerup", endStroke);
  lassoLayer.addEventListener("pointercancel", endStroke);

  // ---------- the linked table ----------
  let tablePageIndex = 0;
  // Sort and columns live in the view state (the URL): [] columns = all of them.
  const startSort = store.get().sort;
  let tableSort: { column: string; desc: boolean } | null = startSort && columnNames.has(startSort.column) ? startSort : null;
  const startColumns = store.get().tableColumns.filter((c) => columnNames.has(c));
  let tableColumns: string[] = startColumns.length ? startColumns : allColumns.map((c) => c.name);
  let tableSeq = 0;
  const linkedRows = (): number[] => {
    const s = store.get();
    if (s.selection.length) return s.selection.filter((r) => mask[pointOfRow(r)] === 1);
    if (visible < n || hasFilters(s.filters) || s.hidden.length) return Array.from(maskIndexes(mask), (p) => points.rows[p]).sort((a, b) => a - b);
    return [];
  };
  columnPicker.append(
    ...allColumns.map((c) => {
      const cb = h("input", { type: "checkbox", checked: tableColumns.includes(c.name), value: c.name, "data-testid": "table-column" });
      cb.addEventListener("change", () => {
        tableColumns = [...columnPicker.querySelectorAll<HTMLInputElement>("input:checked")].map((i) => i.value);
        store.update({ tableColumns: tableColumns.length === allColumns.length ? [] : tableColumns });
        void renderTable();
      });
      return h("label", { class: "inline" }, cb, ` ${c.name}`);
    }),
  );
  tablePrev.addEventListener("click", () => {
    tablePageIndex = Math.max(0, tablePageIndex - 1);
    void renderTable();
  });
  tableNext.addEventListener("click", () => {
    tablePageIndex++;
    void renderTable();
  });
  let lastLinkedKey = "";
  const renderTable = async () => {
    const mine = ++tableSeq;
    let rows = linkedRows();
    const key = `${rows.length}:${rows[0]}:${rows[rows.length - 1]}`;
    if (key !== lastLinkedKey) tablePageIndex = 0;
    lastLinkedKey = key;
    hooks.linkedRows = rows;
    hooks.selected = store.get().selection;
    exportSelection.disabled = rows.length === 0;
    const s = store.get();
    selectionInfo.dataset.count = String(rows.length);
    selectionInfo.dataset.kind = s.selection.length ? "selection" : "filter";
    document.body.dataset.table = rows.length ? "open" : "closed";
    if (!rows.length) {
      selectionInfo.textContent = s.selection.length ? "no selected point passes the filters" : "Select points with the lasso or box, or filter the map, to list their rows here.";
      clusterCounts.replaceChildren();
      selectionHost.replaceChildren();
      tablePage.textContent = "";
      tablePrev.disabled = tableNext.disabled = true;
      return;
    }
    selectionInfo.textContent = `${formatCount(rows.length)} ${s.selection.length ? "points selected" : "points pass the filters"}`;
    const byCluster = countsByCluster(points.clusters, rows.map(pointOfRow));
    clusterCounts.replaceChildren(
      ...[...byCluster.entries()].sort((a, b) => b[1] - a[1]).slice(0, 12).map(([id, c]) => h("span", { class: "pill", "data-testid": "selection-cluster", "data-cluster": String(id) }, `${clusterLabel(id)}: ${formatCount(c)}`)),
    );
    try {
      if (tableSort && rows.length <= SORTABLE_ROWS) {
        // Sort by a column: read that column's values for these rows.
        const col = await fetchColumn(tableSort.column).catch(() => null);
        if (col) {
          const val = (r: number) => {
            const p = pointOfRow(r);
            return col.kind === "number" ? col.values[p] : cellOf(col, p);
          };
          const dir = tableSort.desc ? -1 : 1;
          rows = [...rows].sort((a, b) => {
            const va = val(a), vb = val(b);
            return (va < vb ? -1 : va > vb ? 1 : a - b) * dir;
          });
        }
      }
      const pages = Math.ceil(rows.length / TABLE_PAGE);
      tablePageIndex = Math.min(tablePageIndex, pages - 1);
      const shown = rows.slice(tablePageIndex * TABLE_PAGE, (tablePageIndex + 1) * TABLE_PAGE);
      tablePage.textContent = `page ${tablePageIndex + 1} of ${pages}`;
      tablePrev.disabled = tablePageIndex === 0;
      tableNext.disabled = tablePageIndex >= pages - 1;
      const res = await ingest.batchGetRows({ parent: opts.datasetName, indexes: shown.map(BigInt), columns: tableColumns.length ? tableColumns : undefined });
      if (mine !== tableSeq) return;
      const order = new Map(res.rows.map((r) => [Number(r.index), r]));
      const ordered = shown.map((r) => order.get(r)).filter((r) => r !== undefined);
      const table = rowsTable("selection-table", res.columns, ordered, {
        indexHeader: "row",
        sortable: (th, c) => {
          th.classList.add("sortable");
          if (tableSort?.column === c) {
            th.dataset.sort = tableSort.desc ? "desc" : "asc";
            th.append(tableSort.desc ? " ▼" : " ▲");
          }
          th.addEventListener("click", () => {
            tableSort = tableSort?.column !== c ? { column: c, desc: false } : tableSort.desc ? null : { column: c, desc: true };
            store.update({ sort: tableSort });
            void renderTable();
          });
        },
      });
      for (const tr of table.querySelectorAll<HTMLElement>("tbody tr")) {
        tr.addEventListener("click", () => {
          const row = Number(tr.dataset.row);
          const p = pointOfRow(row);
          if (p >= 0) centreOn(p);
          for (const other of table.querySelectorAll(".current")) other.classList.remove("current");
          tr.classList.add("current");
        });
      }
      selectionHost.replaceChildren(table);
    } catch (err) {
      if (mine === tableSeq) onError(err);
    }
  };

  // ---------- export ----------
  const runExport = async (rows: number[], button: HTMLButtonElement) => {
    button.disabled = true;
    clearError();
    const format = Number(exportFormat.value) as ExportFormat;
    const ext = format === ExportFormat.JSONL ? "jsonl" : format === ExportFormat.PARQUET ? "parquet" : "csv";
    exportStatus.textContent = "exporting…";
    exportStatus.dataset.state = "running";
    try {
      const parts: Uint8Array[] = [];
      let bytes = 0;
      let type = "application/octet-stream";
      for await (const chunk of withAuthRetry(() => projectionApi.exportProjection({ name: opts.projectionName, format, columns: exportColumns.checked ? allColumns.map((c) => c.name) : [], rowIndexes: rows.map(BigInt) }))) {
        parts.push(chunk.data);
        bytes += chunk.data.length;
        if (chunk.contentType) type = chunk.contentType;
        exportStatus.textContent = `exporting… ${formatBytes(bytes)}`;
      }
      const blob = new Blob(parts as BlobPart[], { type });
      const filename = `${opts.projectionName.split("/").slice(-1)[0]}${rows.length ? `-selection-${rows.length}` : ""}.${ext}`;
      const url = URL.createObjectURL(blob);
      const a = h("a", { href: url, download: filename, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      exportStatus.textContent = `saved ${filename} (${formatBytes(bytes)})`;
      exportStatus.dataset.state = "done";
      hooks.lastExport = { filename, bytes, text: ext === "parquet" ? "" : new TextDecoder().decode(await blob.arrayBuffer()).slice(0, 200_000) };
    } catch (err) {
      exportStatus.textContent = "export failed";
      exportStatus.dataset.state = "error";
      onError(err);
    } finally {
      button.disabled = button === exportSelection ? linkedRows().length === 0 : false;
    }
  };
  exportAll.addEventListener("click", () => void runExport([], exportAll));
  exportSelection.addEventListener("click", () => void runExport(linkedRows(), exportSelection));

  // ---------- the store drives everything ----------
  const applyEncoding = async (s: ViewState) => {
    colorBy.value = s.colorBy;
    sizeBy.value = s.sizeBy;
    colorBy.disabled = sizeBy.disabled = true;
    try {
      encoding = s.colorBy ? columnEncoding(s.colorBy, await fetchColumn(s.colorBy)) : clusterEncoding();
      if (s.sizeBy) {
        const col = await fetchColumn(s.sizeBy);
        if (col.kind !== "number") throw new Error(`size needs a numeric column; '${s.sizeBy}' holds text`);
        const scale = numericScale(col.values);
        sizeValues = new Float32Array(n);
        for (let i = 0; i < n; i++) {
          const t = scale.normalize(col.values[i]);
          sizeValues[i] = Number.isNaN(t) ? 0 : t;
        }
      } else sizeValues = null;
    } catch (err) {
      onError(err);
      if (!encoding) encoding = clusterEncoding();
      const fallback = { colorBy: encoding.column, sizeBy: sizeValues ? s.sizeBy : "" };
      colorBy.disabled = sizeBy.disabled = false;
      store.update(fallback);
      return;
    }
    colorBy.disabled = sizeBy.disabled = false;
    // Filters on columns not read yet: read them first.
    for (const name of [...Object.keys(s.filters.categories), ...Object.keys(s.filters.ranges)]) await fetchColumn(name).catch(onError);
    recomputeMask();
    await redraw();
    highlight();
  };
  colorBy.addEventListener("change", () => {
    clearError();
    store.update({ colorBy: colorBy.value, hidden: [] });
  });
  sizeBy.addEventListener("change", () => {
    clearError();
    store.update({ sizeBy: sizeBy.value });
  });

  const initial = store.get();
  searchInput.value = initial.search.query;
  searchIn.value = initial.search.column;
  await applyEncoding(initial);
  await applyCamera(initial);
  if (initial.search.query) await runSearch(initial.search.query, initial.search.column);
  if (initial.focus >= 0) void showDetails(initial.focus);

  let queue: Promise<void> = Promise.resolve();
  const serial = (work: () => Promise<void>) => (queue = queue.then(work).catch(onError));
  cleanups.push(store.watch((s) => [s.colorBy, s.sizeBy], (_, s) => void serial(() => applyEncoding(s))));
  cleanups.push(
    store.watch(
      (s) => [s.filters, s.hidden],
      (_, s) =>
        void serial(async () => {
          for (const name of [...Object.keys(s.filters.categories), ...Object.keys(s.filters.ranges)]) await fetchColumn(name).catch(onError);
          recomputeMask();
          await applyMask();
          highlight();
        }),
    ),
  );
  cleanups.push(
    store.watch(
      (s) => s.selection,
      () =>
        void serial(async () => {
          if (store.get().filters.selectionOnly) {
            recomputeMask();
            await applyMask();
          } else void renderTable();
          highlight();
        }),
    ),
  );
  cleanups.push(store.watch((s) => s.focus, (row) => void showDetails(row)));
  cleanups.push(store.watch((s) => s.camera, (_, s) => void applyCamera(s)));
  cleanups.push(store.watch((s) => s.search, (q) => void serial(() => runSearch(q.query, q.column))));
  const onResize = () => drawLabels();
  window.addEventListener("resize", onResize);
  cleanups.push(() => window.removeEventListener("resize", onResize));

  // ---------- the move from the previous map ----------
  if (moveFrom) {
    frame.dataset.transition = "running";
    overlay.style.visibility = "hidden";
    const bx = drawX, by = drawY;
    let frames = 0;
    // Browser tests may hold the move at a fraction of its time (window.__embedvizTransitionHold)
    // to look at a frame in its middle; it goes on when they delete it.
    const testHooks = window as unknown as { __embedvizTransitionHold?: number };
    let begin = performance.now();
    for (;;) {
      const hold = testHooks.__embedvizTransitionHold;
      let elapsed = performance.now() - begin;
      if (typeof hold === "number" && elapsed >= hold * TRANSITION_MS) {
        elapsed = hold * TRANSITION_MS;
        begin = performance.now() - elapsed;
        frame.dataset.transition = "held";
      } else frame.dataset.transition = "running";
      const t = progressAt(elapsed);
      frame.dataset.transitionT = t.toFixed(3);
      interpolate(moveFrom.x, x, t, bx);
      interpolate(moveFrom.y, y, t, by);
      const enc = encoding as Encoding | null;
      if (enc) await scatterplot.draw(pointData(enc), { preventFilterReset: true, zDataType: enc.mode === "number" ? "continuous" : "categorical", wDataType: "continuous" });
      frames++;
      if (t >= 1) break;
      await new Promise((r) => requestAnimationFrame(r));
    }
    drawX = x;
    drawY = y;
    highlight();
    overlay.style.visibility = "";
    frame.dataset.transition = "done";
    frame.dataset.transitionFrames = String(frames);
  }

  Object.assign(hooks, {
    pointCount: n,
    totalCount: total,
    ready: true,
    screenPositionOf(i: number) {
      const p = scatterplot.getScreenPosition(i);
      if (!p) return null;
      const r = canvas.getBoundingClientRect();
      return { x: r.left + p[0], y: r.top + p[1] };
    },
    rowOfPoint: (i: number) => points.rows[i],
    pointOfRow,
    selectPoints: (pts: number[]) => store.update({ selection: pts.map((p) => points.rows[p]).sort((a, b) => a - b), focus: -1 }),
    legendColor: (key: string) => encoding?.entries.find((e) => e.key === key)?.color ?? "",
    camera: () => ({ x: Number((scatterplot.get("cameraTarget") as unknown as number[])[0]), y: Number((scatterplot.get("cameraTarget") as unknown as number[])[1]), distance: Number(scatterplot.get("cameraDistance")) }),
  });
  frame.dataset.ready = "true";
  drawLabels();

  return () => {
    lastPositions = { dataset: opts.datasetName, projection: opts.projectionName, rows: points.rows.subarray(0, n), x, y };
    clearTimeout(cameraTimer);
    cancelAnimationFrame(labelFrame);
    for (const c of cleanups.reverse()) c();
    if (window.__embedviz === hooks) window.__embedviz = { pointCount: 0, ready: false };
  };
}
