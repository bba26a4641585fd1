// The map of a projection in the workspace. Everything it shows comes from the view store
// (camera, colour and size encodings, hidden legend entries, filters, selection, search,
// the focused point); user gestures change the store, never the picture directly. This file
// only puts the parts together: it loads the points, creates the scatterplot and the scene
// (scene.ts: what the map draws), and connects the panels, each a module that renders from
// the store and the scene: legend.ts, filterpanel.ts, labels.ts, tooltip.ts, search.ts,
// neighbours.ts, selecttools.ts, linkedtable.ts, exportpanel.ts, camera.ts. The arithmetic
// (scales, filter masks, lasso geometry, label placement, encodings) lives in pure modules.

import createScatterplot from "regl-scatterplot";
import { projection as projectionApi, withAuthRetry } from "./api";
import { CameraLink } from "./camera";
import { ColumnReader } from "./columnreader";
import { formatCount, h } from "./dom";
import { ExportPanel } from "./exportpanel";
import { clearFilters, FilterPanel } from "./filterpanel";
import type { Column } from "./gen/embedviz/v1/ingest_pb";
import { PointEncoding, type Cluster } from "./gen/embedviz/v1/projection_pb";
import { ProgressBar } from "./jobs";
import { LabelsLayer } from "./labels";
import { LegendPanel } from "./legend";
import { LinkedTable } from "./linkedtable";
import type { EmbedvizTestHooks, MapContext } from "./mapcontext";
import { mapPoints } from "./mappoints";
import { NeighboursPanel } from "./neighbours";
import { PointSet } from "./points";
import { RowTexts } from "./rowtexts";
import { MapScene, selectionStyle } from "./scene";
import { SearchPanel } from "./search";
import { rowsOfPoints, SelectionTools } from "./selecttools";
import { TooltipPanel } from "./tooltip";
import { alignPositions, TRANSITION_MAX_POINTS, type Positions } from "./transition";
import type { ViewState, ViewStore } from "./viewstate";

export type { EmbedvizTestHooks } from "./mapcontext";

export const MAP_BACKGROUND = "#ffffff";

export interface MapOptions {
  store: ViewStore;
  projectionName: string;
  datasetName: string;
  textColumns: string[];
  /** false for a map of imported vectors: no search by meaning (no model). */
  byMeaning?: boolean;
  columns: Column[];
  /** Where the parts go: the map stage, the side panel (legend, filters, details), the table panel. */
  stage: HTMLElement;
  toolbar: HTMLElement;
  side: HTMLElement;
  table: HTMLElement;
  onError: (err: unknown) => void;
  onClearError: () => void;
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
  const cleanups: (() => void)[] = [];

  // ---------- the parts, on the page at once; they come alive when the points are in ----------
  const canvas = h("canvas", { id: "map-canvas", "data-testid": "map-canvas" });
  const overlay = h("canvas", { id: "map-labels", "data-testid": "map-labels", class: "map-labels" });
  const noMatch = h("div", { id: "map-no-match", "data-testid": "map-no-match", class: "map-message", hidden: true }, "No point matches these filters. ", h("button", { type: "button", class: "secondary", id: "clear-filters-button", onclick: () => clearFilters(store) }, "Clear filters"));
  const loading = new ProgressBar("points-progress", "Loading points");
  const search = new SearchPanel(opts.columns, opts.byMeaning ?? true);
  const tools = new SelectionTools();
  const tooltip = new TooltipPanel(opts.columns);
  const neighbours = new NeighboursPanel();
  const legend = new LegendPanel();
  const filters = new FilterPanel(opts.columns);
  const exporter = new ExportPanel();
  const table = new LinkedTable(opts.columns, exporter.controls);
  const frame = h("div", { id: "map-container", "data-testid": "map-container", class: "map-frame" }, canvas, overlay, tools.layer, tooltip.el, noMatch, h("div", { class: "map-loading" }, loading.el));
  opts.stage.replaceChildren(frame);

  const columnOptions = (label: string) => opts.columns.map((c) => h("option", { value: c.name }, `${label}: ${c.name}`));
  const colorBy = h("select", { id: "color-by", "data-testid": "color-by", "aria-label": "Colour by" }, h("option", { value: "" }, "Colour: cluster"), ...columnOptions("Colour"));
  const sizeBy = h("select", { id: "size-by", "data-testid": "size-by", "aria-label": "Size by" }, h("option", { value: "" }, "Size: same"), ...columnOptions("Size"));
  opts.toolbar.replaceChildren(colorBy, sizeBy, search.form, ...tools.buttons);
  const status = h("div", { id: "map-status", "data-testid": "map-status", class: "map-status muted" });
  opts.side.replaceChildren(status, search.el, neighbours.el, legend.el, tooltip.picker, filters.el);
  opts.table.replaceChildren(table.el);

  const hooks: Partial<EmbedvizTestHooks> = { pointCount: 0, totalCount: 0, ready: false, projection: opts.projectionName, background: MAP_BACKGROUND, hoveredPoint: -1, selected: [], lastExport: null, labels: [], linkedRows: [] };
  window.__embedviz = hooks;

