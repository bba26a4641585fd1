// What the map draws, kept in step with the view store: the colour and size encodings,
// the filter mask (filters, hidden legend entries, search hits, selection), the points
// highlighted (the selection, or the focused point and its neighbours) and the move from
// the previous map. Panels that show counts or labels listen with onDrawn.

import { drawPalette, clusterEncoding, columnEncoding, sizeValues, type Encoding } from "./encoding";
import { filterMask, maskIndexes } from "./filters";
import type { MapContext } from "./mapcontext";
import { interpolate, progressAt, TRANSITION_MS } from "./transition";
import type { ViewState } from "./viewstate";

type SceneNeeds = Pick<MapContext, "store" | "points" | "scatterplot" | "reader" | "baseSize" | "hooks" | "onError">;

/** The points to highlight: the selection, else the focused point and its neighbours. */
export function highlightedPoints(s: Pick<ViewState, "selection" | "focus">, pointOfRow: (row: number) => number, neighbourRows: number[]): number[] {
  const selected = s.selection.map(pointOfRow).filter((p) => p >= 0);
  if (selected.length) return selected;
  const focus = pointOfRow(s.focus);
  if (focus < 0) return [];
  return [focus, ...neighbourRows.map(pointOfRow).filter((p) => p >= 0)];
}

/** Columns the filters of a view read. */
export function filterColumns(s: ViewState): string[] {
  return [...Object.keys(s.filters.categories), ...Object.keys(s.filters.ranges)];
}

