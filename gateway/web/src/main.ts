// embedviz web client: screens and routing (location.hash holds the resource name).

import "./style.css";
import { auth, embedding, errorMessage, ingest, projection, setSignedOutHandler } from "./api";
import { byId, formatBytes, formatCount, formatDuration, h } from "./dom";
import type { Embedding, Model } from "./gen/embedviz/v1/embedding_pb";
import type { Column, Dataset } from "./gen/embedviz/v1/ingest_pb";
import { ClusterAlgorithm, ProjectionMethod, type Projection } from "./gen/embedviz/v1/projection_pb";
import { followJob, JobState, ProgressBar } from "./jobs";
import { showMap } from "./map";
import { clearSession, loadSession, saveSession } from "./session";
import { renderApiKeys, renderMembers, type ScreenContext } from "./account";
import { dataTable, valueOf } from "./table";
import { cellText, columnsForTemplate, renderText } from "./template";
import { uploadFile } from "./upload";

const app = byId("app");
let screenAbort = new AbortController();
let teardownMap: (() => void) | null = null;
// Why the user was signed out; shown on the login screen until they sign in again, however
// many times it renders (several calls of one screen can each end the session).
let signedOutNotice = "";

// ---------- chrome: header and error banner ----------

function showError(err: unknown): void {
  const banner = byId("error-banner");
  banner.textContent = typeof err === "string" ? err : errorMessage(err);
  banner.hidden = false;
  console.warn("embedviz:", banner.textContent);
}

function clearError(): void {
  const banner = byId("error-banner");
  banner.hidden = true;
  banner.textContent = "";
}

function renderHeader(): void {
  const s = loadSession();
  const header = byId("app-header");
  header.replaceChildren(h("a", { href: "#/projects", class: "brand", id: "home-link" }, "embedviz"));
  if (!s) return;
  header.append(
    h(
      "div",
      { class: "who" },
      h("a", { href: "#/api-keys", id: "api-keys-link", "data-testid": "api-keys-link" }, "API keys"),
      h("span", { id: "user-email", "data-testid": "user-email" }, s.displayName || s.email),
      h("button", { id: "logout-button", "data-testid": "logout-button", type: "button", onclick: logout }, "Log out"),
    ),
  );
}

async function logout(): Promise<void> {
  const s = loadSession();
  try {
    if (s) await auth.logout({ refreshToken: s.refreshToken });
  } catch {
    // The session ends here either way.
  }
  clearSession();
  go("#/login");
}

function go(hash: string): void {
  if (location.hash === hash) void route();
  else location.hash = hash;
}

/** Runs an async action, showing its error in the banner and re-enabling the button. */
async function act(button: HTMLButtonElement | null, work: () => Promise<void>): Promise<void> {
  const screen = screenAbort.signal;
  clearError();
  if (button) button.disabled = true;
  try {
    await work();
  } catch (err) {
    // An error from a screen that is gone (left, or the session ended) is not news.
    if ((err as Error)?.name === "AbortError" || screen.aborted) return;
    showError(err);
  } finally {
    if (button) button.disabled = false;
  }
}

// ---------- login / sign-up ----------

function renderLogin(): void {
  const email = h("input", { id: "auth-email", "data-testid": "auth-email", type: "email", name: "email", autocomplete: "username", required: true });
  const password = h("input", { id: "auth-password", "data-testid": "auth-password", type: "password", name: "password", autocomplete: "current-password", required: true, minlength: 10 });
  const displayName = h("input", { id: "auth-display-name", "data-testid": "auth-display-name", type: "text", name: "display_name", placeholder: "optional, for sign-up" });
  const loginButton = h("button", { id: "login-button", "data-testid": "login-button", type: "submit" }, "Log in");
  const signupButton = h("button", { id: "signup-button", "data-testid": "signup-button", type: "button", class: "secondary" }, "Sign up");

  const finish = (user: { email: string; displayName: string } | undefined, session: { accessToken: string; refreshToken: string } | undefined) => {
    if (!session?.accessToken) throw new Error("the server sent no session");
    saveSession({ accessToken: session.accessToken, refreshToken: session.refreshToken, email: user?.email ?? email.value, displayName: user?.displayName ?? "" });
    signedOutNotice = "";
    go("#/projects");
  };
  const form = h(
    "form",
    { id: "auth-form", "data-testid": "auth-form", class: "card narrow" },
    h("h1", {}, "Sign in to embedviz"),
    signedOutNotice ? h("p", { class: "notice", id: "auth-notice" }, signedOutNotice) : null,
    h("label", {}, "Email", email),
    h("label", {}, "Password (at least 10 characters)", password),
    h("label", {}, "Display name", displayName),
    h("div", { class: "row" }, loginButton, signupButton),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void act(loginButton, async () => {
      const res = await auth.login({ email: email.value.trim(), password: password.value });
      finish(res.user, res.session);
    });
  });
  signupButton.addEventListener("click", () => {
    if (!form.reportValidity()) return;
    void act(signupButton, async () => {
      const res = await auth.signUp({ email: email.value.trim(), password: password.value, displayName: displayName.value.trim() });
      finish(res.user, res.session);
    });
  });
  app.replaceChildren(form);
  email.focus();
}

