// The legend: one entry per cluster or column value (or a colour ramp for a numeric
// column), with its size and how many of its points pass the filters. A click hides or
// shows the entry, a double-click shows only it (or everything again); both change the
// view state's hidden keys. The entries are a pure function of the encoding and the view.

import { formatCount, h } from "./dom";
import type { Encoding } from "./encoding";
import type { MapContext } from "./mapcontext";
import { sequentialRamp } from "./scales";
import type { ViewStore } from "./viewstate";

export interface LegendItem {
  key: string;
  label: string;
  color: string;
  /** Points with this key on the map. */
  count: number;
  /** Of those, points that pass the filters. */
  passing: number;
  hidden: boolean;
  /** Hover text: a cluster's terms. */
  title: string;
}

/** The legend's entries for an encoding, the hidden keys and the filter mask. */
export function legendItems(enc: Encoding, hidden: string[], mask: Uint8Array, n: number, termsOf: (cluster: number) => string[]): LegendItem[] {
  const off = new Set(hidden);
  const passing = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    if (!mask[i]) continue;
    const key = enc.keyOf(i);
    passing.set(key, (passing.get(key) ?? 0) + 1);
  }
  return enc.entries.map((e) => ({
    key: e.key,
    label: e.label,
    color: e.color,
    count: e.count,
    passing: passing.get(e.key) ?? 0,
    hidden: off.has(e.key),
    title: enc.mode === "cluster" ? termsOf(Number(e.key)).join(", ") : "",
  }));
}

/** What a click on an entry leaves hidden: the entry's key toggled. */
export function toggleHidden(hidden: string[], key: string): string[] {
  return hidden.includes(key) ? hidden.filter((k) => k !== key) : [...hidden, key];
}

/** What a double-click leaves hidden: every other entry, or nothing when only it showed. */
export function soloHidden(hidden: string[], key: string, keys: string[]): string[] {
  const others = keys.filter((k) => k !== key);
  return hidden.length === others.length && !hidden.includes(key) ? [] : others;
}

/** Wires one legend entry's clicks to the store (a double-click cancels the pending click). */
export function legendClicks(el: HTMLElement, store: ViewStore, key: string, keys: () => string[]): void {
  let clickTimer = 0;
  el.addEventListener("click", () => {
    clearTimeout(clickTimer);
    clickTimer = window.setTimeout(() => store.update((s) => ({ hidden: toggleHidden(s.hidden, key) })), 220);
  });
  el.addEventListener("dblclick", () => {
    clearTimeout(clickTimer);
    store.update((s) => ({ hidden: soloHidden(s.hidden, key, keys()) }));
  });
}

export class LegendPanel {
  private readonly list = h("ul", { id: "map-legend", "data-testid": "map-legend", class: "legend" });
  private readonly scale = h("div", { id: "legend-scale", class: "legend-scale", hidden: true });
  /** The legend block, in the side panel. */
  readonly el = h("div", { class: "panel-block" }, h("h3", {}, "Legend"), h("p", { class: "muted small" }, "Click an entry to hide or show it; double-click to show only it."), this.scale, this.list);

  /** Renders each time the map applies a mask (new encoding, filters or hidden keys). */
  connect(ctx: Pick<MapContext, "store" | "scene" | "points">): () => void {
    return ctx.scene.onDrawn(() => this.render(ctx));
  }

  render(ctx: Pick<MapContext, "store" | "scene" | "points">): void {
    const { store, scene, points } = ctx;
    const enc = scene.encoding;
    if (!enc) return;
    const list = this.list;
    list.dataset.mode = enc.mode === "cluster" ? "cluster" : "column";
    if (enc.column) list.dataset.column = enc.column;
    else delete list.dataset.column;
    this.scale.hidden = enc.mode !== "number";
    if (enc.mode === "number" && enc.range) {
      this.scale.replaceChildren(
        h("div", { class: "ramp", style: `background:linear-gradient(to right, ${sequentialRamp(9).join(",")})` }),
        h("div", { class: "ramp-range" }, h("span", { "data-testid": "scale-lo" }, String(+enc.range.lo.toPrecision(4))), h("span", { "data-testid": "scale-hi" }, String(+enc.range.hi.toPrecision(4)))),
      );
    }
    const keys = () => (scene.encoding?.entries ?? []).map((e) => e.key);
    list.replaceChildren(
      ...legendItems(enc, store.get().hidden, scene.mask, points.n, points.clusterTerms).map((e) => {
        const li = h(
          "li",
          {
            "data-testid": "legend-item",
            "data-value": e.key,
            "data-cluster": enc.mode === "cluster" ? e.key : null,
            "data-hidden": e.hidden ? "true" : "false",
            "data-color": e.color,
            class: e.hidden ? "off" : null,
            title: e.title,
          },
          h("span", { class: "swatch", style: `background:${e.color}` }),
          h("span", { class: "legend-label" }, e.label),
          h("span", { class: "legend-size" }, formatCount(e.count)),
          h("span", { class: "legend-passing muted small" }, e.hidden || e.passing === e.count ? "" : formatCount(e.passing)),
        );
        legendClicks(li, store, e.key, keys);
        return li;
      }),
    );
  }
}
