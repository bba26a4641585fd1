// The workspace's frame: the bar (crumbs, the dataset's name and size, the map's toolbar,
// the panel toggles), the panels around the map, the centre's state box and the table
// panel's tabs. It holds no data of its own: the workspace tells it what to show.

import type { ScreenContext } from "./account";
import { formatBytes, formatCount, h } from "./dom";
import type { Dataset } from "./gen/embedviz/v1/ingest_pb";
import { ProgressBar } from "./jobs";

export type Panel = "data" | "side" | "table";
export type CentreStateName = "loading" | "empty" | "running" | "failed" | "ready";

/** A write control a viewer sees disabled, with the reason on hover. */
export function lockForViewer(b: HTMLButtonElement): void {
  b.disabled = true;
  b.title = "Viewers cannot change this project";
  b.dataset.readOnly = "true";
}

/** The box over the map's place while there is no map: loading, a job's progress, what failed (with Retry), what to do. */
export class CentreState {
  /** The progress of the job the centre waits for. */
  readonly bar = new ProgressBar("job-progress", "Working");
  private readonly text = h("p", { id: "map-state-text" });
  private readonly retryButton = h("button", { id: "retry-button", "data-testid": "retry-button", type: "button", hidden: true }, "Retry");
  readonly el = h("div", { id: "map-state", "data-testid": "map-state", class: "map-state", "data-state": "loading" }, h("div", { class: "map-state-box" }, this.text, this.bar.el, this.retryButton));
  private readonly act: ScreenContext["act"];

  constructor(act: ScreenContext["act"]) {
    this.act = act;
  }

  set(state: CentreStateName, text = "", onRetry?: () => Promise<void>): void {
    this.el.dataset.state = state;
    this.el.hidden = state === "ready";
    this.text.textContent = text;
    this.bar.el.hidden = state !== "running";
    this.retryButton.hidden = !onRetry;
    this.retryButton.onclick = onRetry ? () => void this.act(this.retryButton, async () => onRetry()) : null;
  }

  readOnly(): void {
    lockForViewer(this.retryButton);
  }
}

export class WorkspaceFrame {
  readonly centre: CentreState;
  /** Where the map draws, and the bar's slot for the map's controls. */
  readonly stage = h("div", { id: "map-host", "data-testid": "map-host", class: "map-stage" });
  readonly toolbar = h("div", { id: "map-toolbar", class: "map-toolbar" });
  readonly dataPanel = h("aside", { id: "panel-data", "data-testid": "panel-data", class: "ws-panel ws-left" });
  readonly side = h("aside", { id: "panel-side", "data-testid": "panel-side", class: "ws-panel ws-right" }, h("p", { class: "muted" }, "The legend, filters and a point's details appear here once a map is open."));
  /** The table panel's two tabs: the map's linked table, and every row of the dataset. */
  readonly linkedHost = h("div", { id: "linked-host" });
  readonly rowsHost = h("div", { id: "data-table-host", "data-testid": "data-table-host", hidden: true });
  readonly el: HTMLElement;
  private readonly title = h("h1", { id: "dataset-title" }, "Dataset");
  private readonly summary = h("span", { class: "muted", id: "dataset-summary" });
  private readonly bar: HTMLElement;
  private readonly tabLinked = h("button", { type: "button", class: "tab", id: "tab-linked", "aria-selected": "true" }, "Selected / filtered rows");
  private readonly tabRows = h("button", { type: "button", class: "tab", id: "tab-rows", "aria-selected": "false" }, "All rows");

  constructor(projectName: string, act: ScreenContext["act"]) {
    this.centre = new CentreState(act);
    const toggle = (id: string, label: string, panel: Panel) => {
      const b = h("button", { id, type: "button", class: "secondary toggle", "aria-pressed": "true", "data-panel": panel, title: `Show or hide the ${label.toLowerCase()} panel` }, label);
      b.addEventListener("click", () => this.setPanel(panel, this.el.dataset[panel] === "closed"));
      return b;
    };
    this.bar = h(
      "div",
      { class: "ws-bar" },
      h("nav", { class: "crumbs" }, h("a", { href: "#/projects" }, "Projects"), " / ", h("a", { href: `#/${projectName}?datasets`, id: "project-link" }, "Project"), " / "),
      this.title,
      this.summary,
      this.toolbar,
      h("div", { class: "ws-toggles" }, toggle("toggle-data", "Data", "data"), toggle("toggle-side", "Legend", "side"), toggle("toggle-table", "Table", "table")),
    );
    const center = h("section", { id: "map-section", class: "ws-map" }, this.stage, this.centre.el);
    const tablePanel = h("section", { id: "panel-table", "data-testid": "panel-table", class: "ws-table" }, h("div", { class: "tabs" }, this.tabLinked, this.tabRows), this.linkedHost, this.rowsHost);
    this.el = h("div", { id: "workspace", "data-testid": "workspace", class: "workspace" }, this.bar, this.dataPanel, center, this.side, tablePanel);
    this.tabLinked.addEventListener("click", () => this.showTab("linked"));
    this.tabRows.addEventListener("click", () => this.showTab("rows"));
  }

  /** Puts the frame on the page with every panel open and the dataset's rows in the table. */
  mount(app: HTMLElement): void {
    app.replaceChildren(this.el);
    this.setPanel("data", true);
    this.setPanel("side", true);
    this.setPanel("table", true);
    this.showTab("rows");
  }

  setPanel(panel: Panel, open: boolean): void {
    this.el.dataset[panel] = open ? "open" : "closed";
    this.bar.querySelector(`[data-panel=${panel}]`)?.setAttribute("aria-pressed", String(open));
    window.dispatchEvent(new Event("resize"));
  }

  showTab(which: "linked" | "rows"): void {
    this.linkedHost.hidden = which !== "linked";
    this.rowsHost.hidden = which !== "rows";
    this.tabLinked.setAttribute("aria-selected", String(which === "linked"));
    this.tabRows.setAttribute("aria-selected", String(which === "rows"));
  }

  /** The bar's name and size of the dataset. */
  describe(d: Dataset): void {
    this.title.textContent = d.displayName || d.sourceFilename || d.name;
    this.summary.textContent = `${formatCount(d.rowCount)} rows · ${d.columns.length} columns · ${formatBytes(d.sizeBytes)}`;
    this.summary.dataset.rows = String(d.rowCount);
  }

  /** The dataset's name as the bar shows it. */
  datasetTitle(): string {
    return this.title.textContent ?? "";
  }

  /** A viewer's workspace: the write controls say why they are off. */
  readOnly(): void {
    this.el.dataset.readOnly = "true";
    this.centre.readOnly();
  }

  canWrite(): boolean {
    return this.el.dataset.readOnly !== "true";
  }
}
