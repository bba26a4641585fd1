// "1. Text to embed": the text picker, the model (with its size and speed) or the vectors the
// table already holds, Start embedding, and the running embedding's progress with its
// Cancel. One embedding at a time from this form; the workspace's job follower drives its
// progress.

import type { ScreenContext } from "./account";
import { embedding } from "./api";
import { h } from "./dom";
import type { Model } from "./gen/embedviz/v1/embedding_pb";
import type { Column } from "./gen/embedviz/v1/ingest_pb";
import type { Job } from "./gen/embedviz/v1/job_pb";
import { ProgressBar } from "./jobs";
import { vectorColumnChoices } from "./vectorcolumns";
import { TextPicker } from "./textpicker";
import { lockForViewer } from "./workspaceframe";

/** Size and a rough speed hint for a model. */
export function modelHintText(m: Model): string {
  const parts = [`${m.dimension || "?"} dimensions`];
  if (m.maxTokens) parts.push(`texts cut at ${m.maxTokens} tokens`);
  if (m.provider) parts.push(m.provider);
  const remote = /openai|http/i.test(m.provider);
  if (remote) parts.push("remote API: speed depends on the endpoint");
  else if (m.dimension && m.dimension <= 384) parts.push("fast: fine on a CPU");
  else if (m.dimension && m.dimension <= 768) parts.push("medium: a GPU helps for large datasets");
  else if (m.dimension) parts.push("slow on a CPU: use a GPU for large datasets");
  if (!remote) parts.push(m.loaded ? "loaded" : "loads on first use");
  return parts.join(" · ");
}

export const modelOptionLabel = (m: Model) => `${m.displayName || m.name}${m.dimension ? ` · ${m.dimension}-d` : ""}${m.default ? " · default" : ""}`;

export interface EmbeddingRequest {
  model: string;
  textColumns: string[];
  template: string;
  vectorColumns: string[];
}

/** The model picker's value for "the vectors the table already holds". */
export const IMPORTED = "imported";

export class EmbedForm {
  readonly picker = new TextPicker();
  /** The running embedding's progress. */
  readonly bar = new ProgressBar("embedding-progress", "Embedding");
  readonly el: HTMLElement;
  private readonly modelSelect = h("select", { id: "model-select", "data-testid": "model-select" });
  private readonly modelHint = h("div", { id: "model-hint", "data-testid": "model-hint", class: "muted hint" });
  private readonly startButton = h("button", { id: "start-embedding-button", "data-testid": "start-embedding-button", type: "button", disabled: true }, "Start embedding");
  private readonly cancelButton = h("button", { id: "cancel-embedding-button", "data-testid": "cancel-embedding-button", type: "button", class: "secondary", hidden: true }, "Cancel embedding");
  private readonly vectorSelect = h("select", { id: "vector-columns", "data-testid": "vector-columns", multiple: true, size: 4, "aria-label": "Vector columns" });
  private readonly vectorBlock = h(
    "div",
    { id: "vector-block", hidden: true },
    h("label", {}, "Vector column(s) ", this.vectorSelect),
    h("div", { class: "muted hint" }, "One column of lists of numbers, or several numeric columns (one number of the vector each). The checked text columns, if any, show on hover and name the clusters. Search by meaning needs a model, so maps of these vectors offer neighbours and text search instead."),
  );
  private models: Model[] = [];
  private vectorChoices = { lists: [] as string[], numbers: [] as string[] };

  /** `onStart` gets what to embed when the user starts an embedding. */
  constructor(act: ScreenContext["act"], onStart: (request: EmbeddingRequest) => Promise<void>) {
    const { picker } = this;
    this.bar.el.hidden = true;
    this.el = h(
      "section",
      { class: "panel-block", id: "embed-section" },
      h("h2", {}, "1. Text to embed"),
      picker.columnsBox,
      h("label", {}, "Template ", picker.templateInput),
      h("div", { class: "muted hint" }, "Without a template the checked columns are joined with a new line; {column} placeholders say what is embedded."),
      picker.templateError,
      h("div", { class: "preview-box" }, h("div", { class: "progress-label" }, "Preview of the first rows' texts"), picker.preview),
      h("label", {}, "Model ", this.modelSelect),
      this.modelHint,
      this.vectorBlock,
      h("div", { class: "row" }, this.startButton, this.cancelButton),
      this.bar.el,
    );
    this.modelSelect.addEventListener("change", () => this.describeModel());
    this.startButton.addEventListener("click", () => act(this.startButton, async () => onStart(this.request())));
  }