// ---------- projects ----------

async function renderProjects(): Promise<void> {
  const list = h("ul", { id: "project-list", "data-testid": "project-list", class: "list" });
  const name = h("input", { id: "new-project-name", "data-testid": "new-project-name", type: "text", placeholder: "Project name", required: true });
  const create = h("button", { id: "create-project-button", "data-testid": "create-project-button", type: "submit" }, "Create project");
  const form = h("form", { id: "create-project-form", class: "row" }, name, create);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void act(create, async () => {
      const p = await ingest.createProject({ project: { displayName: name.value.trim() || "Untitled project" } });
      go(`#/${p.name}`);
    });
  });
  app.replaceChildren(h("section", { class: "card" }, h("h1", {}, "Projects"), form, list));
  const res = await ingest.listProjects({ pageSize: 1000 }, { signal: screenAbort.signal });
  list.replaceChildren(
    ...(res.projects.length
      ? res.projects.map((p) =>
          h("li", { "data-testid": "project-item", "data-name": p.name }, h("a", { href: `#/${p.name}` }, p.displayName || p.name), p.description ? h("span", { class: "muted" }, ` — ${p.description}`) : null),
        )
      : [h("li", { class: "muted", id: "no-projects" }, "No projects yet; create one above.")]),
  );
}

// ---------- project: datasets and upload ----------

