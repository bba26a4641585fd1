// The focused point (the view state's focus): its row's values and its nearest neighbours
// in the embedding space, listed in the side panel and highlighted on the map with it.

import { ingest, projection as projectionApi } from "./api";
import { h } from "./dom";
import type { MapContext } from "./mapcontext";
import { matchList, openRow } from "./search";
import { valueText } from "./table";

type NeighbourNeeds = Pick<MapContext, "store" | "datasetName" | "projectionName" | "points" | "scene" | "texts" | "centreOn" | "onError">;

export class NeighboursPanel {
  private readonly details = h("div", { id: "point-details", "data-testid": "point-details" });
  private readonly title = h("h3", { id: "neighbors-title" }, "Nearest neighbours");
  private readonly list = h("ol", { id: "neighbors-list", "data-testid": "neighbors-list", class: "matches" });
  /** The panel, in the side panel (hidden while no point is focused). */
  readonly el = h("div", { id: "neighbors-panel", class: "panel-block", hidden: true }, h("h3", {}, "Point"), this.details, this.title, h("p", { class: "muted small" }, "by cosine similarity in the embedding space"), this.list);
  private seq = 0;
  private ctx: NeighbourNeeds | null = null;

  connect(ctx: NeighbourNeeds): () => void {
    this.ctx = ctx;
    return ctx.store.watch((s) => s.focus, (row) => void this.show(row));
  }

  /** Shows a row's details and neighbours, or hides the panel for -1. */
  async show(row: number): Promise<void> {
    const ctx = this.ctx;
    if (!ctx) return;
    const mine = ++this.seq;
    if (row < 0) {
      this.el.hidden = true;
      return;
    }
    this.el.hidden = false;
    this.list.dataset.state = "loading";
    this.list.dataset.row = String(row);
    try {
      const [full, res] = await Promise.all([
        ingest.batchGetRows({ parent: ctx.datasetName, indexes: [BigInt(row)] }),
        projectionApi.findNeighbors({ name: ctx.projectionName, rowIndex: BigInt(row), limit: 10 }),
      ]);
      const texts = await ctx.texts.of(res.neighbors.map((m) => Number(m.rowIndex)));
      if (mine !== this.seq) return;
      const r = full.rows[0];
      this.details.replaceChildren(
        h("dl", { class: "details" }, h("dt", {}, "row"), h("dd", {}, String(row)), ...(r ? full.columns.flatMap((c, i) => [h("dt", {}, c), h("dd", {}, valueText(r.values[i]))]) : [])),
      );
      this.title.replaceChildren(`Nearest neighbours of row ${row}`);
      matchList(this.list, "neighbor-item", res.neighbors, texts, openRow(ctx));
      this.list.dataset.state = "done";
      ctx.scene.neighbourRows = res.neighbors.map((m) => Number(m.rowIndex));
      ctx.scene.highlight();
    } catch (err) {
      if (mine !== this.seq) return;
      this.list.dataset.state = "error";
      ctx.onError(err);
    }
  }
}
