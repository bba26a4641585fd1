// A project's Members page and the user's API keys page.

import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { auth, ingest } from "./api";
import { h } from "./dom";
import { Role, type Member } from "./gen/embedviz/v1/ingest_pb";
import { loadSession } from "./session";

export interface ScreenContext {
  app: HTMLElement;
  signal: AbortSignal;
  /** Runs an action with the button disabled, showing any error in the banner. */
  act: (button: HTMLButtonElement | null, work: () => Promise<void>) => Promise<void>;
  showError: (err: unknown) => void;
}

const ROLE_WORDS: Record<number, string> = {
  [Role.VIEWER]: "viewer",
  [Role.EDITOR]: "editor",
  [Role.OWNER]: "owner",
};
const ROLE_HINTS: Record<number, string> = {
  [Role.VIEWER]: "read and export",
  [Role.EDITOR]: "also upload, embed, make maps, delete datasets",
  [Role.OWNER]: "everything, members and deleting the project included",
};

function roleSelect(attrs: Record<string, string>, selected: Role): HTMLSelectElement {
  return h(
    "select",
    attrs,
    ...[Role.VIEWER, Role.EDITOR, Role.OWNER].map((r) => h("option", { value: String(r), selected: r === selected, title: ROLE_HINTS[r] }, ROLE_WORDS[r])),
  );
}

export function formatTime(t: Timestamp | undefined): string {
  if (!t || (t.seconds === 0n && t.nanos === 0)) return "";
  return timestampDate(t).toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short" });
}

// ---------- members ----------

export async function renderMembers(ctx: ScreenContext, projectName: string): Promise<void> {
  const { app, signal, act } = ctx;
  const title = h("h1", { id: "members-title" }, "Members");
  const roleNote = h("p", { class: "muted", id: "my-role" });
  const list = h("tbody", { id: "member-list", "data-testid": "member-list" });
  const email = h("input", { id: "member-email", "data-testid": "member-email", type: "email", placeholder: "colleague@example.com", required: true });
  const role = roleSelect({ id: "member-role-new", "data-testid": "member-role-new" }, Role.VIEWER);
  const add = h("button", { id: "add-member-button", "data-testid": "add-member-button", type: "submit" }, "Add member");
  const form = h("form", { id: "add-member-form", "data-testid": "add-member-form", class: "row" }, h("label", {}, "Email", email), h("label", {}, "Role", role), add);
  const me = loadSession()?.email.toLowerCase() ?? "";

  app.replaceChildren(
    h("nav", { class: "crumbs" }, h("a", { href: "#/projects" }, "Projects"), " / ", h("a", { href: `#/${projectName}`, id: "project-link" }, "Project"), " / Members"),
    h(
      "section",
      { class: "card" },
      title,
      roleNote,
      h("table", { class: "grid", id: "members-table" }, h("thead", {}, h("tr", {}, h("th", {}, "Email"), h("th", {}, "Role"), h("th", {}, ""))), list),
    ),
    h("section", { class: "card", id: "add-member-section" }, h("h2", {}, "Add a member"), h("p", { class: "muted" }, "They need an embedviz account; add them by the email they signed up with."), form),
  );

  let myRole = Role.UNSPECIFIED;
  const load = async () => {
    const res = await ingest.listMembers({ parent: projectName, pageSize: 1000 }, { signal });
    renderRows(res.members);
  };
  const renderRows = (members: Member[]) => {
    const owners = members.filter((m) => m.role === Role.OWNER).length;
    list.replaceChildren(
      ...members.map((m) => {
        const self = m.email.toLowerCase() === me;
        const canManage = myRole === Role.OWNER;
        const select = roleSelect({ "data-testid": "member-role", "aria-label": `role of ${m.email}` }, m.role);
        select.disabled = !canManage;
        select.addEventListener("change", () =>
          act(null, async () => {
            try {
              const updated = await ingest.updateMember({ member: { name: m.name, role: Number(select.value) as Role } });
              m.role = updated.role;
            } finally {
              await load();
            }
          }),
        );
        const remove = h("button", { type: "button", class: "secondary", "data-testid": "member-remove" }, self ? "Leave" : "Remove");
        remove.hidden = !canManage && !self;
        remove.title = self && m.role === Role.OWNER && owners <= 1 ? "You are the only owner: make someone else an owner first" : "";
        remove.addEventListener("click", () =>
          act(remove, async () => {
            await ingest.deleteMember({ name: m.name });
            if (self) location.hash = "#/projects";
            else await load();
          }),
        );
        return h(
          "tr",
          { "data-testid": "member-row", "data-email": m.email, "data-role": ROLE_WORDS[m.role] ?? "" },
          h("td", {}, m.email, self ? h("span", { class: "muted" }, " (you)") : null),
          h("td", {}, select),
          h("td", {}, remove),
        );
      }),
    );
    if (!members.length) list.append(h("tr", {}, h("td", { colspan: 3, class: "muted" }, "No members listed.")));
  };

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void act(add, async () => {
      await ingest.createMember({ parent: projectName, member: { email: email.value.trim(), role: Number(role.value) as Role } });
      email.value = "";
      await load();
    });
  });

  const project = await ingest.getProject({ name: projectName }, { signal });
  myRole = project.role;
  title.textContent = `Members of ${project.displayName || project.name}`;
  const link = app.querySelector<HTMLElement>("#project-link");
  if (link) link.textContent = project.displayName || project.name;
  roleNote.textContent = myRole ? `Your role: ${ROLE_WORDS[myRole]} (${ROLE_HINTS[myRole]}).` : "";
  roleNote.dataset.role = ROLE_WORDS[myRole] ?? "";
  if (myRole !== Role.OWNER && myRole !== Role.UNSPECIFIED) {
    form.querySelectorAll("input, select, button").forEach((el) => ((el as HTMLInputElement).disabled = true));
    form.after(h("p", { class: "muted" }, "Only owners add members or change roles."));
  }
  await load();
}

