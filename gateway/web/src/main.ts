// embedviz web client: screens and routing (location.hash holds the resource name).

import "./style.css";
import { auth, embedding, errorMessage, ingest, projection, setSignedOutHandler } from "./api";
import { byId, formatBytes, formatCount, h } from "./dom";
import type { Embedding } from "./gen/embedviz/v1/embedding_pb";
import type { Column, Dataset } from "./gen/embedviz/v1/ingest_pb";
import { ClusterAlgorithm, ProjectionMethod, type Projection } from "./gen/embedviz/v1/projection_pb";
import { followJob, JobState, ProgressBar } from "./jobs";
import { showMap } from "./map";
import { clearSession, loadSession, saveSession } from "./session";
import { uploadFile } from "./upload";

const app = byId("app");
let screenAbort = new AbortController();
let teardownMap: (() => void) | null = null;
let pendingNotice = "";

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
  clearError();
  if (button) button.disabled = true;
  try {
    await work();
  } catch (err) {
    if ((err as Error)?.name === "AbortError" || screenAbort.signal.aborted) return;
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
    go("#/projects");
  };
  const form = h(
    "form",
    { id: "auth-form", "data-testid": "auth-form", class: "card narrow" },
    h("h1", {}, "Sign in to embedviz"),
    pendingNotice ? h("p", { class: "notice", id: "auth-notice" }, pendingNotice) : null,
    h("label", {}, "Email", email),
    h("label", {}, "Password (at least 10 characters)", password),
    h("label", {}, "Display name", displayName),
    h("div", { class: "row" }, loginButton, signupButton),
  );
  pendingNotice = "";
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
        const dataset = await uploadFile(projectName, file, (sent, total, rate) => uploadBar.setBytes(sent, total, rate));
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
    h("nav", { class: "crumbs" }, h("a", { href: "#/projects" }, "Projects")),
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
  const methodSelect = h(
    "select",
    { id: "projection-method", "data-testid": "projection-method" },
    h("option", { value: String(ProjectionMethod.UMAP) }, "UMAP"),
    h("option", { value: String(ProjectionMethod.PCA) }, "PCA"),
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
    h("label", {}, "Model ", modelSelect),
    h("div", { class: "row" }, embedButton),
    embedBar.el,
  );
  const projectSection = h(
    "section",
    { class: "card", id: "projection-section", hidden: true },
    h("h2", {}, "2. Map"),
    h("div", { class: "row" }, h("label", {}, "Method ", methodSelect), h("label", {}, "Clusters (k-means) ", kInput), projectButton),
    projectionBar.el,
  );
  app.replaceChildren(
    h("nav", { class: "crumbs" }, h("a", { href: "#/projects" }, "Projects"), " / ", h("a", { href: `#/${projectName}`, id: "project-link" }, "Project")),
    h("section", { class: "card" }, title, summary, importBar.el),
    embedSection,
    projectSection,
    h("section", { class: "card map-card" }, mapHost),
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
        c.meanLength ? h("span", { class: "muted" }, ` avg ${Math.round(c.meanLength)} chars`) : null,
      ),
    ),
  );
  const chosenColumns = () => [...columnsBox.querySelectorAll<HTMLInputElement>("input[name=text-column]:checked")].map((i) => i.value);

  // Models.
  try {
    const models = await embedding.listModels({}, { signal });
    modelSelect.replaceChildren(
      ...models.models.map((m) => h("option", { value: m.name, selected: m.default }, `${m.displayName || m.name}${m.dimension ? ` (${m.dimension}-d)` : ""}`)),
    );
    if (!models.models.length) modelSelect.append(h("option", { value: "" }, "server default"));
  } catch (err) {
    modelSelect.replaceChildren(h("option", { value: "" }, "server default"));
    showError(err);
  }
  embedButton.disabled = false;

  let currentEmbedding: Embedding | undefined;

  const openMap = async (emb: Embedding, proj: Projection) => {
    teardownMap?.();
    teardownMap = null;
    history.replaceState(null, "", `#/${proj.name}`);
    mapHost.scrollIntoView({ block: "start" });
    teardownMap = await showMap(mapHost, { projectionName: proj.name, datasetName, textColumns: emb.textColumns });
  };

  const runProjection = async (emb: Embedding, proj: Projection) => {
    projectionBar.el.hidden = false;
    projectionBar.setJob(proj.job);
    const last = await followJob(
      () => projection.watchProjection({ name: proj.name }, { signal }),
      (m) => m.projection?.job,
      (m) => projectionBar.setJob(m.projection?.job),
    );
    const done = last.projection ?? proj;
    if (done.job?.state !== JobState.SUCCEEDED) throw new Error(`projection ${done.job?.state === JobState.CANCELLED ? "was cancelled" : `failed: ${done.job?.error || "no reason given"}`}`);
    await openMap(emb, done);
  };

  const runEmbedding = async (emb: Embedding) => {
    currentEmbedding = emb;
    embedBar.el.hidden = false;
    embedBar.setJob(emb.job);
    const last = await followJob(
      () => embedding.watchEmbedding({ name: emb.name }, { signal }),
      (m) => m.embedding?.job,
      (m) => embedBar.setJob(m.embedding?.job),
    );
    const done = last.embedding ?? emb;
    currentEmbedding = done;
    if (done.job?.state !== JobState.SUCCEEDED) throw new Error(`embedding ${done.job?.state === JobState.CANCELLED ? "was cancelled" : `failed: ${done.job?.error || "no reason given"}`}`);
    projectSection.hidden = false;
    projectButton.disabled = false;
    projectButton.focus();
  };

  embedButton.addEventListener("click", () =>
    act(embedButton, async () => {
      const textColumns = chosenColumns();
      if (!textColumns.length) throw new Error("choose at least one text column to embed");
      projectSection.hidden = true;
      const emb = await embedding.createEmbedding({ parent: datasetName, embedding: { model: modelSelect.value, textColumns } });
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

async function route(): Promise<void> {
  screenAbort.abort();
  screenAbort = new AbortController();
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
    if (screenAbort.signal.aborted) return;
    showError(err);
  }
}

setSignedOutHandler((message) => {
  pendingNotice = message;
  go("#/login");
});
window.addEventListener("hashchange", () => void route());
void route();
