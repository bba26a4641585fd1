// The WebGL map of a projection: points from StreamPoints, coloured by cluster or by a
// column, with a tooltip showing the hovered row's text (BatchGetRows, cached), a legend,
// search by meaning, a clicked point's nearest neighbours, lasso selection into a table,
// and export of the selection or every point.

import createScatterplot from "regl-scatterplot";
import { errorMessage, ingest, projection as projectionApi, withAuthRetry } from "./api";
import { h, formatBytes, formatCount } from "./dom";
import type { Column } from "./gen/embedviz/v1/ingest_pb";
import { ExportFormat, type Cluster, type PointMatch } from "./gen/embedviz/v1/projection_pb";
import { rowsTable, valueOf } from "./table";
import { toJson } from "@bufbuild/protobuf";
import { ValueSchema, type Value } from "@bufbuild/protobuf/wkt";
import { ProgressBar } from "./jobs";
import { clusterCategories, normalizeCoordinates, PointSet } from "./points";

/** Categorical palette (Tableau 20 order, strong colours first); noise is grey. */
const PALETTE = [
  "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
  "#9c755f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#17becf", "#bcbd22", "#aec7e8", "#ffbb78",
];
const NOISE_COLOR = "#b0b0b0";
export const MAP_BACKGROUND = "#ffffff";

/** Sequential colours for binned numeric columns (viridis, 8 steps). */
const SEQUENTIAL = ["#440154", "#46327e", "#365c8d", "#277f8e", "#1fa187", "#4ac16d", "#a0da39", "#fde725"];
const MAX_COLOUR_ROWS = 300_000;
const MAX_SELECTION_TABLE = 200;

export interface MapOptions {
  projectionName: string;
  datasetName: string;
  textColumns: string[];
  columns?: Column[];
  onError?: (err: unknown) => void;
  /** Hides an earlier error when a new action starts. */
  onClearError?: () => void;
}

export interface EmbedvizTestHooks {
  pointCount: number;
  totalCount: number;
  ready: boolean;
  projection: string;
  background: string;
  /** Page coordinates (CSS px) of point i on screen, or null when off screen. */
  screenPositionOf(i: number): { x: number; y: number } | null;
  /** The dataset row index of point i. */
  rowOfPoint(i: number): number;
  hoveredPoint: number;
  /** Point index of a dataset row, or -1. */
  pointOfRow(row: number): number;
  /** Selects points as a lasso would (fires the same event). */
  selectPoints(points: number[]): void;
  selected: number[];
  lastExport: { filename: string; bytes: number; text: string } | null;
}

declare global {
  interface Window {
    __embedviz?: Partial<EmbedvizTestHooks>;
  }
}

function valueText(v: Value | undefined): string {
  const kind = v?.kind;
  if (!kind) return "";
  switch (kind.case) {
    case "stringValue":
      return kind.value;
    case "numberValue":
    case "boolValue":
      return String(kind.value);
    case "nullValue":
    case undefined:
      return "";
    case "listValue":
    case "structValue":
      return JSON.stringify(toJson(ValueSchema, v as Value));
  }
}

function pointSizeFor(n: number): number {
  if (n < 2_000) return 7;
  if (n < 50_000) return 4;
  if (n < 500_000) return 2.5;
  return 1.5;
}