// ---------- API keys ----------

export async function renderApiKeys(ctx: ScreenContext): Promise<void> {
  const { app, signal, act } = ctx;
  const name = h("input", { id: "api-key-name", "data-testid": "api-key-name", type: "text", placeholder: "e.g. nightly import script", required: true });
  const create = h("button", { id: "create-api-key-button", "data-testid": "create-api-key-button", type: "submit" }, "Create key");
  const form = h("form", { id: "create-api-key-form", class: "row" }, name, create);
  const secretBox = h("div", { id: "api-key-secret-box", "data-testid": "api-key-secret-box", class: "secret", hidden: true });
  const list = h("tbody", { id: "api-key-list", "data-testid": "api-key-list" });

  app.replaceChildren(
    h("nav", { class: "crumbs" }, h("a", { href: "#/projects" }, "Projects"), " / API keys"),
    h(
      "section",
      { class: "card" },
      h("h1", {}, "API keys"),
      h("p", { class: "muted" }, "A key lets a script or grpcurl act as you without your password: trade it for an access token with ExchangeApiKey."),
      form,
      secretBox,
    ),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Your keys"),
      h("table", { class: "grid" }, h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Key"), h("th", {}, "Created"), h("th", {}, "Last used"), h("th", {}, ""))), list),
    ),
  );

  const load = async () => {
    const res = await auth.listApiKeys({ pageSize: 1000 }, { signal });
    list.replaceChildren(
      ...res.apiKeys.map((k) => {
        const revoke = h("button", { type: "button", class: "secondary", "data-testid": "api-key-revoke" }, "Revoke");
        let armed = false;
        revoke.addEventListener("click", () => {
          if (!armed) {
            armed = true;
            revoke.textContent = "Really revoke?";
            revoke.classList.add("danger");
            return;
          }
          void act(revoke, async () => {
            await auth.deleteApiKey({ name: k.name });
            await load();
          });
        });
        return h(
          "tr",
          { "data-testid": "api-key-row", "data-name": k.name, "data-prefix": k.prefix },
          h("td", {}, k.displayName),
          h("td", {}, h("code", { "data-testid": "api-key-prefix" }, `${k.prefix}…`)),
          h("td", {}, formatTime(k.createTime)),
          h("td", { "data-testid": "api-key-last-used" }, formatTime(k.lastUsedTime) || "never"),
          h("td", {}, revoke),
        );
      }),
    );
    if (!res.apiKeys.length) list.append(h("tr", {}, h("td", { colspan: 5, class: "muted", id: "no-api-keys" }, "No keys yet.")));
  };

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void act(create, async () => {
      const res = await auth.createApiKey({ apiKey: { displayName: name.value.trim() } });
      name.value = "";
      const secret = h("code", { id: "api-key-secret", "data-testid": "api-key-secret" }, res.secret);
      const copy = h("button", { type: "button", id: "copy-api-key-button", "data-testid": "copy-api-key-button", class: "secondary" }, "Copy");
      copy.addEventListener("click", () => {
        const done = () => (copy.textContent = "Copied");
        navigator.clipboard?.writeText(res.secret).then(done, () => {
          const range = document.createRange();
          range.selectNodeContents(secret);
          const sel = getSelection();
          sel?.removeAllRanges();
          sel?.addRange(range);
          copy.textContent = "Selected: press Ctrl+C";
        }) ?? done();
      });
      const dismiss = h("button", { type: "button", class: "secondary", "data-testid": "dismiss-api-key-secret" }, "I have stored it");
      dismiss.addEventListener("click", () => {
        secretBox.hidden = true;
        secretBox.replaceChildren();
      });
      secretBox.replaceChildren(
        h("p", {}, h("strong", {}, `Key “${res.apiKey?.displayName ?? ""}” created.`), " Copy it now: this is the only time it is shown; the server keeps only a hash."),
        h("div", { class: "row" }, secret, copy, dismiss),
      );
      secretBox.hidden = false;
      await load();
    });
  });
  await load();
}
