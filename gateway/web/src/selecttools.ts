// Selecting points: a click on a point focuses it (regl-scatterplot's own pick), the lasso
// and box tools (or Shift+drag) select the points inside a stroke, Clear or Esc selects
// nothing. Strokes are drawn and hit-tested on a layer above the WebGL canvas, so a stroke
// works wherever it starts (on a point too: the canvas never sees the press). All of it
// writes the view state's selection and focus; the scene highlights them.

import { h } from "./dom";
import { boxPolygon, pointsInPolygon } from "./geometry";
import { screenTransform } from "./labels";
import type { MapContext } from "./mapcontext";

type Tool = "" | "lasso" | "box";
type ToolNeeds = Pick<MapContext, "store" | "scatterplot" | "points" | "scene" | "canvas" | "frame" | "drawLabels">;

/** The polygon a stroke encloses: the lasso's path, or the box from its first to last corner. */
export function strokePolygon(kind: "lasso" | "box", stroke: number[]): number[] {
  if (kind !== "box" || stroke.length < 4) return stroke;
  return boxPolygon(stroke[0], stroke[1], stroke[stroke.length - 2], stroke[stroke.length - 1]);
}

/** The dataset rows of some points, ascending (what the view state keeps as the selection). */
export function rowsOfPoints(pts: ArrayLike<number>, rows: ArrayLike<number>): number[] {
  return Array.from(pts, (p) => rows[p]).sort((a, b) => a - b);
}

export class SelectionTools {
  readonly lassoButton = h("button", { id: "lasso-button", "data-testid": "lasso-button", type: "button", class: "secondary", "aria-pressed": "false", title: "Draw around points to select them (or hold Shift and drag)" }, "Lasso");
  readonly boxButton = h("button", { id: "box-button", "data-testid": "box-button", type: "button", class: "secondary", "aria-pressed": "false", title: "Drag a rectangle to select the points in it" }, "Box");
  readonly clearButton = h("button", { id: "clear-selection-button", type: "button", class: "secondary", title: "Clear the selection (Esc)" }, "Clear");
  /** The layer strokes are drawn on, inside the map frame (shown while a tool is on). */
  readonly layer = h("div", { id: "map-lasso-layer", class: "lasso-layer", hidden: true });
  private tool: Tool = "";

  /** The toolbar's buttons, in order. */
  get buttons(): HTMLElement[] {
    return [this.lassoButton, this.boxButton, this.clearButton];
  }

  connect(ctx: ToolNeeds, overlay: HTMLCanvasElement): () => void {
    const { store, scatterplot, points, canvas, frame } = ctx;
    const layer = this.layer;
    scatterplot.subscribe("select", ({ points: pts }: { points: number[] }) => {
      // A click on a point (regl-scatterplot's own selection): open its details.
      if (pts.length === 1) store.update({ focus: points.rows[pts[0]], selection: [] });
    });
    scatterplot.subscribe("deselect", () => {
      if (store.get().selection.length || store.get().focus >= 0) store.update({ selection: [], focus: -1 });
    });
    const setTool = (t: Tool) => {
      this.tool = t;
      layer.hidden = !t;
      frame.dataset.tool = t;
      for (const [b, name] of [[this.lassoButton, "lasso"], [this.boxButton, "box"]] as const) {
        b.setAttribute("aria-pressed", String(t === name));
        b.classList.toggle("active", t === name);
      }
    };
    this.lassoButton.addEventListener("click", () => setTool(this.tool === "lasso" ? "" : "lasso"));
    this.boxButton.addEventListener("click", () => setTool(this.tool === "box" ? "" : "box"));
    this.clearButton.addEventListener("click", () => store.update({ selection: [], focus: -1 }));
    const onKey = (ev: KeyboardEvent) => {
      if (ev.key === "Escape" && !(ev.target instanceof HTMLInputElement)) {
        setTool("");
        store.update({ selection: [], focus: -1 });
      }
    };
    document.addEventListener("keydown", onKey);

    let stroke: number[] | null = null;
    let kind: "lasso" | "box" = "lasso";
    const localPos = (ev: PointerEvent) => {
      const r = canvas.getBoundingClientRect();
      return [ev.clientX - r.left, ev.clientY - r.top] as const;
    };
    // The stroke goes over the labels: they are redrawn first, on the same frame.
    const drawStroke = () => {
      ctx.drawLabels();
      if (!stroke) return;
      requestAnimationFrame(() => {
        const g = overlay.getContext("2d");
        if (!g || !stroke) return;
        const poly = strokePolygon(kind, stroke);
        g.beginPath();
        for (let k = 0; k < poly.length; k += 2) (k ? g.lineTo : g.moveTo).call(g, poly[k], poly[k + 1]);
        g.closePath();
        g.fillStyle = "rgba(61,99,221,0.08)";
        g.fill();
        g.setLineDash([5, 4]);
        g.lineWidth = 1.5;
        g.strokeStyle = "#3d63dd";
        g.stroke();
        g.setLineDash([]);
      });
    };
    const startStroke = (ev: PointerEvent, k: "lasso" | "box") => {
      ev.preventDefault();
      ev.stopPropagation();
      kind = k;
      stroke = [...localPos(ev)];
      layer.hidden = false;
      layer.setPointerCapture(ev.pointerId);
      frame.dataset.stroking = "true";
    };
    layer.addEventListener("pointerdown", (ev) => startStroke(ev, this.tool === "box" ? "box" : "lasso"));
    // Shift+drag lassoes in pan mode too.
    canvas.addEventListener(
      "pointerdown",
      (ev) => {
        if (ev.shiftKey && !this.tool) startStroke(ev, "lasso");
      },
      { capture: true },
    );
    layer.addEventListener("pointermove", (ev) => {
      if (!stroke) return;
      const [px, py] = localPos(ev);
      if (kind === "box") stroke = [stroke[0], stroke[1], px, py];
      else stroke.push(px, py);
      drawStroke();
    });
    const endStroke = (ev: PointerEvent) => {
      if (!stroke) return;
      const poly = strokePolygon(kind, stroke);
      stroke = null;
      delete frame.dataset.stroking;
      layer.hidden = !this.tool;
      if (layer.hasPointerCapture(ev.pointerId)) layer.releasePointerCapture(ev.pointerId);
      ctx.drawLabels();
      if (poly.length < 6) return;
      const inside = pointsInPolygon(points.x, points.y, screenTransform(canvas, scatterplot), poly, ctx.scene.mask);
      store.update({ selection: rowsOfPoints(inside, points.rows), focus: -1 });
    };
    layer.addEventListener("pointerup", endStroke);
    layer.addEventListener("pointercancel", endStroke);
    return () => document.removeEventListener("keydown", onKey);
  }
}