/** Builds the map into `host`; returns a function that tears it down. */
export async function showMap(host: HTMLElement, opts: MapOptions): Promise<() => void> {
  const onError = opts.onError ?? ((err: unknown) => console.warn("embedviz:", errorMessage(err)));
  const clearError = opts.onClearError ?? (() => {});
  const canvas = h("canvas", { id: "map-canvas", "data-testid": "map-canvas" });
  const tooltip = h("div", { id: "map-tooltip", "data-testid": "map-tooltip", class: "tooltip", hidden: true });
  const legend = h("ul", { id: "map-legend", "data-testid": "map-legend", class: "legend" });
  const status = h("div", { id: "map-status", "data-testid": "map-status", class: "map-status" });
  const loading = new ProgressBar("points-progress", "Loading points");
  const frame = h("div", { id: "map-container", "data-testid": "map-container", class: "map-frame" }, canvas, tooltip);

  // Toolbar: colour, search, lasso, export.
  const allColumns = opts.columns ?? [];
  const colorBy = h(
    "select",
    { id: "color-by", "data-testid": "color-by", "aria-label": "Colour by" },
    h("option", { value: "" }, "Colour: cluster"),
    ...allColumns.map((c) => h("option", { value: c.name }, `Colour: ${c.name}`)),
  );
  const searchInput = h("input", { id: "map-search", "data-testid": "map-search", type: "search", placeholder: "Search by meaning…" });
  const searchIn = h(
    "select",
    { id: "map-search-mode", "data-testid": "map-search-mode", "aria-label": "Search in" },
    h("option", { value: "" }, "by meaning"),
    ...allColumns.map((c) => h("option", { value: c.name }, `text in ${c.name}`)),
  );
  const searchButton = h("button", { id: "map-search-button", "data-testid": "map-search-button", type: "submit" }, "Search");
  const searchForm = h("form", { class: "row map-search" }, searchInput, searchIn, searchButton);
  const lassoButton = h("button", { id: "lasso-button", "data-testid": "lasso-button", type: "button", class: "secondary", "aria-pressed": "false", title: "Draw around points to select them (or hold Shift and drag)" }, "Lasso");
  const exportFormat = h(
    "select",
    { id: "export-format", "data-testid": "export-format", "aria-label": "Export format" },
    h("option", { value: String(ExportFormat.CSV) }, "CSV"),
    h("option", { value: String(ExportFormat.JSONL) }, "JSON Lines"),
    h("option", { value: String(ExportFormat.PARQUET) }, "Parquet"),
  );
  const exportColumns = h("input", { id: "export-columns", "data-testid": "export-columns", type: "checkbox", checked: true });
  const exportColumnsLabel = h("label", { class: "inline", title: "Add the dataset's columns to row, coordinates, cluster and label" }, exportColumns, " with dataset columns");
  const exportAll = h("button", { id: "export-all-button", "data-testid": "export-all-button", type: "button", class: "secondary" }, "Export all");
  const exportSelection = h("button", { id: "export-selection-button", "data-testid": "export-selection-button", type: "button", class: "secondary", disabled: true }, "Export selection");
  const exportStatus = h("span", { id: "export-status", "data-testid": "export-status", class: "muted" });
  const toolbar = h("div", { class: "map-toolbar" }, colorBy, searchForm, lassoButton, exportFormat, exportColumnsLabel, exportAll, exportSelection, exportStatus);

  const searchResults = h("ol", { id: "search-results", "data-testid": "search-results", class: "matches" });
  const neighbors = h("ol", { id: "neighbors-list", "data-testid": "neighbors-list", class: "matches" });
  const neighborsTitle = h("h3", { id: "neighbors-title" }, "Nearest neighbours");
  const searchBox = h("div", { id: "search-panel", hidden: true }, h("h3", {}, "Search results"), searchResults);
  const neighborsBox = h("div", { id: "neighbors-panel", hidden: true }, neighborsTitle, h("p", { class: "muted small" }, "by cosine similarity in the embedding space"), neighbors);
  const selectionInfo = h("div", { id: "selection-count", "data-testid": "selection-count", class: "muted" });
  const selectionHost = h("div", { id: "selection-table-host", class: "table-scroll" });
  const selectionBox = h("section", { id: "selection-panel", "data-testid": "selection-panel", hidden: true }, h("h3", {}, "Selected rows"), selectionInfo, selectionHost);

  host.replaceChildren(
    loading.el,
    toolbar,
    h("div", { class: "map-layout" }, frame, h("aside", { class: "map-side" }, status, legend, neighborsBox, searchBox)),
    selectionBox,
  );

  const hooks: Partial<EmbedvizTestHooks> = { pointCount: 0, totalCount: 0, ready: false, projection: opts.projectionName, background: MAP_BACKGROUND, hoveredPoint: -1, selected: [], lastExport: null };
  window.__embedviz = hooks;

  // 1. Points, straight from the packed chunks into typed arrays.
  const points = new PointSet();
  let total = 0;
  for await (const chunk of withAuthRetry(() => projectionApi.streamPoints({ name: opts.projectionName }))) {
    points.add(chunk);
    total = Number(chunk.totalCount) || points.length;
    loading.set(total ? points.length / total : 1, `${formatCount(points.length)} of ${formatCount(total)} points`, "running");
  }
  loading.set(1, `${formatCount(points.length)} points`, "succeeded");
  loading.el.hidden = true;
  const n = points.length;
  const { x, y } = normalizeCoordinates(points.coords, n, points.dimensions);
  const { categories, ids } = clusterCategories(points.clusters, n);
  const colors = ids.map((id, i) => (id < 0 ? NOISE_COLOR : PALETTE[i % PALETTE.length]));
  let maxRow = -1;
  for (let i = 0; i < n; i++) if (points.rows[i] > maxRow) maxRow = points.rows[i];
  const pointOf = new Int32Array(maxRow + 1).fill(-1);
  for (let i = 0; i < n; i++) pointOf[points.rows[i]] = i;
  const pointOfRow = (row: number) => (row >= 0 && row < pointOf.length ? pointOf[row] : -1);

  // 2. The scatterplot.
  const twoAtLeast = (c: string[]) => (c.length > 1 ? c : [c[0] ?? PALETTE[0], c[0] ?? PALETTE[0]]);
  const scatterplot = createScatterplot({
    canvas,
    width: "auto",
    height: "auto",
    backgroundColor: MAP_BACKGROUND,
    pointSize: pointSizeFor(n),
    pointSizeSelected: pointSizeFor(n) + 3,
    pointOutlineWidth: 2,
    pointColor: twoAtLeast(colors),
    colorBy: "valueA",
    opacity: n > 100_000 ? 0.6 : 0.9,
    lassoOnLongPress: false,
  });
  await scatterplot.draw({ x, y, valueA: categories }, { zDataType: "categorical" });
  const clusterCount = ids.filter((id) => id >= 0).length;
  status.textContent = `${formatCount(n)} points · ${clusterCount} clusters`;
  status.dataset.points = String(n);

  // Row texts (what the tooltip, search results, neighbours show), cached.
  const rowText = new Map<number, string>();
  const textsOf = async (rows: number[]): Promise<Map<number, string>> => {
    const missing = [...new Set(rows.filter((r) => !rowText.has(r)))];
    for (let k = 0; k < missing.length; k += 1000) {
      const res = await ingest.batchGetRows({ parent: opts.datasetName, indexes: missing.slice(k, k + 1000).map(BigInt), columns: opts.textColumns });
      for (const r of res.rows) rowText.set(Number(r.index), r.values.map(valueText).filter((t) => t !== "").join("\n") || "(empty)");
    }
    return new Map(rows.map((r) => [r, rowText.get(r) ?? "(row not found)"]));
  };

  // 3. Tooltip with the row's text.
  let mouse = { x: 0, y: 0 };
  let hovered = -1;
  frame.addEventListener("mousemove", (ev) => {
    const r = frame.getBoundingClientRect();
    mouse = { x: ev.clientX - r.left, y: ev.clientY - r.top };
    if (hovered >= 0) placeTooltip();
  });
  const placeTooltip = () => {
    const w = frame.clientWidth;
    tooltip.style.left = `${Math.min(mouse.x + 14, Math.max(0, w - 340))}px`;
    tooltip.style.top = `${mouse.y + 14}px`;
  };
  const renderTooltip = (i: number, text: string | null) => {
    const row = points.rows[i];
    const cluster = points.clusters[i];
    const extra = colorColumn && colorValues ? ` · ${colorColumn}: ${colorValues[i] ?? "null"}` : "";
    tooltip.replaceChildren(
      h("div", { class: "tooltip-head" }, `Row ${row}`, cluster >= 0 ? ` · ${clusterLabels.get(cluster) ?? `cluster ${cluster}`}` : " · noise", extra),
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
    const cached = rowText.get(row);
    renderTooltip(i, cached ?? null);
    if (cached !== undefined) return;
    textsOf([row])
      .then((texts) => {
        if (hovered === i) renderTooltip(i, texts.get(row) ?? "");
      })
      .catch((err) => {
        if (hovered === i) renderTooltip(i, `could not load the row: ${errorMessage(err)}`);
      });
  });
  scatterplot.subscribe("pointOut", () => {
    hovered = -1;
    hooks.hoveredPoint = -1;
    tooltip.hidden = true;
  });

  // 4. Legend: clusters (with labels when the projection has them) or a column's values.
  const clusterLabels = new Map<number, string>();
  let clusters: Cluster[] = [];
  const renderClusterLegend = () => {
    const byId = new Map(clusters.map((c) => [c.id, c]));
    legend.dataset.mode = "cluster";
    legend.replaceChildren(
      ...ids.map((id, i) => {
        const c = byId.get(id);
        const label = c?.label || (id < 0 ? "noise" : `cluster ${id}`);
        clusterLabels.set(id, label);
        let count = 0;
        if (!c) for (let k = 0; k < n; k++) if (points.clusters[k] === id) count++;
        return h(
          "li",
          { "data-testid": "legend-item", "data-cluster": id, title: c?.terms?.join(", ") ?? "" },
          h("span", { class: "swatch", style: `background:${colors[i]}` }),
          h("span", { class: "legend-label" }, label),
          h("span", { class: "legend-size" }, formatCount(c ? c.size : count)),
        );
      }),
    );
  };
  renderClusterLegend();
  projectionApi
    .listClusters({ parent: opts.projectionName })
    .then((res) => {
      clusters = res.clusters;
      if (!colorColumn) renderClusterLegend();
    })
    .catch(() => {
      /* labels are optional; the legend keeps plain cluster numbers */
    });

  // 5. Colour by a column: its values for every row (ListRows pages), then categories.
  let colorColumn = "";
  let colorValues: (string | number | boolean | null)[] | null = null;
  const columnCache = new Map<string, (string | number | boolean | null)[]>();
  const fetchColumn = async (name: string) => {
    const cached = columnCache.get(name);
    if (cached) return cached;
    if (n > MAX_COLOUR_ROWS) throw new Error(`colouring by a column reads every row; this map has ${formatCount(n)}, more than ${formatCount(MAX_COLOUR_ROWS)}`);
    const values: (string | number | boolean | null)[] = new Array(n).fill(null);
    let token = "";
    let got = 0;
    do {
      const res = await ingest.listRows({ parent: opts.datasetName, pageSize: 1000, pageToken: token, columns: [name] });
      for (const r of res.rows) {
        const p = pointOfRow(Number(r.index));
        if (p >= 0) values[p] = valueOf(r.values[0]);
      }
      got += res.rows.length;
      status.textContent = `reading ${name}: ${formatCount(got)} of ${formatCount(Number(res.totalSize))} rows…`;
      token = res.nextPageToken;
    } while (token);
    columnCache.set(name, values);
    return values;
  };
  const applyColumnColours = (name: string, values: (string | number | boolean | null)[]) => {
    const cats = new Float32Array(n);
    const numeric = values.every((v) => v === null || typeof v === "number");
    const distinct = new Map<string, number>();
    for (const v of values) if (v !== null) distinct.set(String(v), (distinct.get(String(v)) ?? 0) + 1);
    const entries: { label: string; color: string; count: number }[] = [];
    if (numeric && distinct.size > PALETTE.length) {
      // Numbers: 8 equal-width bins on a sequential scale.
      let lo = Infinity, hi = -Infinity;
      for (const v of values) if (typeof v === "number" && Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
      const bins = SEQUENTIAL.length;
      const width = hi > lo ? (hi - lo) / bins : 1;
      const counts = new Array(bins + 1).fill(0);
      values.forEach((v, i) => {
        const b = typeof v === "number" && Number.isFinite(v) ? Math.min(bins - 1, Math.floor((v - lo) / width)) : bins;
        cats[i] = b;
        counts[b]++;
      });
      const fmt = (v: number) => (Math.abs(v) >= 1000 || Number.isInteger(v) ? formatCount(Math.round(v)) : v.toPrecision(3));
      for (let b = 0; b < bins; b++) entries.push({ label: `${fmt(lo + b * width)} – ${fmt(lo + (b + 1) * width)}`, color: SEQUENTIAL[b], count: counts[b] });
      entries.push({ label: "null", color: NOISE_COLOR, count: counts[bins] });
    } else {
      // Categories: the most common values get their own colour, the rest are "other".
      const top = [...distinct.entries()].sort((a, b) => b[1] - a[1]);
      const own = top.slice(0, top.length > PALETTE.length ? PALETTE.length - 1 : PALETTE.length);
      const index = new Map(own.map(([v], i) => [v, i]));
      const other = own.length, nullCat = own.length + 1;
      let otherCount = 0, nullCount = 0;
      values.forEach((v, i) => {
        if (v === null) { cats[i] = nullCat; nullCount++; return; }
        const k = index.get(String(v));
        if (k === undefined) { cats[i] = other; otherCount++; } else cats[i] = k;
      });
      own.forEach(([v, count], i) => entries.push({ label: v === "" ? "(empty)" : v, color: PALETTE[i], count }));
      entries.push({ label: `other (${formatCount(top.length - own.length)} values)`, color: "#7f7f7f", count: otherCount });
      entries.push({ label: "null", color: NOISE_COLOR, count: nullCount });
    }
    legend.dataset.mode = "column";
    legend.dataset.column = name;
    legend.replaceChildren(
      ...entries.filter((e) => e.count > 0).map((e) =>
        h("li", { "data-testid": "legend-item", "data-value": e.label }, h("span", { class: "swatch", style: `background:${e.color}` }), h("span", { class: "legend-label" }, e.label), h("span", { class: "legend-size" }, formatCount(e.count))),
      ),
    );
    return { cats, palette: entries.map((e) => e.color) };
  };
  colorBy.addEventListener("change", () => {
    const name = colorBy.value;
    void (async () => {
      colorBy.disabled = true;
      clearError();
      try {
        if (!name) {
          colorColumn = "";
          colorValues = null;
          scatterplot.set({ pointColor: twoAtLeast(colors) });
          await scatterplot.draw({ x, y, valueA: categories }, { zDataType: "categorical" });
          renderClusterLegend();
        } else {
          const values = await fetchColumn(name);
          const { cats, palette } = applyColumnColours(name, values);
          colorColumn = name;
          colorValues = values;
          scatterplot.set({ pointColor: twoAtLeast(palette) });
          await scatterplot.draw({ x, y, valueA: cats }, { zDataType: "categorical" });
        }
        status.textContent = `${formatCount(n)} points · ${name ? `coloured by ${name}` : `${clusterCount} clusters`}`;
        status.dataset.colorBy = name;
      } catch (err) {
        colorBy.value = colorColumn;
        status.textContent = `${formatCount(n)} points`;
        onError(err);
      } finally {
        colorBy.disabled = false;
      }
    })();
  });

  // 6. Match lists (search results, neighbours): row text and score; a click focuses it.
  const matchList = (list: HTMLElement, itemId: string, matches: PointMatch[], texts: Map<number, string>) => {
    list.replaceChildren(
      ...matches.map((m) => {
        const row = Number(m.rowIndex);
        const li = h(
          "li",
          { "data-testid": itemId, "data-row": String(row), title: "Show on the map and list its neighbours" },
          h("span", { class: "match-score" }, m.score.toFixed(3)),
          h("span", { class: "match-text" }, texts.get(row) ?? ""),
        );
        li.addEventListener("click", () => {
          const p = pointOfRow(row);
          if (p >= 0) {
            scatterplot.zoomToPoints([p], { padding: 0.6, transition: true });
            void showNeighbors(p);
          }
        });
        return li;
      }),
    );
    if (!matches.length) list.append(h("li", { class: "muted" }, "nothing found"));
  };

  searchForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const query = searchInput.value.trim();
    if (!query) return;
    void (async () => {
      searchButton.disabled = true;
      clearError();
      searchResults.dataset.state = "loading";
      try {
        const res = await projectionApi.searchPoints({ name: opts.projectionName, query, column: searchIn.value, limit: 20 });
        const texts = await textsOf(res.matches.map((m) => Number(m.rowIndex)));
        searchBox.hidden = false;
        matchList(searchResults, "search-result", res.matches, texts);
        const found = res.matches.map((m) => pointOfRow(Number(m.rowIndex))).filter((p) => p >= 0);
        if (found.length) scatterplot.select(found, { preventEvent: true });
        searchResults.dataset.state = "done";
        searchResults.dataset.query = query;
      } catch (err) {
        searchResults.dataset.state = "error";
        onError(err);
      } finally {
        searchButton.disabled = false;
      }
    })();
  });

  let neighborsSeq = 0;
  const showNeighbors = async (p: number) => {
    const mine = ++neighborsSeq;
    const row = points.rows[p];
    neighborsBox.hidden = false;
    neighbors.dataset.state = "loading";
    neighbors.dataset.row = String(row);
    try {
      const [own, res] = await Promise.all([textsOf([row]), projectionApi.findNeighbors({ name: opts.projectionName, rowIndex: BigInt(row), limit: 10 })]);
      const texts = await textsOf(res.neighbors.map((m) => Number(m.rowIndex)));
      if (mine !== neighborsSeq) return;
      neighborsTitle.replaceChildren(`Nearest neighbours of row ${row}`, h("div", { class: "muted small neighbor-of", "data-testid": "neighbors-of" }, own.get(row) ?? ""));
      matchList(neighbors, "neighbor-item", res.neighbors, texts);
      const near = res.neighbors.map((m) => pointOfRow(Number(m.rowIndex))).filter((q) => q >= 0);
      scatterplot.select([p, ...near], { preventEvent: true });
      neighbors.dataset.state = "done";
    } catch (err) {
      if (mine !== neighborsSeq) return;
      neighbors.dataset.state = "error";
      onError(err);
    }
  };

  // 7. Selection: a click shows a point's neighbours; a lasso lists the rows in a table.
  let selectedRows: number[] = [];
  let selectionSeq = 0;
  const showSelection = async (pts: number[]) => {
    const mine = ++selectionSeq;
    selectedRows = pts.map((p) => points.rows[p]).sort((a, b) => a - b);
    hooks.selected = selectedRows;
    exportSelection.disabled = selectedRows.length === 0;
    selectionBox.hidden = false;
    selectionInfo.dataset.count = String(selectedRows.length);
    const shown = selectedRows.slice(0, MAX_SELECTION_TABLE);
    selectionInfo.textContent = `${formatCount(selectedRows.length)} points selected${selectedRows.length > shown.length ? `; the first ${shown.length} rows are shown — export the selection for all` : ""}`;
    try {
      const res = await ingest.batchGetRows({ parent: opts.datasetName, indexes: shown.map(BigInt) });
      if (mine !== selectionSeq) return;
      selectionHost.replaceChildren(rowsTable("selection-table", res.columns, res.rows, { indexHeader: "row" }));
    } catch (err) {
      if (mine === selectionSeq) onError(err);
    }
  };
  scatterplot.subscribe("select", ({ points: pts }: { points: number[] }) => {
    if (pts.length === 1) {
      selectedRows = [points.rows[pts[0]]];
      hooks.selected = selectedRows;
      exportSelection.disabled = false;
      void showNeighbors(pts[0]);
    } else if (pts.length > 1) void showSelection(pts);
  });
  scatterplot.subscribe("deselect", () => {
    selectedRows = [];
    hooks.selected = [];
    exportSelection.disabled = true;
    selectionBox.hidden = true;
  });
  let lassoMode = false;
  lassoButton.addEventListener("click", () => {
    lassoMode = !lassoMode;
    scatterplot.set({ mouseMode: lassoMode ? "lasso" : "panZoom" });
    lassoButton.setAttribute("aria-pressed", String(lassoMode));
    lassoButton.classList.toggle("active", lassoMode);
  });

  // 8. Export: the streamed bytes become a file download.
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
      for await (const chunk of withAuthRetry(() =>
        projectionApi.exportProjection({ name: opts.projectionName, format, columns: exportColumns.checked ? allColumns.map((c) => c.name) : [], rowIndexes: rows.map(BigInt) }),
      )) {
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
      button.disabled = button === exportSelection ? selectedRows.length === 0 : false;
    }
  };
  exportAll.addEventListener("click", () => void runExport([], exportAll));
  exportSelection.addEventListener("click", () => void runExport(selectedRows, exportSelection));

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
    selectPoints: (pts: number[]) => scatterplot.select(pts),
  });
  host.dataset.ready = "true";

  return () => {
    scatterplot.destroy();
    if (window.__embedviz === hooks) window.__embedviz = { pointCount: 0, ready: false };
  };
}