export class MapScene {
  encoding: Encoding | null = null;
  /** Each point's size in [0, 1], or null for one size. */
  private size: Float32Array | null = null;
  /** 1 where a point passes the filters. */
  mask: Uint8Array;
  visible: number;
  /** Points the last search found. */
  searchHits: number[] = [];
  /** Rows listed as the focused point's neighbours. */
  neighbourRows: number[] = [];
  /** Where the points are drawn now (their places, or on the way there). */
  private drawX: Float32Array;
  private drawY: Float32Array;
  private readonly listeners = new Set<() => void>();
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly ctx: SceneNeeds, start: { x: Float32Array; y: Float32Array } | null) {
    const { n, x, y } = ctx.points;
    this.mask = new Uint8Array(n).fill(1);
    this.visible = n;
    this.drawX = start ? Float32Array.from(start.x) : x;
    this.drawY = start ? Float32Array.from(start.y) : y;
  }

  /** Called each time the map has applied a new mask (after every redraw or filter change). */
  onDrawn(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Runs redraws one after another, never two at once; failures go to onError. */
  serial(work: () => Promise<void>): Promise<void> {
    this.queue = this.queue.then(work).catch(this.ctx.onError);
    return this.queue;
  }

  /** Builds the encodings the view asks for; on a failure, the view that still works. */
  async encode(s: ViewState): Promise<Partial<ViewState> | null> {
    const { points, reader } = this.ctx;
    try {
      this.encoding = s.colorBy ? columnEncoding(s.colorBy, await reader.read(s.colorBy), points.n) : clusterEncoding(points);
      this.size = s.sizeBy ? sizeValues(s.sizeBy, await reader.read(s.sizeBy), points.n) : null;
      return null;
    } catch (err) {
      this.ctx.onError(err);
      if (!this.encoding) this.encoding = clusterEncoding(points);
      return { colorBy: this.encoding.column, sizeBy: this.size ? s.sizeBy : "" };
    }
  }

  /** Reads the columns the view's filters need (a failure is reported, the rest go on). */
  async readFilterColumns(s: ViewState): Promise<void> {
    for (const name of filterColumns(s)) await this.ctx.reader.read(name).catch(this.ctx.onError);
  }

  recomputeMask(): void {
    const { store, points, reader, hooks } = this.ctx;
    const s = store.get();
    const selected = s.selection.map(points.pointOfRow).filter((p) => p >= 0);
    const result = filterMask({ n: points.n, filters: s.filters, columns: reader.cache, searchHits: this.searchHits, selected, keyOf: this.encoding?.keyOf, hidden: new Set(s.hidden) });
    this.mask = result.mask;
    this.visible = result.count;
    hooks.visibleCount = this.visible;
  }

  /** Draws the points with the current encoding and size, then applies the mask. */
  async redraw(): Promise<void> {
    const enc = this.encoding;
    if (!enc) return;
    const { scatterplot, baseSize } = this.ctx;
    scatterplot.set({
      pointColor: drawPalette(enc),
      colorBy: "valueA",
      sizeBy: this.size ? "valueB" : null,
      pointSize: this.size ? Array.from({ length: 16 }, (_, i) => baseSize * (0.5 + (2.5 * i) / 15)) : baseSize,
    });
    await scatterplot.draw(this.pointData(enc), dataTypes(enc));
    await this.applyMask();
  }

  async applyMask(): Promise<void> {
    const { scatterplot, points } = this.ctx;
    if (this.visible === points.n) await scatterplot.unfilter({ preventEvent: true });
    else await scatterplot.filter(Array.from(maskIndexes(this.mask)), { preventEvent: true });
    for (const l of [...this.listeners]) l();
  }

  /** The store's filters, selection or the search hits changed: a new mask, applied. */
  async refilter(): Promise<void> {
    this.recomputeMask();
    await this.applyMask();
  }

  /** Selects on the map what the view highlights, among the points that pass the filters. */
  highlight(): void {
    const { store, points, scatterplot } = this.ctx;
    const pts = highlightedPoints(store.get(), points.pointOfRow, this.neighbourRows);
    const shown = pts.filter((p) => this.mask[p]);
    scatterplot.set(selectionStyle(shown.length, points.n, this.ctx.baseSize));
    if (pts.length) scatterplot.select(shown, { preventEvent: true });
    else scatterplot.deselect({ preventEvent: true });
  }

  /**
   * Moves the points from `from` to their places here over TRANSITION_MS, one draw a frame.
   * Browser tests may hold the move at a fraction of its time (window.__embedvizTransitionHold)
   * to look at a frame in its middle; it goes on when they delete it.
   */
  async move(from: { x: Float32Array; y: Float32Array }, frame: HTMLElement, overlay: HTMLElement): Promise<void> {
    const { x, y } = this.ctx.points;
    frame.dataset.transition = "running";
    overlay.style.visibility = "hidden";
    const bx = this.drawX, by = this.drawY;
    let frames = 0;
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
      interpolate(from.x, x, t, bx);
      interpolate(from.y, y, t, by);
      const enc = this.encoding;
      if (enc) await this.ctx.scatterplot.draw(this.pointData(enc), { preventFilterReset: true, ...dataTypes(enc) });
      frames++;
      if (t >= 1) break;
      await new Promise((r) => requestAnimationFrame(r));
    }
    this.drawX = x;
    this.drawY = y;
    this.highlight();
    overlay.style.visibility = "";
    frame.dataset.transition = "done";
    frame.dataset.transitionFrames = String(frames);
  }

  private pointData(enc: Encoding) {
    const data: { x: Float32Array; y: Float32Array; valueA: Float32Array; valueB?: Float32Array } = { x: this.drawX, y: this.drawY, valueA: enc.valueA };
    if (this.size) data.valueB = this.size;
    return data;
  }
}

const dataTypes = (enc: Encoding) => ({ zDataType: enc.mode === "number" ? ("continuous" as const) : ("categorical" as const), wDataType: "continuous" as const });

const NO_PIXELS = 0.001;

/** A few highlighted points (search hits, neighbours, a small lasso) are drawn large with
 * an outline so they stand out; a big selection (thousands of points of a dense map) would
 * turn into overlapping discs that hide the map, so its points keep their size, lose the
 * outline, and the points outside it fade instead. */
export function selectionStyle(selected: number, total: number, baseSize: number): { pointSizeSelected: number; pointOutlineWidth: number; opacityInactiveScale: number } {
  const big = selected > Math.max(500, total * 0.02);
  // (regl-scatterplot ignores a 0 for both sizes, so "none" is a thousandth of a pixel.)
  return big
    ? { pointSizeSelected: NO_PIXELS, pointOutlineWidth: NO_PIXELS, opacityInactiveScale: 0.25 }
    : { pointSizeSelected: baseSize + 3, pointOutlineWidth: 2, opacityInactiveScale: 1 };
}
