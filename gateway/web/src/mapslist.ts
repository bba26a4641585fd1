// "Maps of this dataset": every embedding with its state and its maps as links (the open
// one marked), each with a Delete that asks first. Renders from the dataset's jobs; a
// delete changes them and says so through `onChange`.

import type { ScreenContext } from "./account";
import { embedding as embeddingApi, projection as projectionApi } from "./api";
import { embeddingLabel, mapPillLabel, stateWord, type DatasetJobs } from "./datasetjobs";
import { confirmButton, h } from "./dom";
import type { Embedding } from "./gen/embedviz/v1/embedding_pb";
import { ProjectionMethod, type Projection } from "./gen/embedviz/v1/projection_pb";

export interface MapsListContext extends Pick<ScreenContext, "act"> {
  datasetName: string;
  jobs: DatasetJobs;
  canWrite(): boolean;
  /** The map open now, or "". */
  openMap(): string;
  /** The jobs changed (something was deleted). */
  onChange(): void;
}

export class MapsList {
  private readonly list = h("ul", { id: "previous-maps", "data-testid": "previous-maps", class: "list" });
  readonly el = h("section", { class: "panel-block" }, h("h2", {}, "Maps of this dataset"), this.list);
  private readonly ctx: MapsListContext;

  constructor(ctx: MapsListContext) {
    this.ctx = ctx;
  }

  render(): void {
    const items = this.ctx.jobs.list().map(({ embedding, maps }) =>
      h(
        "li",
        { "data-testid": "embedding-item", "data-name": embedding.name, "data-state": stateWord(embedding.job?.state) },
        h("div", { class: "row between" }, h("span", {}, `${embeddingLabel(embedding)} · ${stateWord(embedding.job?.state)}`), this.deleteEmbedding(embedding, maps)),
        ...maps.map((p) => this.mapItem(embedding, p)),
      ),
    );
    this.list.replaceChildren(...(items.length ? items : [h("li", { class: "muted" }, "None yet.")]));
  }

  /** A viewer's list: no delete buttons. */
  readOnly(): void {
    for (const el of this.list.querySelectorAll("[data-testid=delete-embedding], [data-testid=delete-projection]")) el.remove();
  }

  private mapItem(e: Embedding, p: Projection): HTMLElement {
    const current = p.name === this.ctx.openMap();
    return h(
      "span",
      { class: "map-item" },
      h("a", { href: `#/${p.name}`, class: `pill${current ? " current" : ""}`, "data-testid": "projection-link", "data-state": stateWord(p.job?.state) }, mapPillLabel(p)),
      this.deleteMap(e, p),
    );
  }

  private deleteEmbedding(e: Embedding, maps: Projection[]): HTMLElement | null {
    const { act, jobs, canWrite } = this.ctx;
    if (!canWrite()) return null;
    const question = () => `Delete embedding “${embeddingLabel(e)}” and its ${maps.length} map${maps.length === 1 ? "" : "s"}?`;
    return confirmButton({ "data-testid": "delete-embedding", class: "secondary small-button", title: "Delete this embedding and its maps" }, "Delete", question, (b) =>
      void act(b, async () => {
        await embeddingApi.deleteEmbedding({ name: e.name });
        jobs.deleteEmbedding(e.name);
        if (maps.some((p) => p.name === this.ctx.openMap())) location.hash = `#/${this.ctx.datasetName}`;
        this.ctx.onChange();
      }),
    );
  }

  private deleteMap(e: Embedding, p: Projection): HTMLElement | null {
    const { act, jobs, canWrite } = this.ctx;
    if (!canWrite()) return null;
    return confirmButton({ "data-testid": "delete-projection", class: "link", title: "Delete this map" }, "×", () => `Delete this ${ProjectionMethod[p.method] ?? ""} map?`, (b) =>
      void act(b, async () => {
        await projectionApi.deleteProjection({ name: p.name });
        jobs.deleteMap(e.name, p.name);
        if (p.name === this.ctx.openMap()) location.hash = `#/${this.ctx.datasetName}`;
        this.ctx.onChange();
      }),
    );
  }
}