async function renderProject(projectName: string): Promise<void> {
  const title = h("h1", { id: "project-title" }, "Project");
  const list = h("ul", { id: "dataset-list", "data-testid": "dataset-list", class: "list" });
  const input = h("input", { id: "upload-input", "data-testid": "upload-input", type: "file", accept: ".csv,.tsv,.parquet,.jsonl,.ndjson,.arrow,.feather" });
  const drop = h(
    "label",
    { id: "upload-dropzone", "data-testid": "upload-dropzone", class: "dropzone", for: "upload-input" },
    h("strong", {}, "Drop a CSV or Parquet file here"),
    h("span", { class: "muted" }, " or click to choose one"),
  );
  const uploadBar = new ProgressBar("upload-progress", "Upload");
  const importBar = new ProgressBar("import-progress", "Import");
  uploadBar.el.hidden = true;
  importBar.el.hidden = true;

  const start = (file: File | undefined) => {
    if (!file) return;
    const signal = screenAbort.signal;
    void act(null, async () => {
      input.disabled = true;
      uploadBar.el.hidden = false;
      try {
        const dataset = await uploadFile(
          projectName,
          file,
          (sent, total, rate) => {
            uploadBar.setBytes(sent, total, rate);
            delete uploadBar.el.dataset.retrying;
          },
          (attempt, reason, waitMs) => {
            uploadBar.el.dataset.retrying = String(attempt);
            uploadBar.el.dataset.retries = String(Number(uploadBar.el.dataset.retries ?? 0) + 1);
            uploadBar.set(Number(uploadBar.el.dataset.progress), `connection lost (${reason}); retry ${attempt} in ${formatDuration(waitMs / 1000)}, then resuming where the server stopped`, "running");
          },
        );
        importBar.el.hidden = false;
        importBar.setJob(dataset.job);
        const done = await followJob(
          () => ingest.watchDataset({ name: dataset.name }, { signal }),
          (m) => m.dataset?.job,
          (m) => importBar.setJob(m.dataset?.job),
        );
        const job = done.dataset?.job;
        if (job?.state !== JobState.SUCCEEDED) throw new Error(`import ${job?.state === JobState.CANCELLED ? "was cancelled" : `failed: ${job?.error || "no reason given"}`}`);
        go(`#/${dataset.name}`);
      } finally {
        input.disabled = false;
      }
    });
  };
  input.addEventListener("change", () => start(input.files?.[0]));
  drop.addEventListener("dragover", (ev) => {
    ev.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    start(ev.dataTransfer?.files?.[0]);
  });

  app.replaceChildren(
    h("nav", { class: "crumbs" }, h("a", { href: "#/projects" }, "Projects"), " · ", h("a", { href: `#/${projectName}/members`, id: "members-link", "data-testid": "members-link" }, "Members")),
    h("section", { class: "card" }, title, h("h2", {}, "Upload a dataset"), drop, input, uploadBar.el, importBar.el),
    h("section", { class: "card" }, h("h2", {}, "Datasets"), list),
  );
  const [project, datasets] = await Promise.all([
    ingest.getProject({ name: projectName }, { signal: screenAbort.signal }),
    ingest.listDatasets({ parent: projectName, pageSize: 1000 }, { signal: screenAbort.signal }),
  ]);
  title.textContent = project.displayName || project.name;
  list.replaceChildren(
    ...(datasets.datasets.length
      ? datasets.datasets.map((d) =>
          h(
            "li",
            { "data-testid": "dataset-item", "data-name": d.name },
            h("a", { href: `#/${d.name}` }, d.displayName || d.sourceFilename || d.name),
            h("span", { class: "muted" }, ` — ${formatCount(d.rowCount)} rows · ${formatBytes(d.sizeBytes)} · ${JobState[d.job?.state ?? 0]?.toLowerCase() ?? ""}`),
          ),
        )
      : [h("li", { class: "muted" }, "No datasets yet.")]),
  );
}

// ---------- dataset: columns, embedding, projection, map ----------

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