  // ---------- points ----------
  const set = new PointSet();
  let total = 0;
  for await (const chunk of withAuthRetry(() => projectionApi.streamPoints({ name: opts.projectionName, encoding: PointEncoding.PACKED }))) {
    set.add(chunk);
    total = Number(chunk.totalCount) || set.length;
    loading.set(total ? set.length / total : 1, `${formatCount(set.length)} of ${formatCount(total)} points`, "running");
  }
  loading.set(1, `${formatCount(set.length)} points`, "succeeded");
  loading.el.hidden = true;
  let clusters: Cluster[] = [];
  try {
    // every level: the points carry the finest; labels show coarser ones zoomed out
    clusters = (await projectionApi.listClusters({ parent: opts.projectionName, allLevels: true })).clusters;
  } catch {
    // Labels are optional; the map keeps plain cluster numbers.
  }
  const points = mapPoints(set, total, clusters);
  const n = points.n;
  // Switched from another 2-D map of this dataset: the points start where they were there
  // and move to their places here (src/transition.ts), keeping colours, filters, selection.
  const before = lastPositions;
  lastPositions = null;
  const moveFrom = before && before.dataset === opts.datasetName && before.projection !== opts.projectionName && n <= TRANSITION_MAX_POINTS ? alignPositions(before, points, n) : null;

  // ---------- the scatterplot ----------
  const baseSize = pointSizeFor(n);
  const scatterplot = createScatterplot({
    canvas,
    width: "auto",
    height: "auto",
    backgroundColor: MAP_BACKGROUND,
    pointSize: baseSize,
    ...selectionStyle(0, 0, baseSize),
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

  // ---------- the scene and the panels ----------
  const reader = new ColumnReader({ datasetName: opts.datasetName, columns: opts.columns, n, pointOfRow: points.pointOfRow, onProgress: (text) => (status.textContent = text) });
  const scene = new MapScene({ store, points, scatterplot, reader, baseSize, hooks, onError }, moveFrom);
  const ctx: MapContext = {
    store,
    projectionName: opts.projectionName,
    datasetName: opts.datasetName,
    columns: opts.columns,
    points,
    scatterplot,
    scene,
    reader,
    texts: new RowTexts(opts.datasetName, opts.textColumns),
    canvas,
    frame,
    baseSize,
    hooks,
    centreOn: (p) => camera.centreOn(p),
    drawLabels: () => labels.draw(),
    onError,
    clearError: opts.onClearError,
  };
  cleanups.push(
    scene.onDrawn(() => {
      noMatch.hidden = scene.visible > 0;
      frame.dataset.visible = String(scene.visible);
      status.textContent = `${formatCount(n)} points · ${points.clusterIds.filter((id) => id >= 0).length} clusters${scene.encoding?.column ? ` · coloured by ${scene.encoding.column}` : ""}`;
      status.dataset.points = String(n);
      status.dataset.colorBy = scene.encoding?.column ?? "";
    }),
    legend.connect(ctx),
    filters.connect(ctx),
  );
  // Labels before the camera: a camera move redraws them before it is written to the store.
  const labels = new LabelsLayer(overlay, ctx);
  const camera = new CameraLink(ctx);
  cleanups.push(
    () => labels.dispose(),
    () => camera.dispose(),
    table.connect(ctx, (rows) => exporter.rowsChanged(rows)),
    tooltip.connect(ctx),
    tools.connect(ctx, overlay),
    search.connect(ctx),
    neighbours.connect(ctx),
  );
  exporter.connect(ctx, () => table.rows());

  // ---------- colour and size ----------
  const applyEncoding = async (s: ViewState) => {
    colorBy.value = s.colorBy;
    sizeBy.value = s.sizeBy;
    colorBy.disabled = sizeBy.disabled = true;
    const fallback = await scene.encode(s);
    colorBy.disabled = sizeBy.disabled = false;
    if (fallback) return store.update(fallback);
    // Filters on columns not read yet: read them first.
    await scene.readFilterColumns(s);
    scene.recomputeMask();
    await scene.redraw();
    scene.highlight();
  };
  colorBy.addEventListener("change", () => {
    opts.onClearError();
    store.update({ colorBy: colorBy.value, hidden: [] });
  });
  sizeBy.addEventListener("change", () => {
    opts.onClearError();
    store.update({ sizeBy: sizeBy.value });
  });

  // ---------- the view as it was opened ----------
  const initial = store.get();
  search.show(initial.search.query, initial.search.column);
  await applyEncoding(initial);
  await camera.apply(initial);
  if (initial.search.query) await search.run(initial.search.query, initial.search.column);
  if (initial.focus >= 0) void neighbours.show(initial.focus);

  // ---------- then the store drives the scene (the panels watch what they show) ----------
  cleanups.push(
    store.watch((s) => [s.colorBy, s.sizeBy], (_, s) => void scene.serial(() => applyEncoding(s))),
    store.watch(
      (s) => [s.filters, s.hidden],
      (_, s) =>
        void scene.serial(async () => {
          await scene.readFilterColumns(s);
          await scene.refilter();
          scene.highlight();
        }),
    ),
    store.watch(
      (s) => s.selection,
      () =>
        void scene.serial(async () => {
          // With "only the selection" the mask follows it; the table follows it either way.
          if (store.get().filters.selectionOnly) await scene.refilter();
          scene.highlight();
        }),
    ),
  );

  if (moveFrom) await scene.move(moveFrom, frame, overlay);

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
    pointOfRow: points.pointOfRow,
    selectPoints: (pts: number[]) => store.update({ selection: rowsOfPoints(pts, points.rows), focus: -1 }),
    legendColor: (key: string) => scene.encoding?.entries.find((e) => e.key === key)?.color ?? "",
    camera: () => camera.now(),
  });
  frame.dataset.ready = "true";
  labels.draw();

  return () => {
    lastPositions = { dataset: opts.datasetName, projection: opts.projectionName, rows: points.rows.subarray(0, n), x: points.x, y: points.y };
    for (const c of cleanups.reverse()) c();
    if (window.__embedviz === hooks) window.__embedviz = { pointCount: 0, ready: false };
  };
}
