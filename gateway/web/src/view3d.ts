// The 3-D view of a 3-D projection: points rotated by an orbit camera (drag to orbit,
// wheel to zoom), drawn back to front on a 2-D canvas (no WebGL needed), coloured by
// cluster, with a tooltip for the point under the pointer. The arithmetic is in orbit.ts.

import { errorMessage, ingest, projection as projectionApi, withAuthRetry } from "./api";
import { formatCount, h } from "./dom";
import { PointEncoding } from "./gen/embedviz/v1/projection_pb";
import { ProgressBar } from "./jobs";
import { PointSet } from "./points";
import { categoricalPalette, NOISE_COLOR } from "./scales";
import { valueText } from "./table";
import type { EmbedvizTestHooks } from "./map";
import { backToFront, DEFAULT_ORBIT, normalize3d, project3d, type Orbit } from "./orbit";

export interface View3dOptions {
  projectionName: string;
  datasetName: string;
  textColumns: string[];
  stage: HTMLElement;
  side: HTMLElement;
  onError: (err: unknown) => void;
}

/** Builds the 3-D view into `stage`; returns a function that tears it down. */
export async function show3d(opts: View3dOptions): Promise<() => void> {
  const canvas = h("canvas", { id: "map-canvas", "data-testid": "map-canvas", class: "map3d-canvas" });
  const tooltip = h("div", { id: "map-tooltip", "data-testid": "map-tooltip", class: "tooltip", hidden: true });
  const loading = new ProgressBar("points-progress", "Loading points");
  const frame = h("div", { id: "map-container", "data-testid": "map-container", class: "map-frame", "data-view": "3d" }, canvas, tooltip, h("div", { class: "map-loading" }, loading.el), h("div", { class: "map-hint muted small" }, "Drag to orbit · wheel to zoom"));
  opts.stage.replaceChildren(frame);
  const legend = h("ul", { id: "map-legend", "data-testid": "map-legend", class: "legend", "data-mode": "cluster" });
  const status = h("div", { id: "map-status", "data-testid": "map-status", class: "map-status muted" });
  opts.side.replaceChildren(status, h("div", { class: "panel-block" }, h("h3", {}, "Legend"), legend));

  const hooks: Partial<EmbedvizTestHooks> & { view3d?: boolean; orbit?: () => Orbit; drawn?: number } = { ready: false, pointCount: 0, projection: opts.projectionName, background: "#ffffff", view3d: true };
  window.__embedviz = hooks;

  const points = new PointSet();
  for await (const chunk of withAuthRetry(() => projectionApi.streamPoints({ name: opts.projectionName, encoding: PointEncoding.PACKED }))) {
    points.add(chunk);
    const total = Number(chunk.totalCount) || points.length;
    loading.set(total ? points.length / total : 1, `${formatCount(points.length)} of ${formatCount(total)} points`, "running");
  }
  loading.el.hidden = true;
  const n = points.length;
  if (points.dimensions !== 3) throw new Error(`this map has ${points.dimensions} dimensions, not 3`);
  const xyz = normalize3d(points.coords, n);
  const ids = [...new Set(points.clusters.subarray(0, n))].sort((a, b) => Number(a < 0) - Number(b < 0) || a - b);
  const palette = categoricalPalette(ids.filter((id) => id >= 0).length);
  const colorOf = new Map<number, string>();
  let k = 0;
  for (const id of ids) colorOf.set(id, id < 0 ? NOISE_COLOR : palette[k++]);
  let labels = new Map<number, string>();
  try {
    labels = new Map((await projectionApi.listClusters({ parent: opts.projectionName })).clusters.map((c) => [c.id, c.label]));
  } catch {
    // Labels are optional.
  }
  const counts = new Map<number, number>();
  for (let i = 0; i < n; i++) counts.set(points.clusters[i], (counts.get(points.clusters[i]) ?? 0) + 1);
  legend.replaceChildren(...ids.map((id) => h("li", { "data-testid": "legend-item", "data-value": String(id), "data-color": colorOf.get(id) ?? "" }, h("span", { class: "swatch", style: `background:${colorOf.get(id)}` }), h("span", { class: "legend-label" }, labels.get(id) || (id < 0 ? "noise" : `cluster ${id}`)), h("span", { class: "legend-size" }, formatCount(counts.get(id) ?? 0)))));
  status.textContent = `${formatCount(n)} points in 3-D · ${ids.filter((id) => id >= 0).length} clusters`;

  const orbit: Orbit = { ...DEFAULT_ORBIT };
  let screen = project3d(xyz, n, orbit, 1, 1);
  let frameId = 0;
  const size = n < 2_000 ? 3.5 : n < 50_000 ? 2 : 1.2;
  const draw = () => {
    cancelAnimationFrame(frameId);
    frameId = requestAnimationFrame(() => {
      const w = canvas.clientWidth, hgt = canvas.clientHeight;
      const dpr = window.devicePixelRatio || 1;
      if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(hgt * dpr)) {
        canvas.width = Math.round(w * dpr);
        canvas.height = Math.round(hgt * dpr);
      }
      const ctx = canvas.getContext("2d");
      if (!ctx) return;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.fillStyle = "#ffffff";
      ctx.fillRect(0, 0, w, hgt);
      screen = project3d(xyz, n, orbit, w, hgt);
      const order = backToFront(screen.depth);
      for (const i of order) {
        const d = screen.depth[i];
        if (d <= 0.05) continue;
        const r = Math.max(0.8, (size * DEFAULT_ORBIT.distance) / d);
        ctx.fillStyle = colorOf.get(points.clusters[i]) ?? NOISE_COLOR;
        ctx.fillRect(screen.sx[i] - r, screen.sy[i] - r, 2 * r, 2 * r);
      }
      hooks.drawn = (hooks.drawn ?? 0) + 1;
    });
  };

  let drag: { x: number; y: number } | null = null;
  canvas.addEventListener("pointerdown", (ev) => {
    drag = { x: ev.clientX, y: ev.clientY };
    canvas.setPointerCapture(ev.pointerId);
  });
  canvas.addEventListener("pointerup", (ev) => {
    drag = null;
    if (canvas.hasPointerCapture(ev.pointerId)) canvas.releasePointerCapture(ev.pointerId);
  });
  const rowText = new Map<number, string>();
  let hovered = -1;
  canvas.addEventListener("pointermove", (ev) => {
    if (drag) {
      orbit.yaw += (ev.clientX - drag.x) * 0.01;
      orbit.pitch = Math.max(-1.5, Math.min(1.5, orbit.pitch + (ev.clientY - drag.y) * 0.01));
      drag = { x: ev.clientX, y: ev.clientY };
      draw();
      return;
    }
    const r = canvas.getBoundingClientRect();
    const mx = ev.clientX - r.left, my = ev.clientY - r.top;
    let best = -1, bestD = 64;
    for (let i = 0; i < n; i++) {
      const dx = screen.sx[i] - mx, dy = screen.sy[i] - my;
      const d2 = dx * dx + dy * dy;
      if (d2 < bestD || (d2 === bestD && best >= 0 && screen.depth[i] < screen.depth[best])) {
        best = i;
        bestD = d2;
      }
    }
    hovered = best;
    hooks.hoveredPoint = best;
    tooltip.hidden = best < 0;
    if (best < 0) return;
    tooltip.style.left = `${Math.min(mx + 14, Math.max(0, frame.clientWidth - 340))}px`;
    tooltip.style.top = `${my + 14}px`;
    const row = points.rows[best];
    const show = (text: string | null) => {
      tooltip.replaceChildren(h("div", { class: "tooltip-head" }, `Row ${row} · ${labels.get(points.clusters[best]) || `cluster ${points.clusters[best]}`}`), h("div", { class: "tooltip-text", id: "map-tooltip-text", "data-testid": "map-tooltip-text" }, text ?? "loading…"));
      tooltip.dataset.loaded = text === null ? "false" : "true";
    };
    const cached = rowText.get(row);
    show(cached ?? null);
    if (cached === undefined)
      ingest
        .batchGetRows({ parent: opts.datasetName, indexes: [BigInt(row)], columns: opts.textColumns })
        .then((res) => {
          const text = res.rows[0]?.values.map(valueText).filter((t) => t).join("\n") ?? "";
          rowText.set(row, text);
          if (hovered === best) show(text);
        })
        .catch((err) => hovered === best && show(`could not load the row: ${errorMessage(err)}`));
  });
  canvas.addEventListener(
    "wheel",
    (ev) => {
      ev.preventDefault();
      orbit.distance = Math.max(1.2, Math.min(12, orbit.distance * Math.exp(ev.deltaY * 0.001)));
      draw();
    },
    { passive: false },
  );
  const onResize = () => draw();
  window.addEventListener("resize", onResize);
  draw();

  Object.assign(hooks, {
    ready: true,
    pointCount: n,
    totalCount: n,
    orbit: () => ({ ...orbit }),
    rowOfPoint: (i: number) => points.rows[i],
    screenPositionOf(i: number) {
      const r = canvas.getBoundingClientRect();
      return { x: r.left + screen.sx[i], y: r.top + screen.sy[i] };
    },
  });
  frame.dataset.ready = "true";
  return () => {
    cancelAnimationFrame(frameId);
    window.removeEventListener("resize", onResize);
    if (window.__embedviz === hooks) window.__embedviz = { pointCount: 0, ready: false };
  };
}