async function renderDataset(datasetName: string, embeddingName?: string, projectionName?: string): Promise<void> {
  const signal = screenAbort.signal;
  const projectName = datasetName.split("/datasets/")[0];
  const title = h("h1", { id: "dataset-title" }, "Dataset");
  const summary = h("p", { class: "muted", id: "dataset-summary" });
  const importBar = new ProgressBar("import-progress", "Import");
  const columnsBox = h("div", { id: "column-list", "data-testid": "column-list", class: "columns" });
  const modelSelect = h("select", { id: "model-select", "data-testid": "model-select" });
  const embedButton = h("button", { id: "start-embedding-button", "data-testid": "start-embedding-button", type: "button", disabled: true }, "Start embedding");
  const embedBar = new ProgressBar("embedding-progress", "Embedding");
  const cancelEmbedButton = h("button", { id: "cancel-embedding-button", "data-testid": "cancel-embedding-button", type: "button", class: "secondary", hidden: true }, "Cancel embedding");
  const cancelProjectionButton = h("button", { id: "cancel-projection-button", "data-testid": "cancel-projection-button", type: "button", class: "secondary", hidden: true }, "Cancel map");
  const modelHint = h("div", { id: "model-hint", "data-testid": "model-hint", class: "muted hint" });
  const templateInput = h("input", { id: "template-input", "data-testid": "template-input", type: "text", placeholder: "optional, e.g. {title}: {body} — {{ and }} are literal braces" });
  const templateError = h("div", { id: "template-error", "data-testid": "template-error", class: "inline-error", hidden: true });
  const preview = h("ol", { id: "template-preview", "data-testid": "template-preview", class: "preview" });
  const tableHost = h("div", { id: "data-table-host", "data-testid": "data-table-host" });
  const methodSelect = h(
    "select",
    { id: "projection-method", "data-testid": "projection-method" },
    h("option", { value: String(ProjectionMethod.UMAP) }, "UMAP"),
    h("option", { value: String(ProjectionMethod.PCA) }, "PCA"),
    h("option", { value: String(ProjectionMethod.TSNE) }, "t-SNE"),
  );
  const kInput = h("input", { id: "cluster-k", "data-testid": "cluster-k", type: "number", min: 1, max: 200, placeholder: "auto" });
  const projectButton = h("button", { id: "start-projection-button", "data-testid": "start-projection-button", type: "button", disabled: true }, "Create map");
  const projectionBar = new ProgressBar("projection-progress", "Projection");
  const previous = h("ul", { id: "previous-maps", "data-testid": "previous-maps", class: "list" });
  const mapHost = h("div", { id: "map-host", "data-testid": "map-host" });
  embedBar.el.hidden = true;
  projectionBar.el.hidden = true;
  importBar.el.hidden = true;

  const embedSection = h(
    "section",
    { class: "card", id: "embed-section" },
    h("h2", {}, "1. Text to embed"),
    columnsBox,
    h("label", {}, "Template ", templateInput),
    h("div", { class: "muted hint" }, "Without a template the checked columns are joined with a new line; with one, its {column} placeholders say what is embedded; empty values stay empty."),
    templateError,
    h("div", { class: "preview-box" }, h("div", { class: "progress-label" }, "Preview of the first rows' texts"), preview),
    h("label", {}, "Model ", modelSelect),
    modelHint,
    h("div", { class: "row" }, embedButton, cancelEmbedButton),
    embedBar.el,
  );
  const projectSection = h(
    "section",
    { class: "card", id: "projection-section", hidden: true },
    h("h2", {}, "2. Map"),
    h("div", { class: "row" }, h("label", {}, "Method ", methodSelect), h("label", {}, "Clusters (k-means) ", kInput), projectButton, cancelProjectionButton),
    projectionBar.el,
  );
  app.replaceChildren(
    h("nav", { class: "crumbs" }, h("a", { href: "#/projects" }, "Projects"), " / ", h("a", { href: `#/${projectName}`, id: "project-link" }, "Project")),
    h("section", { class: "card" }, title, summary, importBar.el),
    h("section", { class: "card", id: "rows-section" }, h("h2", {}, "Rows"), tableHost),
    embedSection,
    projectSection,
    h("section", { class: "card map-card", id: "map-section", hidden: true }, mapHost),
    h("section", { class: "card" }, h("h2", {}, "Earlier maps"), previous),
  );

  ingest
    .getProject({ name: projectName }, { signal })
    .then((p) => (byId("project-link").textContent = p.displayName || p.name))
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
    importBar.setJob(dataset.job);
    const last = await followJob(
      () => ingest.watchDataset({ name: datasetName }, { signal }),
      (m) => m.dataset?.job,
      (m) => {
        importBar.setJob(m.dataset?.job);
        if (m.dataset) describe(m.dataset);
      },
    );
    if (last.dataset) dataset = last.dataset;
    if (dataset.job?.state !== JobState.SUCCEEDED) throw new Error(`this dataset's import ${dataset.job?.state === JobState.CANCELLED ? "was cancelled" : `failed: ${dataset.job?.error || "no reason given"}`}`);
  }

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
  dataTable(tableHost, datasetName, signal, showError);

  // Template preview: the first rows' texts, rendered here by the backend's rules.
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
    preview.replaceChildren(
      ...texts.map((t) => h("li", { "data-testid": "template-preview-item" }, t === "" ? h("span", { class: "muted" }, "(empty text)") : t)),
    );
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

  // Models, with their size and a speed hint.
  let models: Model[] = [];
  const describeModel = () => {
    const m = models.find((x) => x.name === modelSelect.value);
    modelHint.textContent = m ? modelHintText(m) : "the server's default model";
  };
  modelSelect.addEventListener("change", describeModel);
  try {
    models = (await embedding.listModels({}, { signal })).models;
    modelSelect.replaceChildren(
      ...models.map((m) => h("option", { value: m.name, selected: m.default }, `${m.displayName || m.name}${m.dimension ? ` · ${m.dimension}-d` : ""}${m.default ? " · default" : ""}`)),
    );
    if (!models.length) modelSelect.append(h("option", { value: "" }, "server default"));
  } catch (err) {
    modelSelect.replaceChildren(h("option", { value: "" }, "server default"));
    showError(err);
  }
  describeModel();
  embedButton.disabled = false;

  let currentEmbedding: Embedding | undefined;

  const openMap = async (emb: Embedding, proj: Projection) => {
    teardownMap?.();
    teardownMap = null;
    history.replaceState(null, "", `#/${proj.name}`);
    byId("map-section").hidden = false;
    mapHost.scrollIntoView({ block: "start" });
    teardownMap = await showMap(mapHost, { projectionName: proj.name, datasetName, textColumns: emb.textColumns, columns: dataset.columns, onError: showError, onClearError: clearError });
  };

  const jobEnded = (what: string, state: JobState | undefined, error: string | undefined): boolean => {
    if (state === JobState.SUCCEEDED) return true;
    if (state === JobState.CANCELLED) return false;
    throw new Error(`${what} failed: ${error || "no reason given"}`);
  };

  const runProjection = async (emb: Embedding, proj: Projection) => {
    projectionBar.el.hidden = false;
    projectionBar.setJob(proj.job);
    cancelProjectionButton.hidden = false;
    cancelProjectionButton.onclick = () =>
      void act(cancelProjectionButton, async () => {
        projectionBar.setJob((await projection.cancelProjection({ name: proj.name })).job);
      });
    try {
      const last = await followJob(
        () => projection.watchProjection({ name: proj.name }, { signal }),
        (m) => m.projection?.job,
        (m) => projectionBar.setJob(m.projection?.job),
      );
      const done = last.projection ?? proj;
      if (jobEnded("projection", done.job?.state, done.job?.error)) await openMap(emb, done);
    } finally {
      cancelProjectionButton.hidden = true;
    }
  };

  const runEmbedding = async (emb: Embedding) => {
    currentEmbedding = emb;
    embedBar.el.hidden = false;
    embedBar.setJob(emb.job);
    cancelEmbedButton.hidden = false;
    cancelEmbedButton.onclick = () =>
      void act(cancelEmbedButton, async () => {
        embedBar.setJob((await embedding.cancelEmbedding({ name: emb.name })).job);
      });
    try {
      const last = await followJob(
        () => embedding.watchEmbedding({ name: emb.name }, { signal }),
        (m) => m.embedding?.job,
        (m) => embedBar.setJob(m.embedding?.job),
      );
      const done = last.embedding ?? emb;
      currentEmbedding = done;
      if (!jobEnded("embedding", done.job?.state, done.job?.error)) return;
      if (done.truncatedCount > 0n) embedBar.set(1, `${embedBar.el.querySelector(".progress-text")?.textContent ?? ""} · ${formatCount(done.truncatedCount)} texts cut at the model's limit`, "succeeded");
      projectSection.hidden = false;
      projectButton.disabled = false;
      projectButton.focus();
    } finally {
      cancelEmbedButton.hidden = true;
    }
  };

  embedButton.addEventListener("click", () =>
    act(embedButton, async () => {
      const template = templateInput.value.trim();
      const textColumns = columnsForTemplate(template, chosenColumns());
      if (!textColumns.length) throw new Error("choose at least one text column to embed, or write a template");
      projectSection.hidden = true;
      const emb = await embedding.createEmbedding({ parent: datasetName, embedding: { model: modelSelect.value, textColumns, template } });
      await runEmbedding(emb);
    }),
  );
  projectButton.addEventListener("click", () =>
    act(projectButton, async () => {
      if (!currentEmbedding) throw new Error("embed the dataset first");
      const k = Number.parseInt(kInput.value, 10);
      const proj = await projection.createProjection({
        parent: currentEmbedding.name,
        projection: {
          method: Number(methodSelect.value) as ProjectionMethod,
          dimensions: 2,
          clustering: { algorithm: ClusterAlgorithm.KMEANS, k: Number.isFinite(k) && k > 0 ? k : 0 },
        },
      });
      await runProjection(currentEmbedding, proj);
    }),
  );

  // Earlier embeddings and their maps.
  void (async () => {
    const embs = await embedding.listEmbeddings({ parent: datasetName, pageSize: 100 }, { signal });
    const items: HTMLElement[] = [];
    for (const e of embs.embeddings) {
      const projs = e.job?.state === JobState.SUCCEEDED ? (await projection.listProjections({ parent: e.name, pageSize: 100 }, { signal })).projections : [];
      items.push(
        h(
          "li",
          { "data-testid": "embedding-item", "data-name": e.name },
          h("span", {}, `${e.textColumns.join(", ")} · ${e.model || "default model"} · ${JobState[e.job?.state ?? 0]?.toLowerCase()}`),
          ...projs.map((p) => h("a", { href: `#/${p.name}`, class: "pill", "data-testid": "projection-link" }, `${ProjectionMethod[p.method] ?? "map"} ${p.job?.state === JobState.SUCCEEDED ? "" : `(${JobState[p.job?.state ?? 0]?.toLowerCase()})`}`)),
        ),
      );
    }
    previous.replaceChildren(...(items.length ? items : [h("li", { class: "muted" }, "None yet.")]));
  })().catch(() => {
    /* the list is a convenience; the main flow shows its own errors */
  });

  // Deep link to an embedding or a projection: resume where it is.
  if (embeddingName) {
    const emb = await embedding.getEmbedding({ name: embeddingName }, { signal });
    for (const input of columnsBox.querySelectorAll<HTMLInputElement>("input[name=text-column]")) input.checked = emb.textColumns.includes(input.value);
    templateInput.value = emb.template;
    updatePreview();
    if (emb.job?.state === JobState.SUCCEEDED) {
      currentEmbedding = emb;
      embedBar.el.hidden = false;
      embedBar.setJob(emb.job);
      projectSection.hidden = false;
      projectButton.disabled = false;
    } else {
      await runEmbedding(emb);
    }
    if (projectionName) {
      const proj = await projection.getProjection({ name: projectionName }, { signal });
      if (proj.job?.state === JobState.SUCCEEDED) {
        projectionBar.el.hidden = false;
        projectionBar.setJob(proj.job);
        await openMap(currentEmbedding ?? emb, proj);
      } else {
        await runProjection(currentEmbedding ?? emb, proj);
      }
    }
  }
}

