// Opening a map in the workspace's centre (2-D: map.ts; 3-D: view3d.ts) and the switcher
// in the bar that lists every finished map of the dataset. Opening a map writes it to the
// view store; another map starts from a fresh view, the same one keeps the link's.

import { switchLabels, type DatasetJobs } from "./datasetjobs";
import { h } from "./dom";
import type { Embedding } from "./gen/embedviz/v1/embedding_pb";
import type { Column } from "./gen/embedviz/v1/ingest_pb";
import type { Projection } from "./gen/embedviz/v1/projection_pb";
import { forgetMapPositions, showMap } from "./map";
import { qualityHelp, qualityText } from "./mapquality";
import { SEARCH_NEEDS_A_MODEL } from "./search";
import { shownColumns } from "./vectorcolumns";
import { show3d } from "./view3d";
import type { ViewStore } from "./viewstate";
import type { WorkspaceFrame } from "./workspaceframe";

export interface MapSwitcherContext {
  store: ViewStore;
  datasetName: string;
  columns: Column[];
  jobs: DatasetJobs;
  frame: Pick<WorkspaceFrame, "stage" | "toolbar" | "side" | "linkedHost" | "centre" | "setPanel" | "showTab">;
  /** A map opened: the lists mark it. */
  onOpened(): void;
  onError(err: unknown): void;
  onClearError(): void;
}

export class MapSwitcher {
  /** The map open now, or "" (none, or a new one is being made). */
  current = "";
  private teardown: (() => void) | null = null;
  private readonly ctx: MapSwitcherContext;

  constructor(ctx: MapSwitcherContext) {
    this.ctx = ctx;
  }

  async open(emb: Embedding, proj: Projection): Promise<void> {
    const { store, frame, datasetName, onError } = this.ctx;
    this.dispose();
    this.current = proj.name;
    const keepView = store.get().projection === proj.name;
    store.update({ embedding: emb.name, projection: proj.name, ...(keepView ? {} : { camera: null, selection: [], focus: -1, hidden: [], search: { query: "", column: "" } }) });
    frame.centre.set("ready");
    frame.setPanel("data", false);
    frame.showTab("linked");
    this.ctx.onOpened();
    if (proj.dimensions === 3) {
      forgetMapPositions();
      frame.toolbar.replaceChildren(this.switcher());
      frame.linkedHost.replaceChildren();
      this.teardown = await show3d({ projectionName: proj.name, datasetName, textColumns: shownColumns(emb, this.ctx.columns), stage: frame.stage, side: frame.side, onError });
      this.showQuality(emb, proj);
      return;
    }
    this.teardown = await showMap({
      store,
      projectionName: proj.name,
      datasetName,
      textColumns: shownColumns(emb, this.ctx.columns),
      byMeaning: emb.vectorColumns.length === 0,
      columns: this.ctx.columns,
      stage: frame.stage,
      toolbar: frame.toolbar,
      side: frame.side,
      table: frame.linkedHost,
      onError,
      onClearError: this.ctx.onClearError,
    });
    frame.toolbar.prepend(this.switcher());
    this.showQuality(emb, proj);
  }

  /** The map's quality figures over its lower right corner (the toolbar's buttons need its
   * width), and for imported vectors that search by meaning is off. */
  private showQuality(emb: Embedding, proj: Projection): void {
    const quality = qualityText(proj.quality);
    const corner = h("div", { class: "map-corner" });
    if (emb.vectorColumns.length) corner.append(h("div", { id: "map-imported-note", "data-testid": "map-imported-note", class: "map-quality small", title: SEARCH_NEEDS_A_MODEL }, `Vectors from ${emb.vectorColumns.length === 1 ? `column ${emb.vectorColumns[0]}` : `${emb.vectorColumns.length} columns`}, no model: no search by meaning; neighbours and text search work`));
    if (quality) corner.append(h("div", { id: "map-quality", "data-testid": "map-quality", class: "map-quality small", title: qualityHelp(proj.quality) }, quality));
    if (corner.childElementCount) this.ctx.frame.stage.append(corner);
  }

  /** Tears the open map down: a new map is on its way. */
  close(): void {
    this.current = "";
    this.dispose();
  }

  /** Tears the open map down as the workspace closes. */
  dispose(): void {
    this.teardown?.();
    this.teardown = null;
  }

  /** Every finished map of the dataset, 2-D and 3-D: choosing one opens it. */
  private switcher(): HTMLSelectElement {
    const maps = this.ctx.jobs.finishedMaps();
    const labels = switchLabels(maps);
    const select = h("select", { id: "map-switch", "data-testid": "map-switch", "aria-label": "Map" }, ...maps.map((p, i) => h("option", { value: p.name, selected: p.name === this.current }, labels[i])));
    select.addEventListener("change", () => (location.hash = `#/${select.value}`));
    return select;
  }
}