  /** What to embed: the text with a model, or the chosen vector columns (text optional). */
  private request(): EmbeddingRequest {
    if (this.modelSelect.value !== IMPORTED) return { model: this.modelSelect.value, ...this.picker.choice(), vectorColumns: [] };
    const vectorColumns = [...this.vectorSelect.selectedOptions].map((o) => o.value);
    if (!vectorColumns.length) throw new Error("choose the column(s) that hold the vectors");
    const checked = [...this.picker.columnsBox.querySelectorAll<HTMLInputElement>("input[name=text-column]:checked")].map((i) => i.value);
    return { model: "", textColumns: checked.filter((c) => !vectorColumns.includes(c)), template: "", vectorColumns };
  }

  /** The dataset's columns: those that can hold vectors are offered ("Vectors in the table"). */
  setColumns(columns: Column[]): void {
    this.vectorChoices = vectorColumnChoices(columns);
    const { lists, numbers } = this.vectorChoices;
    this.vectorSelect.replaceChildren(...[...lists, ...numbers].map((name, i) => h("option", { value: name, selected: i === 0 && lists.length > 0 }, name)));
  }

  /** Fills the model picker (the default model chosen); an error leaves "server default". */
  async loadModels(signal: AbortSignal, onError: (err: unknown) => void): Promise<void> {
    try {
      this.models = (await embedding.listModels({}, { signal })).models;
      this.modelSelect.replaceChildren(...this.models.map((m) => h("option", { value: m.name, selected: m.default }, modelOptionLabel(m))));
      if (!this.models.length) this.modelSelect.append(h("option", { value: "" }, "server default"));
    } catch (err) {
      this.modelSelect.replaceChildren(h("option", { value: "" }, "server default"));
      onError(err);
    }
    const { lists, numbers } = this.vectorChoices;
    if (lists.length || numbers.length >= 2) this.modelSelect.append(h("option", { value: IMPORTED }, "none: vectors already in the table"));
    this.describeModel();
  }

  private describeModel(): void {
    const imported = this.modelSelect.value === IMPORTED;
    this.vectorBlock.hidden = !imported;
    const m = this.models.find((x) => x.name === this.modelSelect.value);
    this.modelHint.textContent = imported ? "no model: each row's own vector, as the file has it" : m ? modelHintText(m) : "the server's default model";
  }

  /** Start embedding can be clicked (not for a viewer, nor while an embedding runs). */
  enable(canWrite: boolean): void {
    this.startButton.disabled = !canWrite;
  }

  /** An embedding runs: its progress shows, Cancel calls `cancel`, Start waits for it. */
  following(job: Job | undefined, canWrite: boolean, act: ScreenContext["act"], cancel: () => Promise<Job | undefined>): void {
    this.bar.el.hidden = false;
    this.bar.setJob(job);
    this.cancelButton.hidden = false;
    this.cancelButton.disabled = !canWrite;
    this.startButton.disabled = true;
    this.startButton.title = "An embedding of this dataset is running; cancel it or wait for it to finish";
    this.cancelButton.onclick = () => void act(this.cancelButton, async () => this.bar.setJob(await cancel()));
  }

  /** The running embedding ended. */
  idle(canWrite: boolean): void {
    this.cancelButton.hidden = true;
    this.startButton.disabled = !canWrite;
    this.startButton.title = "";
  }

  /** Adds a note to the finished bar's text. */
  noteOnBar(note: string): void {
    this.bar.set(1, `${this.bar.el.querySelector(".progress-text")?.textContent ?? ""} · ${note}`, "succeeded");
  }

  readOnly(): void {
    lockForViewer(this.startButton);
    lockForViewer(this.cancelButton);
  }
}