// ---------- routing ----------

function screenContext(): ScreenContext {
  return { app, signal: screenAbort.signal, act, showError };
}

async function route(): Promise<void> {
  screenAbort.abort();
  const screen = new AbortController();
  screenAbort = screen;
  teardownMap?.();
  teardownMap = null;
  clearError();
  renderHeader();
  delete app.dataset.screen;

  const path = location.hash.replace(/^#\/?/, "").replace(/\/+$/, "");
  if (!loadSession() && path !== "login") {
    go("#/login");
    return;
  }
  const parts = path.split("/");
  try {
    if (path === "login") {
      app.dataset.screen = "login";
      renderLogin();
    } else if (path === "api-keys") {
      app.dataset.screen = "api-keys";
      await renderApiKeys(screenContext());
    } else if (parts[0] === "projects" && parts.length === 3 && parts[2] === "members") {
      app.dataset.screen = "members";
      await renderMembers(screenContext(), parts.slice(0, 2).join("/"));
    } else if (parts[0] === "projects" && parts.length === 2) {
      app.dataset.screen = "project";
      await renderProject(path);
    } else if (parts[0] === "projects" && parts[2] === "datasets" && parts.length === 4) {
      app.dataset.screen = "dataset";
      await renderDataset(path);
    } else if (parts[0] === "projects" && parts[4] === "embeddings" && (parts.length === 6 || (parts.length === 8 && parts[6] === "projections"))) {
      app.dataset.screen = "dataset";
      await renderDataset(parts.slice(0, 4).join("/"), parts.slice(0, 6).join("/"), parts.length === 8 ? path : undefined);
    } else {
      app.dataset.screen = "projects";
      if (path !== "projects") history.replaceState(null, "", "#/projects");
      await renderProjects();
    }
  } catch (err) {
    // This screen's own signal: a newer route() may already have replaced screenAbort.
    if (screen.signal.aborted) return;
    showError(err);
  }
}

setSignedOutHandler((message) => {
  // The screen's other calls fail now too; their errors must not reach the banner.
  screenAbort.abort();
  signedOutNotice = message;
  go("#/login");
});
window.addEventListener("hashchange", () => void route());
void route();
