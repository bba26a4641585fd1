// The dataset's own blocks in the Data & jobs panel: the viewer's note, the import's
// progress (a dataset opened while it imports waits for it here and in the centre), a
// shortcut to upload another file, and deleting the dataset.

import type { ScreenContext } from "./account";
import { ingest } from "./api";
import { confirmButton, h } from "./dom";
import type { Dataset } from "./gen/embedviz/v1/ingest_pb";
import { followJob, JobState, ProgressBar } from "./jobs";
import { uploadFile } from "./upload";
import type { WorkspaceFrame } from "./workspaceframe";

export interface DatasetPanelContext extends Pick<ScreenContext, "signal" | "act"> {
  datasetName: string;
  projectName: string;
  frame: Pick<WorkspaceFrame, "describe" | "datasetTitle" | "centre">;
}

export class DatasetPanel {
  private readonly importBar = new ProgressBar("import-progress", "Import");
  private readonly uploadInput = h("input", { id: "upload-more-input", type: "file", accept: ".csv,.tsv,.parquet,.jsonl,.ndjson,.arrow,.feather", hidden: true });
  private readonly uploadBar = new ProgressBar("upload-progress", "Upload");
  /** The viewer's note, at the top of the panel. */
  readonly note = h("p", { id: "read-only-note", "data-testid": "read-only-note", class: "notice", hidden: true });
  private readonly deleteButton: HTMLButtonElement;
  /** The import's progress and the upload shortcut. */
  readonly importBlock: HTMLElement;
  /** Deleting the dataset, at the bottom of the panel. */
  readonly dangerBlock: HTMLElement;
  private readonly ctx: DatasetPanelContext;

  constructor(ctx: DatasetPanelContext) {
    this.ctx = ctx;
    const { act, datasetName, projectName } = ctx;
    this.importBar.el.hidden = true;
    this.uploadBar.el.hidden = true;
    this.deleteButton = confirmButton({ id: "delete-dataset-button", "data-testid": "delete-dataset-button" }, "Delete this dataset", () => `Delete “${ctx.frame.datasetTitle()}” with its rows, embeddings and maps? Click again`, (b) =>
      void act(b, async () => {
        await ingest.deleteDataset({ name: datasetName });
        location.hash = `#/${projectName}?datasets`;
      }),
    );
    this.importBlock = h("section", { class: "panel-block" }, this.importBar.el, h("label", { class: "inline muted small", for: "upload-more-input" }, h("a", { href: `#/${projectName}?datasets` }, "Other datasets and uploads")), this.uploadInput, this.uploadBar.el);
    this.dangerBlock = h("section", { class: "panel-block", id: "dataset-danger" }, this.deleteButton);
  }

  /**
   * Shows the dataset and, while it imports, the import's progress; resolves with the
   * dataset once imported, or with null when the import failed or was cancelled.
   */
  async waitForImport(first: Dataset): Promise<Dataset | null> {
    const { frame, signal, datasetName } = this.ctx;
    let dataset = first;
    frame.describe(dataset);
    this.importBar.setJob(dataset.job);
    if (dataset.job?.state === JobState.SUCCEEDED) return dataset;
    this.importBar.el.hidden = false;
    frame.centre.set("running", "Importing the dataset…");
    frame.centre.bar.setJob(dataset.job);
    const last = await followJob(
      () => ingest.watchDataset({ name: datasetName }, { signal }),
      (m) => m.dataset?.job,
      (m) => {
        this.importBar.setJob(m.dataset?.job);
        frame.centre.bar.setJob(m.dataset?.job);
        if (m.dataset) frame.describe(m.dataset);
      },
    );
    if (last.dataset) dataset = last.dataset;
    if (dataset.job?.state === JobState.SUCCEEDED) return dataset;
    frame.centre.set("failed", `This dataset's import ${dataset.job?.state === JobState.CANCELLED ? "was cancelled" : `failed: ${dataset.job?.error || "no reason given"}`}. Upload the file again from the project page.`);
    return null;
  }

  /** Another file uploaded from here opens as its own dataset (the project page has the drop zone; this is a shortcut). */
  offerUpload(): void {
    const { act, projectName } = this.ctx;
    this.uploadInput.addEventListener("change", () => {
      const file = this.uploadInput.files?.[0];
      if (!file) return;
      void act(null, async () => {
        this.uploadBar.el.hidden = false;
        const d = await uploadFile(projectName, file, (sent, total, rate) => this.uploadBar.setBytes(sent, total, rate), () => {});
        location.hash = `#/${d.name}`;
      });
    });
  }

  readOnly(): void {
    // A viewer reads and exports; every write control says why it is off.
    this.note.hidden = false;
    this.note.textContent = "You are a viewer of this project: you can explore and export, not embed or make maps.";
    this.deleteButton.hidden = true;
  }
}
