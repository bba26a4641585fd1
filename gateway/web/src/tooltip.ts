// The tooltip over a hovered point (its row, cluster, the colour column's value and the
// row's text) and the picker of the columns it shows. The picked columns live in the view
// state ([] = the embedded text), so a link carries them.

import { errorMessage } from "./api";
import { h } from "./dom";
import { cellOf } from "./filters";
import type { Column } from "./gen/embedviz/v1/ingest_pb";
import type { MapContext } from "./mapcontext";

type TooltipNeeds = Pick<MapContext, "store" | "scatterplot" | "points" | "scene" | "reader" | "texts" | "frame" | "hooks">;

/** The columns the tooltip shows: the view's known picks, else the embedded text. */
export function tooltipColumns(picked: string[], known: Set<string>, textColumns: string[]): string[] {
  const kept = picked.filter((c) => known.has(c));
  return kept.length ? kept : textColumns;
}

/** What the view keeps for the boxes ticked: [] when that is the embedded text (or nothing). */
export function tooltipChoice(ticked: string[], textColumns: string[]): string[] {
  const same = ticked.length === textColumns.length && ticked.every((c, i) => c === textColumns[i]);
  return same ? [] : ticked;
}

export class TooltipPanel {
  /** The tooltip itself, inside the map frame. */
  readonly el = h("div", { id: "map-tooltip", "data-testid": "map-tooltip", class: "tooltip", hidden: true });
  /** The column picker, in the side panel. */
  readonly picker: HTMLElement;
  private readonly boxes = h("div", { class: "tooltip-picker" });

  constructor(private readonly columns: Column[]) {
    this.picker = h("details", { class: "panel-block", id: "tooltip-columns" }, h("summary", {}, "Tooltip shows…"), this.boxes);
  }

  connect(ctx: TooltipNeeds): () => void {
    const { store, scatterplot, points, frame, hooks, texts } = ctx;
    const tooltip = this.el;
    const known = new Set(this.columns.map((c) => c.name));
    const shown = () => tooltipColumns(store.get().tooltip, known, texts.textColumns);
    const start = shown();
    this.boxes.append(
      ...this.columns.map((c) => {
        const cb = h("input", { type: "checkbox", value: c.name, checked: start.includes(c.name), "data-testid": "tooltip-column" });
        cb.addEventListener("change", () => {
          const ticked = [...this.boxes.querySelectorAll<HTMLInputElement>("input:checked")].map((i) => i.value);
          store.update({ tooltip: tooltipChoice(ticked, texts.textColumns) });
        });
        return h("label", { class: "inline" }, cb, ` ${c.name}`);
      }),
    );

    let mouse = { x: 0, y: 0 };
    let hovered = -1;
    const place = () => {
      tooltip.style.left = `${Math.min(mouse.x + 14, Math.max(0, frame.clientWidth - 340))}px`;
      tooltip.style.top = `${mouse.y + 14}px`;
    };
    const onMove = (ev: MouseEvent) => {
      const r = frame.getBoundingClientRect();
      mouse = { x: ev.clientX - r.left, y: ev.clientY - r.top };
      if (hovered >= 0) place();
    };
    frame.addEventListener("mousemove", onMove);
    const render = (i: number, text: string | null) => {
      const row = points.rows[i];
      const cluster = points.clusters[i];
      const enc = ctx.scene.encoding;
      const col = enc?.column ? ctx.reader.cache.get(enc.column) : undefined;
      const extra = col && enc ? ` · ${enc.column}: ${cellOf(col, i) || "null"}` : "";
      tooltip.replaceChildren(
        h("div", { class: "tooltip-head" }, `Row ${row}`, cluster >= 0 ? ` · ${points.clusterLabel(cluster)}` : " · noise", extra),
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
      place();
      const columns = shown();
      const cached = texts.cached(row, columns);
      render(i, cached ?? null);
      if (cached !== undefined) return;
      texts
        .of([row], columns)
        .then((t) => hovered === i && render(i, t.get(row) ?? ""))
        .catch((err) => hovered === i && render(i, `could not load the row: ${errorMessage(err)}`));
    });
    scatterplot.subscribe("pointOut", () => {
      hovered = -1;
      hooks.hoveredPoint = -1;
      tooltip.hidden = true;
    });
    return () => frame.removeEventListener("mousemove", onMove);
  }
}
