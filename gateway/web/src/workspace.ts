// The workspace of a dataset: the map in the centre, panels around it (data and jobs on
// the left, legend/filters/details on the right, the linked table below), all rendered
// from one view store whose state the URL carries. Jobs of the dataset that are running
// when it opens are followed again (a reload loses nothing); a finished one is usable at
// once; a failed one shows its message and a Retry.

import { embedding, errorMessage, ingest, projection } from "./api";
import type { ScreenContext } from "./account";
import { byId, confirmButton, formatBytes, formatCount, h } from "./dom";
import type { Embedding, Model } from "./gen/embedviz/v1/embedding_pb";
import { Role, type Column, type Dataset } from "./gen/embedviz/v1/ingest_pb";
import { ClusterAlgorithm, ProjectionMethod, type Projection } from "./gen/embedviz/v1/projection_pb";
import { followJob, isTerminal, JobState, ProgressBar } from "./jobs";
import { forgetMapPositions, showMap } from "./map";
import { show3d } from "./view3d";
import { dataTable, valueOf } from "./table";
import { cellText, columnsForTemplate, renderText } from "./template";
import { uploadFile } from "./upload";
import { viewToHash, ViewStore, type ViewState } from "./viewstate";

export interface WorkspaceContext extends ScreenContext {
  clearError: () => void;
  /** Registers what tears the screen down when the route changes. */
  onTeardown: (fn: () => void) => void;
}

function sortColumns(columns: Column[]): Column[] {
  const isText = (c: Column) => /string|utf8|large_string/i.test(c.type);
  return [...columns].sort((a, b) => Number(b.suggested) - Number(a.suggested) || Number(isText(b)) - Number(isText(a)));
}

/** "12 nulls · avg 84 chars · 97% distinct" for the schema view. */
function columnStats(c: Column, rows: number): string {
  const parts: string[] = [];
  const nulls = Number(c.nullCount);
  parts.push(nulls ? `${formatCount(nulls)} null${nulls === 1 ? "" : "s"}${rows ? ` (${Math.round((100 * nulls) / rows)}%)` : ""}` : "no nulls");
  if (c.meanLength) parts.push(`avg ${Math.round(c.meanLength)} chars`);
  if (c.distinctRatio) parts.push(`${Math.round(c.distinctRatio * 100)}% distinct`);
  return parts.join(" · ");
}

