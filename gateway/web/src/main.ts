// embedviz web client: screens and routing (location.hash holds the resource name).

import "./style.css";
import { auth, embedding, errorMessage, ingest, projection, setSignedOutHandler } from "./api";
import { byId, confirmButton, formatBytes, formatCount, formatDuration, h } from "./dom";
import { Role } from "./gen/embedviz/v1/ingest_pb";
import { followJob, JobState, ProgressBar } from "./jobs";
import { clearSession, loadSession, saveSession } from "./session";
import { renderApiKeys, renderMembers, type ScreenContext } from "./account";
import { uploadFile } from "./upload";
import { hashPath, hashToView } from "./viewstate";
import { renderWorkspace } from "./workspace";

const app = byId("app");
let screenAbort = new AbortController();
const teardowns: (() => void)[] = [];
// The link a signed-out user opened; after login they land there, not on the project list.
const RETURN_KEY = "embedviz.returnTo";
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
    const back = sessionStorage.getItem(RETURN_KEY);
    sessionStorage.removeItem(RETURN_KEY);
    go(back && back !== "#/login" ? back : "#/projects");
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
  // Rename (editors and owners) and delete (owners), each saying what it does.
  if (project.role === Role.OWNER || project.role === Role.EDITOR) {
    const nameInput = h("input", { id: "rename-project-input", "data-testid": "rename-project-input", type: "text", value: project.displayName, "aria-label": "Project name" });
    const rename = h("button", { id: "rename-project-button", "data-testid": "rename-project-button", type: "submit", class: "secondary" }, "Rename");
    const renameForm = h("form", { class: "row", id: "rename-project-form" }, nameInput, rename);
    renameForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      void act(rename, async () => {
        const p = await ingest.updateProject({ project: { name: projectName, displayName: nameInput.value.trim() }, updateMask: { paths: ["display_name"] } });
        title.textContent = p.displayName || p.name;
      });
    });
    const manage = h("section", { class: "card", id: "manage-project" }, h("h2", {}, "Project"), renameForm);
    if (project.role === Role.OWNER) {
      manage.append(
        confirmButton({ id: "delete-project-button", "data-testid": "delete-project-button" }, "Delete project", () => `Delete “${title.textContent}” with its ${datasets.datasets.length} dataset${datasets.datasets.length === 1 ? "" : "s"}, their embeddings and maps? Click again`, (b) =>
          void act(b, async () => {
            await ingest.deleteProject({ name: projectName });
            go("#/projects");
          }),
        ),
      );
    }
    app.append(manage);
  }
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
  // A project with a finished map opens on it (the workspace shows its newest map); the
  // dataset list stays reachable as #/projects/{p}?datasets.
  if (location.hash.includes("?datasets")) return;
  for (const d of datasets.datasets.filter((x) => x.job?.state === JobState.SUCCEEDED).slice(0, 5)) {
    const embs = await embedding.listEmbeddings({ parent: d.name, pageSize: 100 }, { signal: screenAbort.signal });
    for (const e of embs.embeddings.filter((x) => x.job?.state === JobState.SUCCEEDED)) {
      const projs = await projection.listProjections({ parent: e.name, pageSize: 100 }, { signal: screenAbort.signal });
      if (projs.projections.some((x) => x.job?.state === JobState.SUCCEEDED)) {
        history.replaceState(null, "", `#/${projectName}?datasets`);
        go(`#/${d.name}`);
        return;
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
  for (const t of teardowns.splice(0)) t();
  clearError();
  renderHeader();
  delete app.dataset.screen;
  delete document.body.dataset.screen;

  const path = hashPath(location.hash);
  if (!loadSession() && path !== "login") {
    if (path && path !== "projects") sessionStorage.setItem(RETURN_KEY, location.hash);
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
    } else if (parts[0] === "projects" && parts[2] === "datasets" && (parts.length === 4 || (parts[4] === "embeddings" && (parts.length === 6 || (parts.length === 8 && parts[6] === "projections"))))) {
      app.dataset.screen = "dataset";
      document.body.dataset.screen = "dataset";
      await renderWorkspace({ ...screenContext(), clearError, onTeardown: (fn) => teardowns.push(fn) }, hashToView(location.hash));
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
  if (!/^#\/?login/.test(location.hash)) sessionStorage.setItem(RETURN_KEY, location.hash);
  go("#/login");
});
window.addEventListener("hashchange", () => void route());
void route();
