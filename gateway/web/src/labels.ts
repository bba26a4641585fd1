// The labels layer: a 2-D canvas over the WebGL one with the cluster labels (and, zoomed
// in, finer labels from each cluster's next terms) placed without overlap, and rings
// around the search hits. Redrawn on the next frame after the camera moves, the mask
// changes or the window resizes. Placement arithmetic is in geometry.ts.

import { clusterCentroids, placeLabels, subCentroids, toScreen, type LabelCandidate, type ScreenTransform } from "./geometry";
import type { MapContext, Scatterplot } from "./mapcontext";

type LabelNeeds = Pick<MapContext, "canvas" | "scatterplot" | "points" | "scene" | "hooks" | "baseSize">;

const MAIN_SIZE = 14;
const labelFont = (size: number, weight = 600) => `${weight} ${size}px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif`;

/** The camera's map → screen transform for the canvas as it is now. */
export function screenTransform(canvas: HTMLCanvasElement, scatterplot: Scatterplot): ScreenTransform {
  return { width: canvas.clientWidth, height: canvas.clientHeight, view: scatterplot.get("cameraView") as unknown as ArrayLike<number> };
}

/** The cluster level whose labels show at camera distance `distance` (1: the whole map):
 * the coarsest zoomed out, finer ones zooming in, and below 0.8 the finest, with each
 * cluster's parts labelled as well. */
export function levelAt(distance: number, levels: number): number {
  if (levels >= 3) return distance >= 0.9 ? 2 : distance >= 0.8 ? 1 : 0;
  if (levels === 2) return distance >= 0.8 ? 1 : 0;
  return 0;
}

/** The sub-label of part `part` of a cluster: its next terms in turn, else "label · 2". */
export function partLabel(terms: string[], label: string, part: number): string {
  return terms[1 + part] ?? terms[part % Math.max(1, terms.length)] ?? `${label} · ${part + 1}`;
}

export class LabelsLayer {
  private frameId = 0;
  private readonly cleanups: (() => void)[] = [];

  constructor(
    private readonly overlay: HTMLCanvasElement,
    private readonly ctx: LabelNeeds,
  ) {
    this.cleanups.push(ctx.scene.onDrawn(() => this.draw()));
    ctx.scatterplot.subscribe("view", () => this.draw());
    const onResize = () => this.draw();
    window.addEventListener("resize", onResize);
    this.cleanups.push(() => window.removeEventListener("resize", onResize));
  }

  /** Redraws on the next frame (once, however often asked before it). */
  draw(): void {
    cancelAnimationFrame(this.frameId);
    this.frameId = requestAnimationFrame(() => this.paint());
  }

  dispose(): void {
    cancelAnimationFrame(this.frameId);
    for (const c of this.cleanups.reverse()) c();
  }

  private paint(): void {
    const { canvas, scatterplot, points, scene, hooks, baseSize } = this.ctx;
    const overlay = this.overlay;
    const w = canvas.clientWidth, hgt = canvas.clientHeight;
    const dpr = window.devicePixelRatio || 1;
    if (overlay.width !== Math.round(w * dpr) || overlay.height !== Math.round(hgt * dpr)) {
      overlay.width = Math.round(w * dpr);
      overlay.height = Math.round(hgt * dpr);
    }
    const g = overlay.getContext("2d");
    if (!g) return;
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, hgt);
    const t = screenTransform(canvas, scatterplot);
    const distance = Number(scatterplot.get("cameraDistance")) || 1;
    const { x, y } = points;
    const mask = scene.mask;
    // Search hits: strong rings under the labels.
    if (scene.searchHits.length) {
      g.lineWidth = 2.5;
      g.strokeStyle = "#ff2d55";
      for (const p of scene.searchHits) {
        if (!mask[p]) continue;
        const [sx, sy] = toScreen(t, x[p], y[p]);
        g.beginPath();
        g.arc(sx, sy, baseSize + 5, 0, 2 * Math.PI);
        g.stroke();
      }
    }
    const cands: LabelCandidate[] = [];
    const level = levelAt(distance, points.levels);
    const centres = clusterCentroids(x, y, points.clustersAt(level), mask);
    for (const c of centres) {
      const text = points.clusterLabel(c.id);
      g.font = labelFont(MAIN_SIZE);
      const [sx, sy] = toScreen(t, c.x, c.y);
      cands.push({ text, key: `c${c.id}`, x: sx, y: sy, width: g.measureText(text).width + 6, height: MAIN_SIZE + 4, priority: 1e9 + c.size });
    }
    // Finer labels (the cluster's next terms at the centres of its parts) once zoomed in.
    if (level === 0 && distance < 0.8) {
      g.font = labelFont(11, 500);
      for (const sc of subCentroids(x, y, points.clusters, centres, Math.max(3, Math.round(points.n / 400)), mask)) {
        const text = partLabel(points.clusterTerms(sc.id), points.clusterLabel(sc.id), sc.part);
        const [sx, sy] = toScreen(t, sc.x, sc.y);
        cands.push({ text, key: `s${sc.id}:${sc.part}`, x: sx, y: sy, width: g.measureText(text).width + 6, height: 15, priority: sc.size });
      }
    }
    const placed = placeLabels(cands, w, hgt);
    g.textAlign = "center";
    g.textBaseline = "middle";
    g.lineJoin = "round";
    for (const l of placed) {
      const main = l.key.startsWith("c");
      g.font = main ? labelFont(MAIN_SIZE) : labelFont(11, 500);
      g.lineWidth = 4;
      g.strokeStyle = "rgba(255,255,255,0.92)";
      g.strokeText(l.text, l.x, l.y);
      g.fillStyle = main ? "#1d2433" : "#3b4254";
      g.fillText(l.text, l.x, l.y);
    }
    hooks.labels = placed.map((l) => ({ text: l.text, left: l.left, top: l.top, width: l.width, height: l.height }));
    hooks.labelLevel = level;
    overlay.dataset.labels = String(placed.length);
  }
}