/** Size and a rough speed hint for a model. */
function modelHintText(m: Model): string {
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

const newestFirst = <T extends { createTime?: { seconds: bigint } }>(a: T, b: T) => Number((b.createTime?.seconds ?? 0n) - (a.createTime?.seconds ?? 0n));
const stateWord = (s: JobState | undefined) => JobState[s ?? 0]?.toLowerCase() ?? "";

export async function renderWorkspace(ctx: WorkspaceContext, initial: ViewState): Promise<void> {
  const { app, signal, act, showError, clearError } = ctx;
  const datasetName = initial.dataset;
  const projectName = initial.project;
  const store = new ViewStore(initial);
  // The URL follows the view (replaceState: no new history entry, no re-route).
  const unsync = store.subscribe((s) => {
    const hash = viewToHash(s);
    if (location.hash !== hash) history.replaceState(null, "", hash);
  });
  ctx.onTeardown(unsync);

  // ---------- the frame ----------
  const title = h("h1", { id: "dataset-title" }, "Dataset");
  const summary = h("span", { class: "muted", id: "dataset-summary" });
  const toolbar = h("div", { id: "map-toolbar", class: "map-toolbar" });
  const toggle = (id: string, label: string, panel: string) => {
    const b = h("button", { id, type: "button", class: "secondary toggle", "aria-pressed": "true", "data-panel": panel, title: `Show or hide the ${label.toLowerCase()} panel` }, label);
    b.addEventListener("click", () => setPanel(panel, ws.dataset[panel] === "closed"));
    return b;
  };
  const bar = h(
    "div",
    { class: "ws-bar" },
    h("nav", { class: "crumbs" }, h("a", { href: "#/projects" }, "Projects"), " / ", h("a", { href: `#/${projectName}?datasets`, id: "project-link" }, "Project"), " / "),
    title,
    summary,
    toolbar,
    h("div", { class: "ws-toggles" }, toggle("toggle-data", "Data", "data"), toggle("toggle-side", "Legend", "side"), toggle("toggle-table", "Table", "table")),
  );
  const dataPanel = h("aside", { id: "panel-data", "data-testid": "panel-data", class: "ws-panel ws-left" });
  const stage = h("div", { id: "map-host", "data-testid": "map-host", class: "map-stage" });
  const stateBar = new ProgressBar("job-progress", "Working");
  const stateText = h("p", { id: "map-state-text" });
  const retryButton = h("button", { id: "retry-button", "data-testid": "retry-button", type: "button", hidden: true }, "Retry");
  const mapState = h("div", { id: "map-state", "data-testid": "map-state", class: "map-state", "data-state": "loading" }, h("div", { class: "map-state-box" }, stateText, stateBar.el, retryButton));
  const center = h("section", { id: "map-section", class: "ws-map" }, stage, mapState);
  const side = h("aside", { id: "panel-side", "data-testid": "panel-side", class: "ws-panel ws-right" }, h("p", { class: "muted" }, "The legend, filters and a point's details appear here once a map is open."));
  const linkedHost = h("div", { id: "linked-host" });
  const rowsHost = h("div", { id: "data-table-host", "data-testid": "data-table-host", hidden: true });
  const tabLinked = h("button", { type: "button", class: "tab", id: "tab-linked", "aria-selected": "true" }, "Selected / filtered rows");
  const tabRows = h("button", { type: "button", class: "tab", id: "tab-rows", "aria-selected": "false" }, "All rows");
  const tablePanel = h("section", { id: "panel-table", "data-testid": "panel-table", class: "ws-table" }, h("div", { class: "tabs" }, tabLinked, tabRows), linkedHost, rowsHost);
  const ws = h("div", { id: "workspace", "data-testid": "workspace", class: "workspace" }, bar, dataPanel, center, side, tablePanel);
  const setPanel = (panel: string, open: boolean) => {
    ws.dataset[panel] = open ? "open" : "closed";
    bar.querySelector(`[data-panel=${panel}]`)?.setAttribute("aria-pressed", String(open));
    window.dispatchEvent(new Event("resize"));
  };
  const showTab = (which: "linked" | "rows") => {
    linkedHost.hidden = which !== "linked";
    rowsHost.hidden = which !== "rows";
    tabLinked.setAttribute("aria-selected", String(which === "linked"));
    tabRows.setAttribute("aria-selected", String(which === "rows"));
  };
  tabLinked.addEventListener("click", () => showTab("linked"));
  tabRows.addEventListener("click", () => showTab("rows"));
  app.replaceChildren(ws);
  setPanel("data", true);
  setPanel("side", true);
  setPanel("table", true);
  showTab("rows");

  const setState = (state: "loading" | "empty" | "running" | "failed" | "ready", text = "", onRetry?: () => void) => {
    mapState.dataset.state = state;
    mapState.hidden = state === "ready";
    stateText.textContent = text;
    stateBar.el.hidden = state !== "running";
    retryButton.hidden = !onRetry;
    retryButton.onclick = onRetry ? () => void act(retryButton, async () => onRetry()) : null;
  };
  setState("loading", "Loading…");

  // ---------- data & jobs panel ----------
  const importBar = new ProgressBar("import-progress", "Import");
  const columnsBox = h("div", { id: "column-list", "data-testid": "column-list", class: "columns" });
  const modelSelect = h("select", { id: "model-select", "data-testid": "model-select" });
  const embedButton = h("button", { id: "start-embedding-button", "data-testid": "start-embedding-button", type: "button", disabled: true }, "Start embedding");
  const embedBar = new ProgressBar("embedding-progress", "Embedding");
  const cancelEmbedButton = h("button", { id: "cancel-embedding-button", "data-testid": "cancel-embedding-button", type: "button", class: "secondary", hidden: true }, "Cancel embedding");
  const cancelProjectionButton = h("button", { id: "cancel-projection-button", "data-testid": "cancel-projection-button", type: "button", class: "secondary", hidden: true }, "Cancel map");
  const modelHint = h("div", { id: "model-hint", "data-testid": "model-hint", class: "muted hint" });
  const templateInput = h("input", { id: "template-input", "data-testid": "template-input", type: "text", placeholder: "optional, e.g. {title}: {body}" });
  const templateError = h("div", { id: "template-error", "data-testid": "template-error", class: "inline-error", hidden: true });
  const preview = h("ol", { id: "template-preview", "data-testid": "template-preview", class: "preview" });
  const embeddingSelect = h("select", { id: "embedding-select", "data-testid": "embedding-select", "aria-label": "Embedding to map" });
  const methodSelect = h("select", { id: "projection-method", "data-testid": "projection-method" }, h("option", { value: String(ProjectionMethod.UMAP) }, "UMAP"), h("option", { value: String(ProjectionMethod.PCA) }, "PCA"), h("option", { value: String(ProjectionMethod.TSNE) }, "t-SNE"));
  const dimSelect = h("select", { id: "projection-dimensions", "data-testid": "projection-dimensions", "aria-label": "Dimensions" }, h("option", { value: "2" }, "2-D"), h("option", { value: "3" }, "3-D"));
  const kInput = h("input", { id: "cluster-k", "data-testid": "cluster-k", type: "number", min: 1, max: 200, placeholder: "auto" });
  const projectButton = h("button", { id: "start-projection-button", "data-testid": "start-projection-button", type: "button", disabled: true }, "Create map");
  const projectionBar = new ProgressBar("projection-progress", "Projection");
  const previous = h("ul", { id: "previous-maps", "data-testid": "previous-maps", class: "list" });
  const readOnlyNote = h("p", { id: "read-only-note", "data-testid": "read-only-note", class: "notice", hidden: true });
  embedBar.el.hidden = true;
  projectionBar.el.hidden = true;
  importBar.el.hidden = true;

  const deleteDataset = confirmButton({ id: "delete-dataset-button", "data-testid": "delete-dataset-button" }, "Delete this dataset", () => `Delete “${title.textContent}” with its rows, embeddings and maps? Click again`, (b) =>
    void act(b, async () => {
      await ingest.deleteDataset({ name: datasetName });
      location.hash = `#/${projectName}?datasets`;
    }),
  );
  const uploadInput = h("input", { id: "upload-more-input", type: "file", accept: ".csv,.tsv,.parquet,.jsonl,.ndjson,.arrow,.feather", hidden: true });
  const uploadBar = new ProgressBar("upload-progress", "Upload");
  uploadBar.el.hidden = true;
  const embedSection = h(
    "section",
    { class: "panel-block", id: "embed-section" },
    h("h2", {}, "1. Text to embed"),
    columnsBox,
    h("label", {}, "Template ", templateInput),
    h("div", { class: "muted hint" }, "Without a template the checked columns are joined with a new line; {column} placeholders say what is embedded."),
    templateError,
    h("div", { class: "preview-box" }, h("div", { class: "progress-label" }, "Preview of the first rows' texts"), preview),
    h("label", {}, "Model ", modelSelect),
    modelHint,
    h("div", { class: "row" }, embedButton, cancelEmbedButton),
    embedBar.el,
  );
  const projectSection = h(
    "section",
    { class: "panel-block", id: "projection-section", hidden: true },
    h("h2", {}, "2. Map"),
    h("label", {}, "Embedding ", embeddingSelect),
    h("div", { class: "row" }, h("label", {}, "Method ", methodSelect), h("label", {}, "View ", dimSelect), h("label", {}, "Clusters ", kInput)),
    h("div", { class: "row" }, projectButton, cancelProjectionButton),
    projectionBar.el,
  );
  dataPanel.append(
    readOnlyNote,
    h("section", { class: "panel-block" }, importBar.el, h("label", { class: "inline muted small", for: "upload-more-input" }, h("a", { href: `#/${projectName}?datasets` }, "Other datasets and uploads")), uploadInput, uploadBar.el),
    embedSection,
    projectSection,
    h("section", { class: "panel-block" }, h("h2", {}, "Maps of this dataset"), previous),
    h("section", { class: "panel-block", id: "dataset-danger" }, deleteDataset),
  );

  ingest
    .getProject({ name: projectName }, { signal })
    .then((p) => {
      byId("project-link").textContent = p.displayName || p.name;
      if (p.role === Role.VIEWER) {
        // A viewer reads and exports; every write control says why it is off.
        readOnlyNote.hidden = false;
        readOnlyNote.textContent = "You are a viewer of this project: you can explore and export, not embed or make maps.";
        deleteDataset.hidden = true;
        for (const el of ws.querySelectorAll("[data-testid=delete-embedding], [data-testid=delete-projection]")) el.remove();
        for (const b of [embedButton, projectButton, cancelEmbedButton, cancelProjectionButton, retryButton]) {
          b.disabled = true;
          b.title = "Viewers cannot change this project";
          b.dataset.readOnly = "true";
        }
        ws.dataset.readOnly = "true";
      }
    })
    .catch(() => {
      /* the crumb keeps its generic name */
    });

  let dataset: Dataset = await ingest.getDataset({ name: datasetName }, { signal });
  const describe = (d: Dataset) => {
    title.textContent = d.displayName || d.sourceFilename || d.name;
    summary.textContent = `${formatCount(d.rowCount)} rows · ${d.columns.length} columns · ${formatBytes(d.sizeBytes)}`;
    summary.dataset.rows = String(d.rowCount);
  };
  describe(dataset);
  importBar.setJob(dataset.job);
  if (dataset.job?.state !== JobState.SUCCEEDED) {
    importBar.el.hidden = false;
    setState("running", "Importing the dataset…");
    stateBar.setJob(dataset.job);
    const last = await followJob(
      () => ingest.watchDataset({ name: datasetName }, { signal }),
      (m) => m.dataset?.job,
      (m) => {
        importBar.setJob(m.dataset?.job);
        stateBar.setJob(m.dataset?.job);
        if (m.dataset) describe(m.dataset);
      },
    );
    if (last.dataset) dataset = last.dataset;
    if (dataset.job?.state !== JobState.SUCCEEDED) {
      setState("failed", `This dataset's import ${dataset.job?.state === JobState.CANCELLED ? "was cancelled" : `failed: ${dataset.job?.error || "no reason given"}`}. Upload the file again from the project page.`);
      return;
    }
  }
  // Upload another file from here: the project page has the drop zone; this is a shortcut.
  uploadInput.addEventListener("change", () => {
    const file = uploadInput.files?.[0];
    if (!file) return;
    void act(null, async () => {
      uploadBar.el.hidden = false;
      const d = await uploadFile(projectName, file, (sent, total, rate) => uploadBar.setBytes(sent, total, rate), () => {});
      location.hash = `#/${d.name}`;
    });
  });

  // Columns: suggested text columns first and preselected.
  const columns = sortColumns(dataset.columns);
  const anySuggested = columns.some((c) => c.suggested);
  const firstText = columns.find((c) => /string|utf8/i.test(c.type));
  columnsBox.replaceChildren(
    ...columns.map((c) =>
      h(
        "label",
        { class: `column${c.suggested ? " suggested" : ""}`, "data-testid": "column-option", "data-column": c.name },
        h("input", { type: "checkbox", name: "text-column", value: c.name, "data-testid": "text-column", checked: anySuggested ? c.suggested : c === firstText }),
        h("span", { class: "column-name" }, c.name),
        h("span", { class: "column-type" }, c.type),
        c.suggested ? h("span", { class: "badge" }, "suggested") : null,
        h("span", { class: "column-stats muted", "data-testid": "column-stats" }, columnStats(c, Number(dataset.rowCount))),
      ),
    ),
  );
  const chosenColumns = () => [...columnsBox.querySelectorAll<HTMLInputElement>("input[name=text-column]:checked")].map((i) => i.value);
  const columnTypes = new Map(dataset.columns.map((c) => [c.name, c.type]));
  dataTable(rowsHost, datasetName, signal, showError);

  let previewRows: Record<string, string>[] = [];
  const updatePreview = () => {
    const template = templateInput.value;
    templateError.hidden = true;
    templateInput.removeAttribute("aria-invalid");
    let texts: string[] = [];
    try {
      const cols = columnsForTemplate(template, chosenColumns());
      if (!cols.length) throw new Error("choose at least one text column, or write a template such as {title}: {body}");
      texts = previewRows.map((r) => renderText(template, cols, r));
    } catch (err) {
      templateError.textContent = (err as Error).message;
      templateError.hidden = false;
      templateInput.setAttribute("aria-invalid", "true");
    }
    preview.replaceChildren(...texts.map((t) => h("li", { "data-testid": "template-preview-item" }, t === "" ? h("span", { class: "muted" }, "(empty text)") : t)));
    preview.dataset.count = String(texts.length);
  };
  templateInput.addEventListener("input", updatePreview);
  columnsBox.addEventListener("change", updatePreview);
  ingest
    .listRows({ parent: datasetName, pageSize: 3 }, { signal })
    .then((res) => {
      previewRows = res.rows.map((r) => Object.fromEntries(res.columns.map((c, i) => [c, cellText(valueOf(r.values[i]), columnTypes.get(c))])));
      updatePreview();
    })
    .catch((err) => {
      if (!signal.aborted) preview.replaceChildren(h("li", { class: "muted" }, `no preview: ${errorMessage(err)}`));
    });

  let models: Model[] = [];
  const describeModel = () => {
    const m = models.find((x) => x.name === modelSelect.value);
    modelHint.textContent = m ? modelHintText(m) : "the server's default model";
  };
  modelSelect.addEventListener("change", describeModel);
  try {
    models = (await embedding.listModels({}, { signal })).models;
    modelSelect.replaceChildren(...models.map((m) => h("option", { value: m.name, selected: m.default }, `${m.displayName || m.name}${m.dimension ? ` · ${m.dimension}-d` : ""}${m.default ? " · default" : ""}`)));
    if (!models.length) modelSelect.append(h("option", { value: "" }, "server default"));
  } catch (err) {
    modelSelect.replaceChildren(h("option", { value: "" }, "server default"));
    showError(err);
  }
  describeModel();
  if (ws.dataset.readOnly !== "true") embedButton.disabled = false;

  // ---------- embeddings, maps and their jobs ----------
  const embeddings = new Map<string, Embedding>();
  const projections = new Map<string, Projection[]>();
  let mapOpen = "";
  let teardownMap: (() => void) | null = null;
  ctx.onTeardown(() => teardownMap?.());
  const canWrite = () => ws.dataset.readOnly !== "true";

  const refreshLists = () => {
    const done = [...embeddings.values()].filter((e) => e.job?.state === JobState.SUCCEEDED).sort(newestFirst);
    const chosen = embeddingSelect.value;
    embeddingSelect.replaceChildren(...done.map((e) => h("option", { value: e.name, selected: e.name === chosen }, `${e.textColumns.join(", ")}${e.template ? ` (${e.template})` : ""} · ${e.model || "default model"}`)));
    projectSection.hidden = done.length === 0;
    projectButton.disabled = done.length === 0 || !canWrite();
    const items = [...embeddings.values()].sort(newestFirst).map((e) => {
      const maps = (projections.get(e.name) ?? []).sort(newestFirst);
      const what = `${e.textColumns.join(", ")} · ${e.model || "default model"}`;
      return h(
        "li",
        { "data-testid": "embedding-item", "data-name": e.name, "data-state": stateWord(e.job?.state) },
        h(
          "div",
          { class: "row between" },
          h("span", {}, `${what} · ${stateWord(e.job?.state)}`),
          canWrite()
            ? confirmButton({ "data-testid": "delete-embedding", class: "secondary small-button", title: "Delete this embedding and its maps" }, "Delete", () => `Delete embedding “${what}” and its ${maps.length} map${maps.length === 1 ? "" : "s"}?`, (b) =>
                void act(b, async () => {
                  await embedding.deleteEmbedding({ name: e.name });
                  embeddings.delete(e.name);
                  projections.delete(e.name);
                  if (maps.some((p) => p.name === mapOpen)) location.hash = `#/${datasetName}`;
                  refreshLists();
                }),
              )
            : null,
        ),
        ...maps.map((p) =>
          h(
            "span",
            { class: "map-item" },
            h(
              "a",
              { href: `#/${p.name}`, class: `pill${p.name === mapOpen ? " current" : ""}`, "data-testid": "projection-link", "data-state": stateWord(p.job?.state) },
              `${ProjectionMethod[p.method] ?? "map"}${p.job?.state === JobState.SUCCEEDED ? "" : ` (${stateWord(p.job?.state)})`}`,
            ),
            canWrite()
              ? confirmButton({ "data-testid": "delete-projection", class: "link", title: "Delete this map" }, "×", () => `Delete this ${ProjectionMethod[p.method] ?? ""} map?`, (b) =>
                  void act(b, async () => {
                    await projection.deleteProjection({ name: p.name });
                    projections.set(e.name, (projections.get(e.name) ?? []).filter((x) => x.name !== p.name));
                    if (p.name === mapOpen) location.hash = `#/${datasetName}`;
                    refreshLists();
                  }),
                )
              : null,
          ),
        ),
      );
    });
    previous.replaceChildren(...(items.length ? items : [h("li", { class: "muted" }, "None yet.")]));
  };

  /** Every finished map of the dataset, 2-D and 3-D: switching opens the other one. */
  const mapSwitch = () => {
    const maps = [...projections.values()].flat().filter((p) => p.job?.state === JobState.SUCCEEDED).sort(newestFirst);
    const select = h(
      "select",
      { id: "map-switch", "data-testid": "map-switch", "aria-label": "Map" },
      ...maps.map((p, i) => h("option", { value: p.name, selected: p.name === mapOpen }, `${ProjectionMethod[p.method] ?? "map"} ${p.dimensions === 3 ? "3-D" : "2-D"}${maps.length > 1 ? ` #${maps.length - i}` : ""}`)),
    );
    select.addEventListener("change", () => (location.hash = `#/${select.value}`));
    return select;
  };

  const openMap = async (emb: Embedding, proj: Projection) => {
    teardownMap?.();
    teardownMap = null;
    mapOpen = proj.name;
    const keepView = store.get().projection === proj.name;
    store.update({ embedding: emb.name, projection: proj.name, ...(keepView ? {} : { camera: null, selection: [], focus: -1, hidden: [], search: { query: "", column: "" } }) });
    setState("ready");
    setPanel("data", false);
    showTab("linked");
    refreshLists();
    if (proj.dimensions === 3) {
      forgetMapPositions();
      toolbar.replaceChildren(mapSwitch());
      linkedHost.replaceChildren();
      teardownMap = await show3d({ projectionName: proj.name, datasetName, textColumns: emb.textColumns, stage, side, onError: showError });
      return;
    }
    teardownMap = await showMap({ store, projectionName: proj.name, datasetName, textColumns: emb.textColumns, columns: dataset.columns, stage, toolbar, side, table: linkedHost, onError: showError, onClearError: clearError });
    toolbar.prepend(mapSwitch());
  };

  const retryEmbedding = (emb: Embedding) => async () => {
    const again = await embedding.createEmbedding({ parent: datasetName, embedding: { model: emb.model, textColumns: emb.textColumns, template: emb.template } });
    void runEmbedding(again);
  };
  const retryProjection = (proj: Projection) => async () => {
    const parent = proj.name.split("/projections/")[0];
    const again = await projection.createProjection({ parent, projection: { method: proj.method, dimensions: proj.dimensions || 2, clustering: proj.clustering } });
    const emb = embeddings.get(parent);
    if (emb) void runProjection(emb, again);
  };

  const runEmbedding = async (emb: Embedding) => {
    embeddings.set(emb.name, emb);
    refreshLists();
    embedBar.el.hidden = false;
    embedBar.setJob(emb.job);
    cancelEmbedButton.hidden = false;
    cancelEmbedButton.disabled = !canWrite();
    // One embedding at a time from this form: its progress is right here.
    embedButton.disabled = true;
    embedButton.title = "An embedding of this dataset is running; cancel it or wait for it to finish";
    cancelEmbedButton.onclick = () => void act(cancelEmbedButton, async () => embedBar.setJob((await embedding.cancelEmbedding({ name: emb.name })).job));
    if (!mapOpen) {
      setState("running", "Embedding the texts; the map comes next.");
      stateBar.setJob(emb.job);
    }
    try {
      const last = await followJob(
        () => embedding.watchEmbedding({ name: emb.name }, { signal }),
        (m) => m.embedding?.job,
        (m) => {
          embedBar.setJob(m.embedding?.job);
          if (!mapOpen) stateBar.setJob(m.embedding?.job);
        },
      );
      const done = last.embedding ?? emb;
      embeddings.set(done.name, done);
      const state = done.job?.state;
      if (state === JobState.SUCCEEDED) {
        if (done.truncatedCount > 0n) embedBar.set(1, `${embedBar.el.querySelector(".progress-text")?.textContent ?? ""} · ${formatCount(done.truncatedCount)} texts cut at the model's limit`, "succeeded");
        embeddingSelect.value = done.name;
        refreshLists();
        embeddingSelect.value = done.name;
        if (!mapOpen) setState("empty", "The embedding is ready: choose a method and create a map in the Data & jobs panel.");
        setPanel("data", true);
        if (canWrite()) projectButton.focus();
      } else if (!mapOpen) {
        if (state === JobState.CANCELLED) setState("empty", "The embedding was cancelled. Start it again from the Data & jobs panel.");
        else setState("failed", `The embedding failed: ${done.job?.error || "no reason given"}`, canWrite() ? retryEmbedding(done) : undefined);
      }
      refreshLists();
    } finally {
      cancelEmbedButton.hidden = true;
      embedButton.disabled = !canWrite();
      embedButton.title = "";
    }
  };

  const runProjection = async (emb: Embedding, proj: Projection) => {
    const list = (projections.get(emb.name) ?? []).filter((p) => p.name !== proj.name);
    projections.set(emb.name, [...list, proj]);
    refreshLists();
    projectionBar.el.hidden = false;
    projectionBar.setJob(proj.job);
    cancelProjectionButton.hidden = false;
    cancelProjectionButton.disabled = !canWrite();
    cancelProjectionButton.onclick = () => void act(cancelProjectionButton, async () => projectionBar.setJob((await projection.cancelProjection({ name: proj.name })).job));
    if (!mapOpen) {
      setState("running", "Making the map…");
      stateBar.setJob(proj.job);
    }
    try {
      const last = await followJob(
        () => projection.watchProjection({ name: proj.name }, { signal }),
        (m) => m.projection?.job,
        (m) => {
          projectionBar.setJob(m.projection?.job);
          if (!mapOpen) stateBar.setJob(m.projection?.job);
        },
      );
      const done = last.projection ?? proj;
      projections.set(emb.name, [...(projections.get(emb.name) ?? []).filter((p) => p.name !== done.name), done]);
      refreshLists();
      const state = done.job?.state;
      if (state === JobState.SUCCEEDED) await openMap(emb, done);
      else if (!mapOpen) {
        if (state === JobState.CANCELLED) setState("empty", "The map was cancelled. Create one from the Data & jobs panel.");
        else setState("failed", `The map failed: ${done.job?.error || "no reason given"}`, canWrite() ? retryProjection(done) : undefined);
      }
    } finally {
      cancelProjectionButton.hidden = true;
    }
  };

  embedButton.addEventListener("click", () =>
    act(embedButton, async () => {
      const template = templateInput.value.trim();
      const textColumns = columnsForTemplate(template, chosenColumns());
      if (!textColumns.length) throw new Error("choose at least one text column to embed, or write a template");
      const emb = await embedding.createEmbedding({ parent: datasetName, embedding: { model: modelSelect.value, textColumns, template } });
      await runEmbedding(emb);
    }),
  );
  projectButton.addEventListener("click", () =>
    act(projectButton, async () => {
      const emb = embeddings.get(embeddingSelect.value);
      if (!emb) throw new Error("embed the dataset first");
      const k = Number.parseInt(kInput.value, 10);
      const proj = await projection.createProjection({
        parent: emb.name,
        projection: { method: Number(methodSelect.value) as ProjectionMethod, dimensions: Number(dimSelect.value), clustering: { algorithm: ClusterAlgorithm.KMEANS, k: Number.isFinite(k) && k > 0 ? k : 0 } },
      });
      mapOpen = "";
      teardownMap?.();
      teardownMap = null;
      await runProjection(emb, proj);
    }),
  );

  // What exists: every embedding and its maps; running jobs are followed again.
  const embs = (await embedding.listEmbeddings({ parent: datasetName, pageSize: 100 }, { signal })).embeddings.sort(newestFirst);
  for (const e of embs) embeddings.set(e.name, e);
  await Promise.all(
    embs
      .filter((e) => e.job?.state === JobState.SUCCEEDED)
      .map(async (e) => projections.set(e.name, (await projection.listProjections({ parent: e.name, pageSize: 100 }, { signal })).projections)),
  );
  refreshLists();
  const wanted = initial.embedding ? embeddings.get(initial.embedding) : undefined;
  if (wanted) {
    for (const input of columnsBox.querySelectorAll<HTMLInputElement>("input[name=text-column]")) input.checked = wanted.textColumns.includes(input.value);
    templateInput.value = wanted.template;
    updatePreview();
    if (wanted.job?.state === JobState.SUCCEEDED) embeddingSelect.value = wanted.name;
  }
  const running = <T extends { job?: { state: JobState } }>(x: T) => !isTerminal(x.job?.state);
  for (const e of embs.filter(running)) void runEmbedding(e).catch((err) => signal.aborted || showError(err));
  for (const e of embs) for (const p of (projections.get(e.name) ?? []).filter(running)) void runProjection(e, p).catch((err) => signal.aborted || showError(err));

  // Which map to show: the link's, else the newest finished one.
  const allMaps = embs.flatMap((e) => (projections.get(e.name) ?? []).map((p) => ({ e, p }))).sort((a, b) => newestFirst(a.p, b.p));
  const linked = initial.projection ? allMaps.find(({ p }) => p.name === initial.projection) : undefined;
  if (initial.projection && !linked) throw new Error(`map ${initial.projection} not found`);
  const toOpen = linked?.p.job?.state === JobState.SUCCEEDED ? linked : linked ? undefined : allMaps.find(({ p }) => p.job?.state === JobState.SUCCEEDED);
  if (toOpen) {
    await openMap(toOpen.e, toOpen.p);
    return;
  }
  if (embs.some(running) || allMaps.some(({ p }) => running(p))) return; // their progress is in the centre
  const failed = linked?.p ?? allMaps[0]?.p;
  if (failed && failed.job?.state === JobState.FAILED) {
    setState("failed", `The map failed: ${failed.job.error || "no reason given"}`, canWrite() ? retryProjection(failed) : undefined);
  } else if (embs[0]?.job?.state === JobState.FAILED) {
    setState("failed", `The embedding failed: ${embs[0].job.error || "no reason given"}`, canWrite() ? retryEmbedding(embs[0]) : undefined);
  } else if (embs.some((e) => e.job?.state === JobState.SUCCEEDED)) {
    setState("empty", "No map yet: choose a method and create one in the Data & jobs panel.");
  } else {
    setState("empty", `No map yet. Choose the text to embed in the Data & jobs panel and start embedding.`);
  }
}
