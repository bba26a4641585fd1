// "2. Map": which finished embedding, the method, 2-D or 3-D, how many clusters, a label
// column to measure the map against (optional), Create map, and the running map's progress
// with its Cancel. Hidden until an embedding is done.

import type { ScreenContext } from "./account";
import { embeddingChoiceLabel } from "./datasetjobs";
import { h } from "./dom";
import type { Embedding } from "./gen/embedviz/v1/embedding_pb";
import type { Column } from "./gen/embedviz/v1/ingest_pb";
import type { Job } from "./gen/embedviz/v1/job_pb";
import { ClusterAlgorithm, ProjectionMethod, type Projection } from "./gen/embedviz/v1/projection_pb";
import { ProgressBar } from "./jobs";
import { lockForViewer } from "./workspaceframe";

export type MapRequest = Pick<Projection, "method" | "dimensions" | "labelColumn"> & { clustering: { algorithm: ClusterAlgorithm; k: number; minClusterSize: number } };

const positive = (text: string) => {
  const v = Number.parseInt(text, 10);
  return Number.isFinite(v) && v > 0 ? v : 0;
};

/** The clustering the "Clusters" and "Smallest" fields ask for: k-means with k when a number
 * of clusters is given; otherwise the server's default, HDBSCAN by density (with the
 * smallest cluster size when given), which finds how many clusters there are. */
export function clusteringOf(kText: string, minSizeText = ""): MapRequest["clustering"] {
  const k = positive(kText);
  if (k) return { algorithm: ClusterAlgorithm.KMEANS, k, minClusterSize: 0 };
  return { algorithm: ClusterAlgorithm.UNSPECIFIED, k: 0, minClusterSize: positive(minSizeText) };
}

export class MapForm {
  /** The running map's progress. */
  readonly bar = new ProgressBar("projection-progress", "Projection");
  readonly el: HTMLElement;
  private readonly embeddingSelect = h("select", { id: "embedding-select", "data-testid": "embedding-select", "aria-label": "Embedding to map" });
  private readonly methodSelect = h("select", { id: "projection-method", "data-testid": "projection-method" }, h("option", { value: String(ProjectionMethod.UMAP) }, "UMAP"), h("option", { value: String(ProjectionMethod.PCA) }, "PCA"), h("option", { value: String(ProjectionMethod.TSNE) }, "t-SNE"));
  private readonly dimSelect = h("select", { id: "projection-dimensions", "data-testid": "projection-dimensions", "aria-label": "Dimensions" }, h("option", { value: "2" }, "2-D"), h("option", { value: "3" }, "3-D"));
  private readonly kInput = h("input", { id: "cluster-k", "data-testid": "cluster-k", type: "number", min: 1, max: 200, placeholder: "auto", title: "A number: k-means with that many clusters. Empty: found by density (HDBSCAN)" });
  private readonly minSizeInput = h("input", { id: "cluster-min-size", "data-testid": "cluster-min-size", type: "number", min: 2, placeholder: "auto", title: "Smallest cluster HDBSCAN keeps (empty: from the row count)" });
  private readonly labelSelect = h("select", { id: "label-column", "data-testid": "label-column", "aria-label": "Label column", title: "A column of known groups (a category, a section): the map reports how often neighbours share it and how far the clusters match it" }, h("option", { value: "" }, "none"));
  private readonly createButton = h("button", { id: "start-projection-button", "data-testid": "start-projection-button", type: "button", disabled: true }, "Create map");
  private readonly cancelButton = h("button", { id: "cancel-projection-button", "data-testid": "cancel-projection-button", type: "button", class: "secondary", hidden: true }, "Cancel map");

  /** `onCreate` gets the chosen embedding's name and the map asked for. */
  constructor(act: ScreenContext["act"], onCreate: (embedding: string, request: MapRequest) => Promise<void>) {
    this.bar.el.hidden = true;
    this.el = h(
      "section",
      { class: "panel-block", id: "projection-section", hidden: true },
      h("h2", {}, "2. Map"),
      h("label", {}, "Embedding ", this.embeddingSelect),
      h("div", { class: "row" }, h("label", {}, "Method ", this.methodSelect), h("label", {}, "View ", this.dimSelect), h("label", {}, "Clusters ", this.kInput), h("label", {}, "Smallest ", this.minSizeInput)),
      h("label", {}, "Measure against ", this.labelSelect),
      h("div", { class: "row" }, this.createButton, this.cancelButton),
      this.bar.el,
    );
    this.createButton.addEventListener("click", () =>
      act(this.createButton, async () =>
        onCreate(this.embeddingSelect.value, { method: Number(this.methodSelect.value) as ProjectionMethod, dimensions: Number(this.dimSelect.value), clustering: clusteringOf(this.kInput.value, this.minSizeInput.value), labelColumn: this.labelSelect.value }),
      ),
    );
  }

  /** The embeddings a map can be made of (newest first); the chosen one stays chosen. */
  render(finished: Embedding[], canWrite: boolean): void {
    const chosen = this.embeddingSelect.value;
    this.embeddingSelect.replaceChildren(...finished.map((e) => h("option", { value: e.name, selected: e.name === chosen }, embeddingChoiceLabel(e))));
    this.el.hidden = finished.length === 0;
    this.createButton.disabled = finished.length === 0 || !canWrite;
  }

  /** The dataset's columns, offered as the label column a map is measured against. */
  setColumns(columns: Column[]): void {
    this.labelSelect.replaceChildren(h("option", { value: "" }, "none"), ...columns.map((c) => h("option", { value: c.name }, c.name)));
  }

  choose(embedding: string): void {
    this.embeddingSelect.value = embedding;
  }

  focusCreate(): void {
    this.createButton.focus();
  }

  /** A map is being made: its progress shows, Cancel calls `cancel`. */
  following(job: Job | undefined, canWrite: boolean, act: ScreenContext["act"], cancel: () => Promise<Job | undefined>): void {
    this.bar.el.hidden = false;
    this.bar.setJob(job);
    this.cancelButton.hidden = false;
    this.cancelButton.disabled = !canWrite;
    this.cancelButton.onclick = () => void act(this.cancelButton, async () => this.bar.setJob(await cancel()));
  }

  idle(): void {
    this.cancelButton.hidden = true;
  }

  readOnly(): void {
    lockForViewer(this.createButton);
    lockForViewer(this.cancelButton);
  }
}
