// The WebGL map of a projection: points from StreamPoints, coloured by cluster, with a
// tooltip showing the hovered row's text (BatchGetRows, cached) and a cluster legend.

import createScatterplot from "regl-scatterplot";
import { errorMessage, ingest, projection as projectionApi, withAuthRetry } from "./api";
import { h, formatCount } from "./dom";
import type { Cluster } from "./gen/embedviz/v1/projection_pb";
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

export interface MapOptions {
  projectionName: string;
  datasetName: string;
  textColumns: string[];
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
  const canvas = h("canvas", { id: "map-canvas", "data-testid": "map-canvas" });
  const tooltip = h("div", { id: "map-tooltip", "data-testid": "map-tooltip", class: "tooltip", hidden: true });
  const legend = h("ul", { id: "map-legend", "data-testid": "map-legend", class: "legend" });
  const status = h("div", { id: "map-status", "data-testid": "map-status", class: "map-status" });
  const loading = new ProgressBar("points-progress", "Loading points");
  const frame = h("div", { id: "map-container", "data-testid": "map-container", class: "map-frame" }, canvas, tooltip);
  host.replaceChildren(loading.el, h("div", { class: "map-layout" }, frame, h("aside", { class: "map-side" }, status, legend)));

  const hooks: Partial<EmbedvizTestHooks> = { pointCount: 0, totalCount: 0, ready: false, projection: opts.projectionName, background: MAP_BACKGROUND, hoveredPoint: -1 };
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

  // 2. The scatterplot.
  const scatterplot = createScatterplot({
    canvas,
    width: "auto",
    height: "auto",
    backgroundColor: MAP_BACKGROUND,
    pointSize: pointSizeFor(n),
    pointSizeSelected: pointSizeFor(n) + 2,
    pointColor: colors.length > 1 ? colors : [colors[0] ?? PALETTE[0], colors[0] ?? PALETTE[0]],
    colorBy: "valueA",
    opacity: n > 100_000 ? 0.6 : 0.9,
    lassoOnLongPress: false,
  });
  await scatterplot.draw({ x, y, valueA: categories }, { zDataType: "categorical" });
  status.textContent = `${formatCount(n)} points · ${ids.filter((id) => id >= 0).length} clusters`;
  status.dataset.points = String(n);

  // 3. Tooltip with the row's text.
  const rowText = new Map<number, string>();
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
    tooltip.replaceChildren(
      h("div", { class: "tooltip-head" }, `Row ${row}`, cluster >= 0 ? ` · ${clusterLabels.get(cluster) ?? `cluster ${cluster}`}` : " · noise"),
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
    ingest
      .batchGetRows({ parent: opts.datasetName, indexes: [BigInt(row)], columns: opts.textColumns })
      .then((res) => {
        const values = res.rows[0]?.values ?? [];
        const text = values.map(valueText).filter((t) => t !== "").join("\n") || "(empty)";
        rowText.set(row, text);
        if (hovered === i) renderTooltip(i, text);
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

  // 4. Legend, with labels when the projection has them.
  const clusterLabels = new Map<number, string>();
  const renderLegend = (clusters: Cluster[]) => {
    const byId = new Map(clusters.map((c) => [c.id, c]));
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
  renderLegend([]);
  projectionApi
    .listClusters({ parent: opts.projectionName })
    .then((res) => renderLegend(res.clusters))
    .catch(() => {
      /* labels are optional; the legend keeps plain cluster numbers */
    });

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
  });
  host.dataset.ready = "true";

  return () => {
    scatterplot.destroy();
    if (window.__embedviz === hooks) window.__embedviz = { pointCount: 0, ready: false };
  };
}
