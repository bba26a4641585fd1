#!/usr/bin/env node
// Browser scenarios for the web client's pages, against a running embedviz stack:
//   node e2e/features.mjs --base-url URL --scenario NAME [--csv FILE] [--screenshot OUT.png]
// Scenarios: session, expiry, members, apikeys, table, resume, template, map, workspace, retry.
// Each signs up fresh users, does what a person would do, and checks what the page shows.
// The last stdout line is a JSON summary ({"ok":true,...}); exit 1 on failure with the
// reason in "error" (and a screenshot of the page as it was); exit 3 when the server
// answers UNIMPLEMENTED for an RPC the scenario needs ("blocked": the server's message).
import { mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { launchBrowser } from "./browser.mjs";

const { values: args } = parseArgs({
  options: {
    "base-url": { type: "string" },
    scenario: { type: "string" },
    csv: { type: "string" },
    screenshot: { type: "string" },
    "timeout-s": { type: "string", default: "150" },
    // retry: written just before the map starts; the caller then kills the map's fitting process
    "arm-file": { type: "string" },
    // workspace on a big table of your own (columns id,title,text,topic): how much longer
    // than on the tests' table its jobs may take, the first map's method, and the topic
    // value the filter step leaves out.
    "job-scale": { type: "string", default: "1" },
    "first-method": { type: "string", default: "PCA" },
    "drop-topic": { type: "string", default: "space" },
  },
});
if (!args["base-url"] || !args.scenario) {
  console.error("usage: features.mjs --base-url URL --scenario session|expiry|members|apikeys|table|resume|template|map|vectors|workspace|retry [--csv FILE] [--screenshot OUT.png]");
  process.exit(2);
}
const baseUrl = args["base-url"].replace(/\/+$/, "");
const fromCaller = (p) => resolve(process.env.INIT_CWD ?? process.cwd(), p);
const screenshotPath = args.screenshot ? fromCaller(args.screenshot) : null;
const started = Date.now();
const overallMs = Number(args["timeout-s"]) * 1000;
const jobMs = (ms) => ms * Number(args["job-scale"]);
const log = (...m) => console.error(`[${args.scenario} +${((Date.now() - started) / 1000).toFixed(1)}s]`, ...m);
const summary = { ok: false, scenario: args.scenario };
const consoleErrors = [];
let page; // the page a failure screenshot is taken of
class Blocked extends Error {}

// ---------- helpers ----------

function check(cond, message) {
  if (!cond) throw new Error(message);
}

async function step(name, fn) {
  log(name);
  try {
    return await fn();
  } catch (err) {
    if (err instanceof Blocked) throw err;
    const banner = page ? await page.locator("#error-banner:visible").textContent({ timeout: 300 }).catch(() => null) : null;
    throw new Error(`${name}: ${err?.message?.split("\n")[0] ?? err}${banner ? ` — the page says: ${banner.trim()}` : ""}`);
  }
}

/** The error banner's text, or "" when it is hidden. */
async function bannerOf(p) {
  return p.evaluate(() => {
    const b = document.getElementById("error-banner");
    return b && !b.hidden ? b.textContent ?? "" : "";
  });
}

/** Fails (or reports "blocked") when the page shows an error. */
async function noBanner(p, what) {
  const text = await bannerOf(p);
  if (/\(Unimplemented\)/.test(text)) throw new Blocked(`${what}: ${text}`);
  check(!text, `${what}: the page shows an error: ${text}`);
}

/** Waits until fn(arg) in the page is truthy; stops early with the banner's error. */
async function until(p, fn, arg, what, timeout = 30_000) {
  const handle = await p.waitForFunction(
    ({ src, arg }) => {
      const b = document.getElementById("error-banner");
      if (b && !b.hidden && b.textContent) return { error: b.textContent };
      const v = new Function("arg", `return (${src})(arg)`)(arg);
      return v ? { value: v } : false;
    },
    { src: fn.toString(), arg },
    { timeout, polling: 100 },
  ).catch((err) => {
    throw new Error(`${what}: ${err.message.split("\n")[0]}`);
  });
  const r = await handle.jsonValue();
  if (r.error) {
    if (/\(Unimplemented\)/.test(r.error)) throw new Blocked(`${what}: ${r.error}`);
    throw new Error(`${what}: the page shows an error: ${r.error}`);
  }
  return r.value;
}

function newEmail(tag) {
  return `${tag}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}@example.com`;
}

async function signUp(p, email, name = "Tester") {
  await p.goto(`${baseUrl}/#/login`);
  await p.locator("#auth-form").waitFor();
  await p.fill("#auth-email", email);
  await p.fill("#auth-password", "correct horse battery staple");
  await p.fill("#auth-display-name", name);
  await p.click("#signup-button");
  await until(p, () => document.getElementById("create-project-form"), null, `sign up ${email}`);
}

async function createProject(p, name) {
  await p.fill("#new-project-name", name);
  await p.click("#create-project-button");
  await until(p, () => document.getElementById("upload-input"), null, "create a project");
  return p.evaluate(() => location.hash.slice(2));
}

async function uploadAndOpen(p, file, { drop = false } = {}) {
  if (drop) {
    // Drag and drop: a DataTransfer holding the file, dropped on the drop zone.
    const name = file.split("/").pop();
    const dataTransfer = await p.evaluateHandle(({ text, name }) => {
      const dt = new DataTransfer();
      dt.items.add(new File([text], name, { type: "text/csv" }));
      return dt;
    }, { text: readFileSync(file, "utf8"), name });
    await p.dispatchEvent("#upload-dropzone", "dragover", { dataTransfer });
    await p.dispatchEvent("#upload-dropzone", "drop", { dataTransfer });
  } else {
    await p.setInputFiles("#upload-input", file);
  }
  await until(p, () => document.getElementById("app")?.dataset.screen === "dataset" && document.querySelector("[data-testid=text-column]"), null, "upload and import", 90_000);
}

async function embedAndProject(p, method = "PCA") {
  await p.click("#start-embedding-button");
  await until(p, () => ["succeeded", "failed", "cancelled"].includes(document.getElementById("embedding-progress")?.dataset.state) && document.getElementById("embedding-progress").dataset.state, null, "embedding", 120_000).then((s) => check(s === "succeeded", `embedding ${s}`));
  await until(p, () => !document.getElementById("start-projection-button")?.disabled, null, "map form");
  await p.selectOption("#projection-method", { label: method });
  await p.click("#start-projection-button");
  await until(p, () => window.__embedviz?.ready === true, null, "the map", 120_000);
}

/** Clicks row `row`'s point and waits for its neighbour list; the row the list is of. */
async function clickRowForNeighbours(p, row) {
  const point = await p.evaluate((r) => window.__embedviz.pointOfRow(r), row);
  const pos = await p.evaluate((q) => window.__embedviz.screenPositionOf(q), point);
  check(pos, `row ${row} is off screen`);
  await p.mouse.move(pos.x, pos.y, { steps: 3 });
  await p.mouse.click(pos.x, pos.y);
  await until(p, () => document.getElementById("neighbors-list")?.dataset.state === "done", null, "neighbour list");
  return Number(await p.locator("#neighbors-list").getAttribute("data-row"));
}

/** Rows of a simple CSV (no quoted new lines), as objects. */
function parseCsv(text) {
  const lines = text.split(/\r?\n/).filter((l) => l);
  const split = (line) => {
    const out = [];
    let cur = "", q = false;
    for (let i = 0; i < line.length; i++) {
      const c = line[i];
      if (q) {
        if (c === '"' && line[i + 1] === '"') { cur += '"'; i++; }
        else if (c === '"') q = false;
        else cur += c;
      } else if (c === '"') q = true;
      else if (c === ",") { out.push(cur); cur = ""; }
      else cur += c;
    }
    out.push(cur);
    return out;
  };
  const header = split(lines[0]);
  return lines.slice(1).map((l) => Object.fromEntries(split(l).map((v, i) => [header[i], v])));
}

async function tableState(p) {
  return p.evaluate(() => ({
    info: document.getElementById("rows-info")?.textContent ?? "",
    total: Number(document.getElementById("rows-info")?.dataset.total ?? -1),
    page: Number(document.getElementById("rows-info")?.dataset.page ?? -1),
    headers: [...document.querySelectorAll("#data-table thead th")].map((th) => th.dataset.column ?? ""),
    rows: [...document.querySelectorAll("#data-table tbody tr")].map((tr) => ({ index: Number(tr.dataset.row), cells: [...tr.querySelectorAll("td")].slice(1).map((td) => td.textContent) })),
  }));
}

/** The stored session (src/session.ts keeps it in localStorage), or null. */
async function storedSession(p) {
  return p.evaluate(() => JSON.parse(localStorage.getItem("embedviz.session") ?? "null"));
}

/** The same JWT with its expiry an hour ago (header and signature kept): a token that timed out. */
function expiredCopyOf(token) {
  const [header, payload, signature] = token.split(".");
  const claims = JSON.parse(Buffer.from(payload, "base64url").toString("utf8"));
  const exp = Math.floor(Date.now() / 1000) - 3600;
  const forged = Buffer.from(JSON.stringify({ ...claims, iat: exp - 900, nbf: exp - 900, exp })).toString("base64url");
  return [header, forged, signature].join(".");
}

/**
 * Page init script: every text the error banner shows, in window.__bannersShown, so a
 * banner that flashes and is cleared again is caught too.
 */
function recordBanners() {
  window.__bannersShown = [];
  new MutationObserver(() => {
    const b = document.getElementById("error-banner");
    const text = b && !b.hidden ? (b.textContent ?? "").trim() : "";
    if (text && window.__bannersShown.at(-1) !== text) window.__bannersShown.push(text);
  }).observe(document, { subtree: true, childList: true, attributes: true, characterData: true });
}

/** The calls the edge or a service refused in trailers-only replies: {method, status, message}. */
function recordRefusals(p) {
  const refusals = [];
  p.on("response", (r) => {
    const status = r.headers()["grpc-status"];
    if (status && status !== "0") {
      refusals.push({ method: new URL(r.url()).pathname, status, message: decodeURIComponent(r.headers()["grpc-message"] ?? "") });
    }
  });
  return refusals;
}

// ---------- scenarios ----------

const scenarios = {
  /** A rejected access token is refreshed without a new login; logging out ends the session for good. */
  async session({ newContext }) {
    page = await (await newContext()).newPage();
    const email = newEmail("session");
    await step("sign up", () => signUp(page, email));
    await step("create a project", () => createProject(page, "refresh check"));
    await page.evaluate(() => (location.hash = "#/projects"));
    await until(page, () => document.querySelector("[data-testid=project-item]"), null, "project list");
    const before = await page.evaluate(() => JSON.parse(localStorage.getItem("embedviz.session")));
    await step("a broken access token is refreshed without logging in again", async () => {
      await page.evaluate(() => {
        const s = JSON.parse(localStorage.getItem("embedviz.session"));
        s.accessToken = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.invalid";
        localStorage.setItem("embedviz.session", JSON.stringify(s));
      });
      await page.reload();
      await until(page, () => document.querySelector("[data-testid=project-item]"), null, "project list after refresh");
      const after = await page.evaluate(() => JSON.parse(localStorage.getItem("embedviz.session")));
      check(after.accessToken !== before.accessToken && !after.accessToken.endsWith(".invalid"), "the access token was not replaced");
      check(after.refreshToken !== before.refreshToken, "the refresh token did not rotate");
      summary.refreshed = true;
    });
    const stale = await page.evaluate(() => JSON.parse(localStorage.getItem("embedviz.session")));
    await step("log out", async () => {
      await page.click("#logout-button");
      await until(page, () => document.getElementById("app")?.dataset.screen === "login", null, "login screen after logout");
      check((await page.evaluate(() => localStorage.getItem("embedviz.session"))) === null, "the session is still stored");
    });
    await step("the logged-out session cannot be refreshed", async () => {
      await page.evaluate((s) => localStorage.setItem("embedviz.session", JSON.stringify({ ...s, accessToken: "x.y.z" })), stale);
      await page.evaluate(() => (location.hash = "#/projects"));
      await page.waitForFunction(() => document.getElementById("app")?.dataset.screen === "login", null, { timeout: 20_000 });
      summary.notice = (await page.locator("#auth-notice").textContent({ timeout: 2000 }).catch(() => ""))?.trim();
      check(/log in again/i.test(summary.notice ?? ""), `no "log in again" notice (got "${summary.notice}")`);
      if (screenshotPath) await page.screenshot({ path: screenshotPath });
    });
  },

  /**
   * An access token that expired while the tab slept is refreshed silently (the projects
   * stay on screen); once the refresh token is bad too, the login screen says the session
   * ended — never a blank page, never Envoy's raw "Jwt is expired" in the banner.
   */
  async expiry({ newContext }) {
    page = await (await newContext()).newPage();
    await page.addInitScript(recordBanners);
    const refusals = recordRefusals(page);
    await step("sign up", () => signUp(page, newEmail("expiry")));
    const project = await step("create a project", () => createProject(page, "expiry check"));
    await page.evaluate(() => (location.hash = "#/projects"));
    await until(page, () => document.querySelector("[data-testid=project-item]"), null, "project list");
    const before = await storedSession(page);

    await step("an expired access token is refreshed without a word to the user", async () => {
      const expired = expiredCopyOf(before.accessToken);
      await page.evaluate((s) => localStorage.setItem("embedviz.session", JSON.stringify(s)), { ...before, accessToken: expired });
      refusals.length = 0;
      await page.reload();
      await until(page, (name) => document.querySelector(`[data-testid=project-item][data-name="${name}"]`), project, "the project after the refresh");
      const after = await storedSession(page);
      check(after && after.accessToken !== expired && after.accessToken !== before.accessToken, "the stored access token was not replaced");
      check(after.refreshToken !== before.refreshToken, "the refresh token did not rotate");
      summary.refusedWith = refusals.find((r) => r.status === "16")?.message ?? "";
      check(summary.refusedWith, `the edge never refused the expired token (refusals: ${JSON.stringify(refusals)})`);
      summary.refreshed = true;
      summary.bannersShown = await page.evaluate(() => window.__bannersShown);
      check(summary.bannersShown.length === 0, `the page showed an error: ${summary.bannersShown.join(" | ")}`);
      if (screenshotPath) await page.screenshot({ path: screenshotPath.replace(/\.png$/, "-refreshed.png") });
    });

    // Two ways in: a reload of the projects page (one call, whose error must not flash in
    // the banner on the way out), then opening a project (several calls at once, each of
    // which ends the session).
    const deadSession = { ...before, accessToken: expiredCopyOf(before.accessToken), refreshToken: "not-a-refresh-token" };
    const ways = {
      "reloading the projects page": () => page.reload(),
      "opening the project": () => page.evaluate((p) => (location.hash = `#/${p}`), project),
    };
    summary.notices = {};
    for (const [way, enter] of Object.entries(ways)) {
      await step(`with the refresh token broken too, ${way} ends on the login screen with a notice`, async () => {
        await page.evaluate((s) => localStorage.setItem("embedviz.session", JSON.stringify(s)), deadSession);
        await page.evaluate(() => (window.__bannersShown = []));
        refusals.length = 0;
        await enter();
        await page.waitForFunction(() => document.getElementById("app")?.dataset.screen === "login", null, { timeout: 20_000 });
        await page.locator("#auth-form").waitFor({ state: "visible" });
        const notice = (await page.locator("#auth-notice").textContent({ timeout: 2000 }).catch(() => ""))?.trim() ?? "";
        summary.notices[way] = notice;
        check(/session has ended/i.test(notice) && /log in again/i.test(notice), `no "session has ended" notice (got "${notice}")`);
        check((await storedSession(page)) === null, "the dead session is still stored");
        check(refusals.some((r) => r.method.endsWith("/RefreshSession")), `the refresh was never tried (refusals: ${JSON.stringify(refusals)})`);
        const banners = await page.evaluate(() => window.__bannersShown);
        check(banners.length === 0, `the page showed an error on the way out: ${banners.join(" | ")}`);
      });
    }
    summary.notice = summary.notices["opening the project"];
    check(await page.evaluate(() => document.body.innerText.includes("Sign in to embedviz")), "the login screen is blank");
    if (screenshotPath) await page.screenshot({ path: screenshotPath });
  },

  /** Owner adds a second user by email, changes their role, removes them; the last owner cannot leave. */
  async members({ newContext }) {
    const pageB = await (await newContext()).newPage();
    const emailB = newEmail("member-b");
    page = pageB;
    await step("second user signs up", () => signUp(pageB, emailB, "Second"));
    page = await (await newContext()).newPage();
    const emailA = newEmail("member-a");
    await step("owner signs up", () => signUp(page, emailA, "Owner"));
    const project = await step("owner creates a project", () => createProject(page, "shared project"));
    await step("open the members page", async () => {
      await page.click("#members-link");
      await until(page, () => document.querySelector("[data-testid=member-row]") || (document.getElementById("app")?.dataset.screen === "members" && document.getElementById("error-banner")?.textContent), null, "members list");
      await noBanner(page, "members list");
      const rows = await page.$$eval("[data-testid=member-row]", (els) => els.map((e) => [e.dataset.email, e.dataset.role]));
      check(rows.length === 1 && rows[0][0] === emailA && rows[0][1] === "owner", `expected only the owner, got ${JSON.stringify(rows)}`);
    });
    await step("the second user cannot see the project yet", async () => {
      await pageB.goto(`${baseUrl}/#/projects`);
      await pageB.reload();
      await pageB.locator("#project-list").waitFor();
      await pageB.waitForTimeout(300);
      check((await pageB.locator(`[data-testid=project-item][data-name="${project}"]`).count()) === 0, "the outsider lists the project");
    });
    await step("add the second user as viewer", async () => {
      await page.fill("#member-email", emailB);
      await page.selectOption("#member-role-new", { label: "viewer" });
      await page.click("#add-member-button");
      await until(page, (e) => document.querySelector(`[data-testid=member-row][data-email="${e}"]`), emailB, "the new member's row");
      check((await page.locator(`[data-testid=member-row][data-email="${emailB}"]`).getAttribute("data-role")) === "viewer", "the new member is not a viewer");
    });
    await step("the viewer sees the project and no upload rights are needed to read it", async () => {
      await pageB.reload();
      await pageB.locator(`[data-testid=project-item][data-name="${project}"]`).waitFor({ timeout: 10_000 });
      await pageB.goto(`${baseUrl}/#/${project}/members`);
      await until(pageB, () => document.getElementById("my-role")?.dataset.role, null, "viewer's members page");
      check((await pageB.locator("#my-role").getAttribute("data-role")) === "viewer", "the viewer's page does not say viewer");
      check(await pageB.locator("#add-member-button").isDisabled(), "a viewer can press Add member");
    });
    await step("change the role to editor", async () => {
      await page.locator(`[data-testid=member-row][data-email="${emailB}"] [data-testid=member-role]`).selectOption({ label: "editor" });
      await until(page, (e) => document.querySelector(`[data-testid=member-row][data-email="${e}"]`)?.dataset.role === "editor", emailB, "role shown as editor");
    });
    await step("adding an unknown email is refused with a clear message", async () => {
      await page.fill("#member-email", newEmail("nobody"));
      await page.click("#add-member-button");
      await page.waitForFunction(() => !document.getElementById("error-banner").hidden, null, { timeout: 10_000 });
      summary.unknownEmailError = (await bannerOf(page)).trim();
      check(/not|no user|unknown|sign/i.test(summary.unknownEmailError), `unclear error: ${summary.unknownEmailError}`);
    });
    await step("the last owner cannot leave", async () => {
      await page.locator(`[data-testid=member-row][data-email="${emailA}"] [data-testid=member-remove]`).click();
      await page.waitForFunction(() => !document.getElementById("error-banner").hidden, null, { timeout: 10_000 });
      summary.lastOwnerError = (await bannerOf(page)).trim();
      check(/owner/i.test(summary.lastOwnerError), `no last-owner error: ${summary.lastOwnerError}`);
      check((await page.locator(`[data-testid=member-row][data-email="${emailA}"]`).count()) === 1, "the owner row is gone");
    });
    await step("remove the second user", async () => {
      await page.locator(`[data-testid=member-row][data-email="${emailB}"] [data-testid=member-remove]`).click();
      await until(page, (e) => !document.querySelector(`[data-testid=member-row][data-email="${e}"]`), emailB, "the removed member's row is gone");
      await noBanner(page, "after removing");
      if (screenshotPath) await page.screenshot({ path: screenshotPath, fullPage: true });
    });
    await step("the removed user no longer sees the project", async () => {
      await pageB.goto(`${baseUrl}/#/projects`);
      await pageB.reload();
      await pageB.locator("#project-list").waitFor();
      await pageB.waitForTimeout(300);
      check((await pageB.locator(`[data-testid=project-item][data-name="${project}"]`).count()) === 0, "the removed member still lists the project");
    });
  },

  /** Create a named key, see the secret once, find it listed by prefix, revoke it. */
  async apikeys({ newContext }) {
    page = await (await newContext()).newPage();
    await step("sign up", () => signUp(page, newEmail("keys")));
    await step("open the API keys page", async () => {
      await page.click("#api-keys-link");
      await until(page, () => document.getElementById("no-api-keys"), null, "empty key list");
    });
    const secret = await step("create a key", async () => {
      await page.fill("#api-key-name", "nightly import");
      await page.click("#create-api-key-button");
      await until(page, () => document.getElementById("api-key-secret")?.textContent, null, "the secret");
      return (await page.locator("#api-key-secret").textContent()).trim();
    });
    await step("the key is listed by its prefix, never the secret", async () => {
      await until(page, () => document.querySelector("[data-testid=api-key-row]"), null, "the key's row");
      const row = page.locator("[data-testid=api-key-row]");
      check((await row.count()) === 1, "expected one key");
      const prefix = await row.getAttribute("data-prefix");
      check(prefix && prefix.length >= 4 && secret.startsWith(prefix), `prefix "${prefix}" does not start the secret`);
      check(prefix.length < secret.length, "the list shows the whole secret");
      const listText = await page.locator("#api-key-list").textContent();
      check(!listText.includes(secret), "the list contains the secret");
      check(/nightly import/.test(listText) && /never/.test(listText), `row text: ${listText}`);
      summary.prefix = prefix;
      if (screenshotPath) await page.screenshot({ path: screenshotPath, fullPage: true });
    });
    await step("the secret works for ExchangeApiKey", async () => {
      const ok = await page.evaluate(async ({ base, secret }) => {
        // grpc-web by hand: one length-prefixed protobuf message, field 1 = secret.
        const enc = new TextEncoder().encode(secret);
        const msg = new Uint8Array([0x0a, enc.length, ...enc]);
        const frame = new Uint8Array(5 + msg.length);
        new DataView(frame.buffer).setUint32(1, msg.length);
        frame.set(msg, 5);
        const res = await fetch(`${base}/embedviz.v1.AuthService/ExchangeApiKey`, { method: "POST", headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" }, body: frame });
        const status = res.headers.get("grpc-status");
        const body = new Uint8Array(await res.arrayBuffer());
        return { status, length: body.length };
      }, { base: baseUrl, secret });
      check(ok.status === null || ok.status === "0", `exchange failed with grpc-status ${ok.status}`);
      check(ok.length > 40, "no token came back");
    });
    await step("the secret is not shown again after a reload; last used is now set", async () => {
      await page.reload();
      await until(page, () => document.querySelector("[data-testid=api-key-row]"), null, "key list after reload");
      check((await page.locator("#api-key-secret").count()) === 0, "the secret is shown again");
      summary.lastUsed = (await page.locator("[data-testid=api-key-last-used]").textContent()).trim();
      check(summary.lastUsed !== "never", "last used still says never after the key was used");
    });
    await step("revoke it", async () => {
      await page.click("[data-testid=api-key-revoke]");
      await page.click("[data-testid=api-key-revoke]"); // confirm
      await until(page, () => document.getElementById("no-api-keys"), null, "the key is gone");
    });
  },

  /** The data table: pages, sorting by a column, substring search. */
  async table({ newContext }) {
    check(args.csv, "--csv is required");
    const rows = parseCsv(readFileSync(fromCaller(args.csv), "utf8"));
    page = await (await newContext()).newPage();
    await step("sign up, create a project, drop a file on the drop zone", async () => {
      await signUp(page, newEmail("table"));
      await createProject(page, "table");
      await uploadAndOpen(page, fromCaller(args.csv), { drop: true });
    });
    await step("first page", async () => {
      await until(page, () => document.querySelector("#data-table tbody tr"), null, "the table");
      const t = await tableState(page);
      check(t.total === rows.length, `the table says ${t.total} rows, the file has ${rows.length}`);
      check(t.rows.length === 25 && t.rows[0].index === 0, `first page: ${t.rows.length} rows from ${t.rows[0]?.index}`);
      check(t.info.startsWith("rows 1–25 of"), `info: ${t.info}`);
      const textCol = t.headers.indexOf("text");
      check(t.rows[3].cells[textCol - 1] === rows[3].text, `row 3 shows "${t.rows[3].cells[textCol - 1]}", the file has "${rows[3].text}"`);
    });
    await step("next and previous page", async () => {
      await page.click("#rows-next");
      await until(page, () => document.getElementById("rows-info")?.dataset.page === "1", null, "page 2");
      let t = await tableState(page);
      check(t.rows[0].index === 25 && t.info.startsWith("rows 26–50"), `page 2 starts at ${t.rows[0].index}: ${t.info}`);
      await page.click("#rows-next");
      await until(page, () => document.getElementById("rows-info")?.dataset.page === "2", null, "page 3");
      await page.click("#rows-prev");
      await until(page, () => document.getElementById("rows-info")?.dataset.page === "1", null, "back to page 2");
      t = await tableState(page);
      check(t.rows[0].index === 25, "previous did not return to page 2");
    });
    await step("sort by title, then descending", async () => {
      await page.click('#data-table th[data-column="title"]');
      await until(page, () => document.querySelector('#data-table th[data-column="title"]')?.dataset.sort === "asc", null, "sorted ascending");
      let t = await tableState(page);
      const col = t.headers.indexOf("title") - 1;
      const want = rows.map((r) => r.title).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      check(t.page === 0, "sorting did not go back to the first page");
      check(JSON.stringify(t.rows.map((r) => r.cells[col])) === JSON.stringify(want.slice(0, 25)), `ascending: ${t.rows.slice(0, 3).map((r) => r.cells[col])} vs ${want.slice(0, 3)}`);
      await page.click('#data-table th[data-column="title"]');
      await until(page, () => document.querySelector('#data-table th[data-column="title"]')?.dataset.sort === "desc", null, "sorted descending");
      t = await tableState(page);
      check(t.rows[0].cells[col] === want[want.length - 1], `descending starts with ${t.rows[0].cells[col]}, want ${want[want.length - 1]}`);
    });
    await step("search", async () => {
      const term = "volcano";
      const expected = rows.filter((r) => Object.values(r).some((v) => v.toLowerCase().includes(term))).length;
      await page.fill("#rows-search", term);
      await until(page, (n) => Number(document.getElementById("rows-info")?.dataset.total) === n && document.getElementById("rows-info").textContent.includes("volcano"), expected, `search shows ${expected} rows`);
      const t = await tableState(page);
      const col = t.headers.indexOf("text") - 1;
      check(t.rows.length === Math.min(25, expected) && t.rows.every((r) => r.cells.some((c) => c.toLowerCase().includes(term))), "a shown row does not contain the term");
      summary.searchMatches = expected;
      summary.firstMatch = t.rows[0]?.cells[col];
      await page.locator("#data-table-host").screenshot({ path: screenshotPath ?? join(tmpdir(), "table.png") });
      await page.fill("#rows-search", "zzzz-no-such-text");
      await until(page, () => document.getElementById("rows-info")?.textContent.startsWith("no rows match"), null, "empty search");
    });
  },

  /** Upload a multi-chunk file while chunk calls fail; it resumes and arrives whole. */
  async resume({ newContext }) {
    const dir = mkdtempSync(join(tmpdir(), "embedviz-resume-"));
    const file = join(dir, "big.csv");
    const lines = ["id,text"];
    let i = 0;
    while (lines.join("\n").length < 3.4 * 1024 * 1024 && i < 1e6) {
      for (let k = 0; k < 1000; k++, i++) lines.push(`${i},"Line ${i}: ${"resumable upload text ".repeat(8)}"`);
    }
    writeFileSync(file, lines.join("\n") + "\n");
    summary.rows = i;
    const context = await newContext();
    page = await context.newPage();
    await step("sign up, create a project", async () => {
      await signUp(page, newEmail("resume"));
      await createProject(page, "resume");
    });
    // Chunk 2 never reaches the server; chunk 3 reaches it but its answer is lost; then the
    // network goes away for a moment.
    let calls = 0;
    const dropped = [];
    await page.route("**/embedviz.v1.IngestService/AppendUploadChunk", async (route) => {
      calls++;
      if (calls === 2) {
        dropped.push("before the server");
        return route.abort("connectionreset");
      }
      if (calls === 4) {
        dropped.push("after the server");
        await route.fetch().catch(() => {});
        return route.abort("connectionreset");
      }
      if (calls === 5) {
        dropped.push("offline");
        await context.setOffline(true);
        setTimeout(() => context.setOffline(false), 1500);
        return route.abort("internetdisconnected");
      }
      return route.continue();
    });
    let getUploads = 0;
    page.on("request", (r) => r.url().endsWith("/GetUpload") && getUploads++);
    await step("upload while the network drops", async () => {
      await page.setInputFiles("#upload-input", file);
      await until(page, () => document.getElementById("app")?.dataset.screen === "dataset", null, "upload and import", 90_000);
      summary.retries = await page.evaluate(() => window.__embedvizUpload?.retries ?? 0);
      check(dropped.length === 3, `only ${dropped.length} drops happened (${calls} chunk calls)`);
      check(summary.retries >= 3, `the page retried ${summary.retries} times`);
      // The chunk whose answer was lost had arrived: the client must learn that from
      // GetUpload and not send it again; the two lost ones are sent again.
      const chunks = Math.ceil(statSync(file).size / (1024 * 1024));
      check(calls === chunks + 2, `${calls} chunk calls for ${chunks} chunks with 2 lost on the way (want ${chunks + 2})`);
      check(getUploads >= 3, `GetUpload was asked ${getUploads} times`);
    });
    await step("the dataset has every row", async () => {
      await until(page, () => document.getElementById("dataset-summary")?.dataset.rows, null, "row count");
      const got = Number(await page.locator("#dataset-summary").getAttribute("data-rows"));
      check(got === summary.rows, `the dataset has ${got} rows, the file ${summary.rows}`);
      await page.fill("#rows-search", `Line ${summary.rows - 1}:`);
      await until(page, () => Number(document.getElementById("rows-info")?.dataset.total) === 1, null, "the last line is there");
      summary.chunkCalls = calls;
      if (screenshotPath) await page.screenshot({ path: screenshotPath });
      summary.dropped = dropped;
    });
  },

  /** Template preview, model hints, and cancelling an embedding. */
  async template({ newContext }) {
    check(args.csv, "--csv is required");
    const rows = parseCsv(readFileSync(fromCaller(args.csv), "utf8"));
    page = await (await newContext()).newPage();
    await step("sign up, create a project, upload", async () => {
      await signUp(page, newEmail("template"));
      await createProject(page, "template");
      await uploadAndOpen(page, fromCaller(args.csv));
    });
    await step("the schema shows types and statistics", async () => {
      const stats = await page.$$eval("[data-testid=column-option]", (els) => els.map((e) => e.textContent));
      check(stats.some((t) => /text\s*string/.test(t) && /distinct/.test(t) && /avg \d+ chars/.test(t)), `column stats: ${stats.join(" | ")}`);
    });
    await step("model hint", async () => {
      summary.modelHint = (await page.locator("#model-hint").textContent()).trim();
      check(/\d+ dimensions/.test(summary.modelHint), `hint: ${summary.modelHint}`);
    });
    await step("preview without a template is the checked column's text", async () => {
      await until(page, () => document.querySelectorAll("[data-testid=template-preview-item]").length === 3, null, "preview rows");
      const items = await page.$$eval("[data-testid=template-preview-item]", (els) => els.map((e) => e.textContent));
      check(items[0] === rows[0].text, `preview "${items[0]}" vs "${rows[0].text}"`);
    });
    await step("preview follows the template", async () => {
      await page.fill("#template-input", "{title} ({topic}): {text} {{id}}");
      const want = `${rows[0].title} (${rows[0].topic}): ${rows[0].text} {id}`;
      await until(page, (w) => document.querySelector("[data-testid=template-preview-item]")?.textContent === w, want, `preview "${want}"`);
      summary.preview = want;
      await page.locator("#embed-section").screenshot({ path: screenshotPath ?? join(tmpdir(), "template.png") });
      await page.fill("#template-input", "{title}: {nope}");
      await until(page, () => !document.getElementById("template-error").hidden && document.getElementById("template-error").textContent.includes("nope"), null, "error for an unknown column");
      await page.fill("#template-input", "{title}: {text}");
      await until(page, () => document.getElementById("template-error").hidden, null, "error cleared");
    });
    await step("start and cancel the embedding", async () => {
      await page.click("#start-embedding-button");
      await page.locator("#cancel-embedding-button:visible").waitFor({ timeout: 10_000 });
      await page.click("#cancel-embedding-button");
      const state = await until(page, () => ["succeeded", "failed", "cancelled"].includes(document.getElementById("embedding-progress")?.dataset.state) && document.getElementById("embedding-progress").dataset.state, null, "embedding ends", 60_000);
      summary.embeddingState = state;
      summary.embeddingText = (await page.locator("[data-testid=embedding-progress-text]").textContent()).trim();
      check(state === "cancelled", `the embedding ended ${state}, not cancelled: ${summary.embeddingText}`);
      await noBanner(page, "after cancelling");
      check(await page.locator("#cancel-embedding-button").isHidden(), "the cancel button is still shown");
    });
  },

  /**
   * Vectors the table brings (issue 11, point 5): the CSV's numeric columns become the
   * embedding without a model; the map shows that search by meaning is off and offers text
   * search instead; a point's neighbours are the rows of its group.
   */
  async vectors({ newContext }) {
    check(args.csv, "--csv is required");
    const rows = parseCsv(readFileSync(fromCaller(args.csv), "utf8"));
    const vectorColumns = Object.keys(rows[0]).filter((c) => /^x\d+$/.test(c));
    page = await (await newContext()).newPage();
    page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
    await step("sign up, upload", async () => {
      await signUp(page, newEmail("vectors"));
      await createProject(page, "vectors");
      await uploadAndOpen(page, fromCaller(args.csv));
    });
    await step("choose the vectors in the table instead of a model", async () => {
      await until(page, () => [...document.querySelectorAll("#model-select option")].some((o) => o.value === "imported"), null, "the vectors choice");
      await page.selectOption("#model-select", "imported");
      await page.locator("#vector-columns:visible").waitFor({ timeout: 5000 });
      summary.offered = await page.$$eval("#vector-columns option", (els) => els.map((e) => e.value));
      await page.selectOption("#vector-columns", vectorColumns);
      summary.modelHint = (await page.locator("#model-hint").textContent()).trim();
    });
    await step("embed and map", async () => {
      await embedAndProject(page, "PCA");
      summary.points = await page.evaluate(() => window.__embedviz.pointCount);
    });
    await step("the map says search by meaning is off", async () => {
      summary.note = (await page.locator("#map-imported-note").textContent({ timeout: 10_000 })).trim();
      summary.meaningDisabled = await page.$eval("#map-search-mode option[value='']", (o) => o.disabled);
      summary.searchMode = await page.$eval("#map-search-mode", (s) => s.value);
      await page.locator("#map-container").screenshot({ path: screenshotPath ?? join(tmpdir(), "vectors.png") });
    });
    await step("text search in a column", async () => {
      await page.selectOption("#map-search-mode", "name");
      await page.fill("#map-search", "row 7");
      await page.click("#map-search-button");
      await until(page, () => document.getElementById("search-results")?.dataset.state === "done", null, "search results");
      summary.search = await page.$$eval("[data-testid=search-result]", (els) => els.map((e) => e.querySelector(".match-text").textContent));
    });
    await step("a point's neighbours share its group", async () => {
      await page.keyboard.press("Escape");
      const row = await clickRowForNeighbours(page, 0);
      const items = await page.$$eval("[data-testid=neighbor-item]", (els) => els.map((e) => Number(e.dataset.row)));
      summary.clickedGroup = rows[row].group;
      summary.neighborGroups = items.map((r) => rows[r].group);
    });
  },

  /**
   * The workspace (issue 10): the map fills most of a 1440×900 window; cluster labels do
   * not overlap and more appear after zooming in; a legend click hides its points (pixels);
   * a lasso that starts on a point selects exactly the points inside, and the table and the
   * export hold exactly them; a filter changes the map and table counts; the URL reopens
   * the same view in a new context (after login); a reload during an embedding shows its
   * progress again and then a usable result.
   */
  async workspace({ newContext }) {
    check(args.csv, "--csv is required");
    const rows = parseCsv(readFileSync(fromCaller(args.csv), "utf8"));
    const shot = (name) => (screenshotPath ? screenshotPath.replace(/\.png$/, `-${name}.png`) : join(tmpdir(), `${name}.png`));
    const email = newEmail("workspace");
    const context = await newContext();
    page = await context.newPage();
    await page.setViewportSize({ width: 1440, height: 900 });
    page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
    await step("sign up, upload, embed, project", async () => {
      await signUp(page, email);
      await createProject(page, "workspace");
      await uploadAndOpen(page, fromCaller(args.csv));
      await page.click("#start-embedding-button");
      await until(page, () => !document.getElementById("start-projection-button")?.disabled, null, "map form", jobMs(120_000));
      await page.fill("#cluster-k", "6");
      await page.selectOption("#projection-method", { label: args["first-method"] });
      await page.click("#start-projection-button");
      await until(page, () => window.__embedviz?.ready === true, null, "the map", jobMs(120_000));
    });
    await step("the map fills most of the window", async () => {
      const box = await page.locator("#map-canvas").boundingBox();
      summary.mapFraction = Math.round((1000 * box.width * box.height) / (1440 * 900)) / 1000;
      check(summary.mapFraction >= 0.7, `the map covers ${summary.mapFraction} of the window`);
      await page.waitForTimeout(400);
      await page.screenshot({ path: shot("labels") });
    });
    await step("labels: drawn without overlap, more after zooming in", async () => {
      const before = await until(page, () => window.__embedviz.labels?.length > 0 && window.__embedviz.labels, null, "labels drawn");
      const overlap = (ls) => ls.some((a, i) => ls.some((b, j) => j > i && a.left < b.left + b.width && b.left < a.left + a.width && a.top < b.top + b.height && b.top < a.top + a.height));
      check(!overlap(before), "labels overlap");
      // Zoom in at the centre, a little: finer labels come in, few clusters leave the view.
      const box = await page.locator("#map-canvas").boundingBox();
      await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
      for (let k = 0; k < 12 && (await page.evaluate(() => window.__embedviz.camera().distance)) > 0.75; k++) {
        await page.mouse.wheel(0, -60);
        await page.waitForTimeout(150);
      }
      summary.zoomDistance = await page.evaluate(() => window.__embedviz.camera().distance);
      await page.waitForTimeout(700);
      const after = await page.evaluate(() => window.__embedviz.labels);
      check(!overlap(after), "labels overlap after zooming");
      summary.labels = [before.length, after.length];
      check(after.length > before.length, `${before.length} labels before zooming, ${after.length} after`);
      await page.screenshot({ path: shot("zoomed") });
      await page.evaluate(() => window.__embedviz.camera());
      await page.keyboard.press("Escape");
    });
    await step("reset the view", async () => {
      await page.goto(page.url().replace(/\?.*$/, ""));
      await page.reload();
      await until(page, () => window.__embedviz?.ready === true, null, "the map again", jobMs(60_000));
      await page.waitForTimeout(300);
    });
    const pixelsNear = async (hex) => {
      const png = await page.locator("#map-canvas").screenshot();
      return page.evaluate(async ({ b64, hex }) => {
        const img = new Image();
        img.src = `data:image/png;base64,${b64}`;
        await img.decode();
        const c = document.createElement("canvas");
        c.width = img.width;
        c.height = img.height;
        const ctx = c.getContext("2d");
        ctx.drawImage(img, 0, 0);
        const d = ctx.getImageData(0, 0, c.width, c.height).data;
        const want = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - want[0]) + Math.abs(d[i + 1] - want[1]) + Math.abs(d[i + 2] - want[2]) < 40) n++;
        return n;
      }, { b64: png.toString("base64"), hex });
    };
    await step("a legend click hides its points", async () => {
      const entries = await page.$$eval("[data-testid=legend-item]", (els) => els.map((e) => ({ key: e.dataset.value, color: e.dataset.color, count: Number(e.querySelector(".legend-size").textContent.replace(/,/g, "")) })));
      const big = entries.filter((e) => e.key !== "-1").sort((a, b) => b.count - a.count)[0];
      const before = await pixelsNear(big.color);
      await page.click(`[data-testid=legend-item][data-value="${big.key}"]`);
      await until(page, (k) => document.querySelector(`[data-testid=legend-item][data-value="${k}"]`)?.dataset.hidden === "true", big.key, "entry hidden");
      await page.waitForTimeout(400);
      const after = await pixelsNear(big.color);
      const visible = await page.evaluate(() => window.__embedviz.visibleCount);
      summary.legendPixels = [before, after];
      check(before > 50 && after < before * 0.1, `pixels of ${big.color}: ${before} before, ${after} after hiding`);
      check(visible === rows.length - big.count, `${visible} points shown after hiding ${big.count} of ${rows.length}`);
      await page.click(`[data-testid=legend-item][data-value="${big.key}"]`);
      await until(page, () => window.__embedviz.visibleCount === window.__embedviz.pointCount, null, "shown again");
    });
    let expected = [];
    await step("a lasso that starts on a point selects exactly the points inside", async () => {
      await page.click("#lasso-button");
      const box = await page.locator("#map-canvas").boundingBox();
      const n = await page.evaluate(() => window.__embedviz.pointCount);
      const pos = await page.evaluate((n) => Array.from({ length: n }, (_, i) => window.__embedviz.screenPositionOf(i)), n);
      // Start on point 0, loop around a circle that passes through it.
      const start = pos[0];
      const r = Math.min(140, box.width / 6);
      const cx = start.x - r, cy = start.y;
      const poly = [];
      for (let a = 0; a <= 2 * Math.PI + 1e-9; a += Math.PI / 24) poly.push([cx + r * Math.cos(a), cy + r * Math.sin(a)]);
      await page.mouse.move(poly[0][0], poly[0][1]);
      await page.mouse.down();
      for (const [px, py] of poly.slice(1)) await page.mouse.move(px, py, { steps: 2 });
      await page.mouse.up();
      const inside = (x, y) => {
        let c = false;
        for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
          const [xi, yi] = poly[i], [xj, yj] = poly[j];
          if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) c = !c;
        }
        return c;
      };
      const rowOf = await page.evaluate((n) => Array.from({ length: n }, (_, i) => window.__embedviz.rowOfPoint(i)), n);
      // Points on the stroke itself may fall either way; leave those within 1.5 px of it out
      // of the check (distance to each segment of the stroke, not just to its corners).
      const toSegment = (x, y, [ax, ay], [bx, by]) => {
        const dx = bx - ax, dy = by - ay;
        const t = Math.max(0, Math.min(1, ((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy || 1)));
        return Math.hypot(ax + t * dx - x, ay + t * dy - y);
      };
      const strokeDistance = (x, y) => Math.min(...poly.map((a, i) => toSegment(x, y, a, poly[(i + 1) % poly.length])));
      const near = (x, y) => strokeDistance(x, y) < 1.5;
      expected = pos.map((p, i) => (p && inside(p.x, p.y) ? rowOf[i] : -1)).filter((rr) => rr >= 0).sort((a, b) => a - b);
      const unsure = new Set(pos.map((p, i) => (p && near(p.x, p.y) ? rowOf[i] : -1)).filter((rr) => rr >= 0));
      const selected = await until(page, () => window.__embedviz.selected?.length > 0 && window.__embedviz.selected, null, "a selection", 15_000);
      const a = selected.filter((rr) => !unsure.has(rr)), b = expected.filter((rr) => !unsure.has(rr));
      if (JSON.stringify(a) !== JSON.stringify(b)) {
        const inA = new Set(a), inB = new Set(b);
        const odd = [...a.filter((r) => !inB.has(r)), ...b.filter((r) => !inA.has(r))];
        const where = odd.slice(0, 5).map((r) => { const p = pos[rowOf.indexOf(r)]; return `row ${r} ${strokeDistance(p.x, p.y).toFixed(2)} px from the stroke`; });
        check(false, `selected ${selected.length} rows, ${expected.length} lie inside the lasso; ${odd.length} differ: ${where.join(", ")}`);
      }
      check(selected.length > 1, `the lasso selected ${selected.length} rows`);
      expected = selected;
      const count = await until(page, (k) => Number(document.getElementById("selection-count")?.dataset.count) === k && document.querySelectorAll("#selection-table tbody tr").length > 0, expected.length, "the table");
      const tableRows = await page.$$eval("#selection-table tbody tr", (els) => els.map((e) => Number(e.dataset.row)));
      check(JSON.stringify(tableRows) === JSON.stringify(expected.slice(0, 100)), `table rows ${tableRows.slice(0, 5)}… vs selected ${expected.slice(0, 5)}…`);
      summary.lassoSelected = expected.length;
      summary.clusterCounts = await page.$$eval("[data-testid=selection-cluster]", (els) => els.map((e) => e.textContent));
      check(summary.clusterCounts.length > 0 && count, "no per-cluster counts");
      await page.click("#lasso-button");
    });
    await step("the export holds exactly the selected rows", async () => {
      await page.uncheck("#export-columns");
      const [download] = await Promise.all([page.waitForEvent("download", { timeout: 30_000 }), page.click("#export-selection-button")]);
      const lines = readFileSync(await download.path(), "utf8").trim().split(/\r?\n/);
      const header = lines[0].replace(/"/g, "").split(",");
      const at = header.indexOf("row");
      const exported = lines.slice(1).map((l) => Number(l.split(",")[at])).sort((a, b) => a - b);
      check(JSON.stringify(exported) === JSON.stringify(expected), `the export has ${exported.length} rows, ${expected.length} selected`);
    });
    await step("a click on a table row centres the map on its point", async () => {
      const row = await page.locator("#selection-table tbody tr").first().getAttribute("data-row");
      await page.locator("#selection-table tbody tr").first().click();
      await page.waitForTimeout(700);
      const p = await page.evaluate((r) => window.__embedviz.screenPositionOf(window.__embedviz.pointOfRow(r)), Number(row));
      const box = await page.locator("#map-canvas").boundingBox();
      check(Math.abs(p.x - (box.x + box.width / 2)) < 30 && Math.abs(p.y - (box.y + box.height / 2)) < 30, `row ${row} is at ${p.x},${p.y}, not the centre`);
    });
    await step("a filter on a column changes the map and table counts", async () => {
      await page.selectOption("#color-by", "topic");
      await until(page, () => document.getElementById("map-legend")?.dataset.column === "topic", null, "legend by topic");
      await page.selectOption("#add-filter", "topic");
      await until(page, () => document.querySelectorAll("[data-testid=filter][data-column=topic] [data-testid=filter-value]").length > 1, null, "topic filter");
      await page.uncheck(`[data-testid=filter][data-column=topic] [data-testid=filter-value][value="${args["drop-topic"]}"]`);
      const want = rows.filter((r) => r.topic !== args["drop-topic"]).length;
      await until(page, (w) => Number(document.getElementById("filter-count")?.dataset.count) === w, want, `${want} points pass`);
      check((await page.evaluate(() => window.__embedviz.visibleCount)) === want, "the map shows another count");
      const wantLinked = expected.filter((r) => rows[r].topic !== args["drop-topic"]);
      await until(page, (w) => Number(document.getElementById("selection-count")?.dataset.count) === w, wantLinked.length, `${wantLinked.length} selected rows pass the filter`);
      summary.filtered = { visible: want, linked: wantLinked.length };
      await page.waitForTimeout(400);
      await page.screenshot({ path: shot("filtered") });
    });
    let view;
    await step("the URL reopens the same view in a new browser context, after login", async () => {
      // Size by a numeric column, and a tooltip column: the link carries them too.
      await page.selectOption("#size-by", "id");
      await until(page, () => new URLSearchParams(location.hash.split("?")[1] ?? "").get("size") === "id", null, "size in the URL");
      await page.evaluate(() => (document.getElementById("tooltip-columns").open = true));
      await page.locator('[data-testid=tooltip-column][value="topic"]').check();
      await until(page, () => new URLSearchParams(location.hash.split("?")[1] ?? "").get("tip") !== null, null, "tooltip columns in the URL");
      // The linked table: sorted by title, descending, without the text column.
      await page.locator('#selection-table th[data-column="title"]').click();
      await until(page, () => document.querySelector('#selection-table th[data-column="title"]')?.dataset.sort === "asc", null, "sorted by title");
      await page.locator('#selection-table th[data-column="title"]').click();
      await until(page, () => document.querySelector('#selection-table th[data-column="title"]')?.dataset.sort === "desc", null, "sorted by title, descending");
      await page.evaluate(() => document.querySelector(".column-picker").setAttribute("open", ""));
      await page.locator('[data-testid=table-column][value="text"]').uncheck();
      await until(page, () => document.querySelector("#selection-table th") && !document.querySelector('#selection-table th[data-column="text"]') && new URLSearchParams(location.hash.split("?")[1] ?? "").get("sort") !== null, null, "the table without its text column");
      await page.waitForTimeout(600); // the camera lands in the URL after 250 ms
      const url = page.url();
      const tableOf = () => ({ headers: [...document.querySelectorAll("#selection-table th[data-column]")].map((th) => `${th.dataset.column}${th.dataset.sort ? `:${th.dataset.sort}` : ""}`), rows: [...document.querySelectorAll("#selection-table tbody tr")].map((tr) => Number(tr.dataset.row)) });
      view = await page.evaluate(() => ({ camera: window.__embedviz.camera(), colorBy: document.getElementById("color-by").value, sizeBy: document.getElementById("size-by").value, tooltip: [...document.querySelectorAll("[data-testid=tooltip-column]:checked")].map((i) => i.value), visible: window.__embedviz.visibleCount, selected: window.__embedviz.selected, linked: Number(document.getElementById("selection-count").dataset.count) }));
      view.table = await page.evaluate(tableOf);
      summary.url = url.slice(url.indexOf("#"));
      const other = await (await newContext()).newPage();
      await other.setViewportSize({ width: 1440, height: 900 });
      await other.goto(url);
      await other.locator("#auth-form").waitFor();
      await other.fill("#auth-email", email);
      await other.fill("#auth-password", "correct horse battery staple");
      await other.click("#login-button");
      await until(other, () => window.__embedviz?.ready === true, null, "the linked map", jobMs(60_000));
      await until(other, (v) => window.__embedviz.visibleCount === v.visible && Number(document.getElementById("selection-count")?.dataset.count) === v.linked, view, "the same counts");
      const got = await other.evaluate(() => ({ camera: window.__embedviz.camera(), colorBy: document.getElementById("color-by").value, sizeBy: document.getElementById("size-by").value, tooltip: [...document.querySelectorAll("[data-testid=tooltip-column]:checked")].map((i) => i.value), selected: window.__embedviz.selected }));
      check(got.colorBy === view.colorBy, `colour by ${got.colorBy}, not ${view.colorBy}`);
      check(view.sizeBy === "id" && got.sizeBy === view.sizeBy, `size by ${got.sizeBy}, not ${view.sizeBy}`);
      check(JSON.stringify(got.tooltip) === JSON.stringify(view.tooltip), `tooltip shows ${got.tooltip}, not ${view.tooltip}`);
      const table = await until(other, (want) => { const t = { headers: [...document.querySelectorAll("#selection-table th[data-column]")].map((th) => `${th.dataset.column}${th.dataset.sort ? `:${th.dataset.sort}` : ""}`), rows: [...document.querySelectorAll("#selection-table tbody tr")].map((tr) => Number(tr.dataset.row)) }; return JSON.stringify(t) === JSON.stringify(want) && t; }, view.table, "the same table (columns, sort, rows)").catch((err) => { throw new Error(`${err.message}; the link's table: ${JSON.stringify(view.table).slice(0, 200)}`); });
      check(table.headers.includes("title:desc") && !table.headers.includes("text"), `table headers ${table.headers}`);
      check(JSON.stringify(got.selected) === JSON.stringify(view.selected), "another selection");
      check(Math.abs(got.camera.x - view.camera.x) < 1e-3 && Math.abs(got.camera.y - view.camera.y) < 1e-3 && Math.abs(got.camera.distance - view.camera.distance) < 1e-3, `camera ${JSON.stringify(got.camera)} vs ${JSON.stringify(view.camera)}`);
      await other.screenshot({ path: shot("reopened") });
      await other.close();
    });
    await step("a viewer sees the map and no enabled write control", async () => {
      const url = page.url();
      const project = url.slice(url.indexOf("#/") + 2).split("/").slice(0, 2).join("/");
      const viewerEmail = newEmail("viewer");
      const viewer = await (await newContext()).newPage();
      await viewer.setViewportSize({ width: 1440, height: 900 });
      await signUp(viewer, viewerEmail, "Viewer");
      await page.goto(`${baseUrl}/#/${project}/members`);
      await page.fill("#member-email", viewerEmail);
      await page.selectOption("#member-role-new", { label: "viewer" });
      await page.click("#add-member-button");
      await until(page, (e) => document.querySelector(`[data-testid=member-row][data-email="${e}"]`), viewerEmail, "the viewer's row");
      await viewer.goto(url);
      await until(viewer, () => window.__embedviz?.ready === true && document.getElementById("workspace")?.dataset.readOnly === "true", null, "the viewer's map", jobMs(60_000));
      await viewer.click("#toggle-data");
      const enabled = await viewer.evaluate(() =>
        [...document.querySelectorAll("#start-embedding-button, #start-projection-button, #retry-button, #cancel-embedding-button, #cancel-projection-button, #delete-dataset-button, [data-testid=delete-embedding], [data-testid=delete-projection], #rename-project-button, #delete-project-button")]
          .filter((b) => !b.disabled && b.offsetParent !== null)
          .map((b) => b.id || b.dataset.testid),
      );
      check(enabled.length === 0, `the viewer sees enabled write controls: ${enabled.join(", ")}`);
      check(await viewer.locator("#read-only-note").isVisible(), "no read-only note");
      summary.viewerReason = await viewer.locator("#start-embedding-button").getAttribute("title");
      await viewer.screenshot({ path: shot("viewer") });
      await viewer.close();
      await page.goto(url);
      await until(page, () => window.__embedviz?.ready === true, null, "the owner's map again", jobMs(60_000));
    });
    await step("switching between two 2-D maps moves the points smoothly and ends on the chosen map", async () => {
      const first = await page.evaluate(() => window.__embedviz.projection);
      await page.click("#toggle-data");
      await page.selectOption("#projection-dimensions", "2");
      await page.selectOption("#projection-method", { label: "UMAP" });
      await page.click("#start-projection-button");
      await until(page, (f) => window.__embedviz?.ready === true && window.__embedviz.projection !== f && !window.__embedviz.view3d, first, "the second 2-D map", jobMs(180_000));
      await page.waitForTimeout(400); // (opening a map folds the data panel away again)
      // Hold the move half-way (a test hook) so the screenshot is of a frame in its middle.
      await page.evaluate(() => (window.__embedvizTransitionHold = 0.5));
      const start = await page.locator("#map-canvas").screenshot();
      await page.selectOption("#map-switch", first);
      await until(page, () => document.getElementById("map-container")?.dataset.transition === "held", null, "the move half-way", 60_000);
      await page.waitForTimeout(300);
      const mid = await page.locator("#map-canvas").screenshot();
      const t = await page.evaluate(() => Number(document.getElementById("map-container").dataset.transitionT));
      await page.evaluate(() => delete window.__embedvizTransitionHold);
      await until(page, (f) => window.__embedviz?.ready === true && window.__embedviz.projection === f && document.getElementById("map-container")?.dataset.transition === "done", first, "the move ends on the first map", 30_000);
      await page.waitForTimeout(300);
      const end = await page.locator("#map-canvas").screenshot();
      const frames = await page.evaluate(() => Number(document.getElementById("map-container").dataset.transitionFrames));
      summary.transition = { midT: t, frames };
      check(t > 0.2 && t < 0.8, `the mid-move frame is at t=${t}`);
      check(!mid.equals(start) && !mid.equals(end) && !start.equals(end), "the mid-move frame equals the start or the end");
      check(frames >= 3, `the move drew ${frames} frames`);
      check((await page.locator("#map-switch").inputValue()) === first, "the switcher shows another map");
      await page.screenshot({ path: shot("switched") });
    });
    await step("a 3-D map draws and rotates", async () => {
      await page.click("#toggle-data");
      await page.selectOption("#projection-dimensions", "3");
      await page.selectOption("#projection-method", { label: "PCA" });
      await page.click("#start-projection-button");
      await until(page, () => window.__embedviz?.ready === true && window.__embedviz.view3d === true, null, "the 3-D map", jobMs(120_000));
      await page.waitForTimeout(300);
      const png1 = await page.locator("#map-canvas").screenshot();
      const box = await page.locator("#map-canvas").boundingBox();
      const yaw0 = await page.evaluate(() => window.__embedviz.orbit().yaw);
      await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
      await page.mouse.down();
      await page.mouse.move(box.x + box.width / 2 + 150, box.y + box.height / 2 + 40, { steps: 8 });
      await page.mouse.up();
      await page.waitForTimeout(300);
      const png2 = await page.locator("#map-canvas").screenshot();
      const yaw1 = await page.evaluate(() => window.__embedviz.orbit().yaw);
      check(yaw1 > yaw0 + 0.5, `yaw ${yaw0} → ${yaw1}`);
      check(!png1.equals(png2), "the picture did not change when rotating");
      summary.view3d = { points: await page.evaluate(() => window.__embedviz.pointCount), yaw: [yaw0, yaw1] };
      check(summary.view3d.points === rows.length, `the 3-D map has ${summary.view3d.points} points`);
      await page.screenshot({ path: shot("3d") });
    });
    await step("a reload during an embedding shows its progress again, then a usable result", async () => {
      // A bigger file so the embedding runs long enough to reload in the middle of it
      // (five copies of at most 2,000 rows of the table: long enough, also on a big table).
      const many = [];
      for (let k = 0; k < 5; k++) for (const r of rows.slice(0, 2000)) many.push({ ...r, text: `${r.text} (${k})` });
      const csv = ["id,title,text,topic", ...many.map((r, i) => [i, r.title, r.text, r.topic].map((v) => `"${String(v).replace(/"/g, '""')}"`).join(","))].join("\n");
      const big = join(mkdtempSync(join(tmpdir(), "ws-")), "big.csv");
      writeFileSync(big, csv);
      await page.goto(`${baseUrl}/#/${(await page.evaluate(() => location.hash)).split("/").slice(1, 3).join("/")}?datasets`);
      await page.locator("#upload-input").waitFor();
      await uploadAndOpen(page, big);
      await page.click("#start-embedding-button");
      await until(page, () => !document.getElementById("embedding-progress")?.hidden && ["running", "pending"].includes(document.getElementById("embedding-progress")?.dataset.state) && !document.getElementById("cancel-embedding-button")?.hidden, null, "embedding started", 30_000);
      await page.reload();
      const seen = await until(page, () => document.getElementById("embedding-progress")?.dataset.state && !document.getElementById("embedding-progress").hidden && document.getElementById("embedding-progress").dataset.state, null, "progress after the reload", 30_000);
      summary.afterReload = seen;
      summary.centreAfterReload = await page.evaluate(() => document.getElementById("map-state")?.dataset.state);
      await page.screenshot({ path: shot("reloaded") });
      await until(page, () => document.getElementById("embedding-progress")?.dataset.state === "succeeded", null, "the embedding ends", 180_000);
      await until(page, () => !document.getElementById("start-projection-button").disabled && document.getElementById("embedding-select").options.length > 0, null, "the map form is usable", 10_000);
      check(["running", "pending", "succeeded"].includes(seen), `after the reload the embedding shows ${seen}`);
    });
  },

  /**
   * A failed map and its Retry (issue 10, point 3). The failure is real: when the scenario
   * writes --arm-file and starts a t-SNE map, the caller (tests/test_web_client.py) kills the
   * projection service's fitting process that is busy with it (SIGKILL, as the kernel's OOM
   * killer would), so the server fails the job at run time. The workspace shows the job's
   * message in place of the map with Retry; Retry starts a new job that ends on a usable map.
   */
  async retry({ newContext }) {
    check(args.csv, "--csv is required");
    check(args["arm-file"], "--arm-file is required: the caller kills the map's fitting process once it is written");
    const rows = parseCsv(readFileSync(fromCaller(args.csv), "utf8"));
    const shot = (name) => (screenshotPath ? screenshotPath.replace(/\.png$/, `-${name}.png`) : join(tmpdir(), `${name}.png`));
    page = await (await newContext()).newPage();
    await page.setViewportSize({ width: 1440, height: 900 });
    page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
    await step("sign up, upload, embed", async () => {
      await signUp(page, newEmail("retry"));
      await createProject(page, "retry");
      await uploadAndOpen(page, fromCaller(args.csv));
      await page.click("#start-embedding-button");
      await until(page, () => !document.getElementById("start-projection-button")?.disabled, null, "map form", 120_000);
    });
    let failedName = "";
    await step("a map whose fitting process dies fails, and says so in place of the map with Retry", async () => {
      await page.selectOption("#projection-method", { label: "t-SNE" });
      writeFileSync(fromCaller(args["arm-file"]), "armed\n");
      await page.click("#start-projection-button");
      const state = await until(page, () => ["failed", "ready"].includes(document.getElementById("map-state")?.dataset.state) && document.getElementById("map-state").dataset.state, null, "the map job ends", 180_000);
      check(state === "failed", `the map ended ${state}: its fitting process was not killed in time`);
      summary.failedText = (await page.locator("#map-state").innerText()).trim();
      check(/The map failed: .*(killed|SIGKILL)/s.test(summary.failedText), `the failure reads: ${summary.failedText}`);
      check(await page.locator("#retry-button").isVisible(), "no Retry button");
      check(!(await page.evaluate(() => window.__embedviz?.ready === true)), "a map is drawn although the job failed");
      failedName = await page.$eval('[data-testid=projection-link][data-state="failed"]', (a) => a.getAttribute("href").slice(2));
      await page.screenshot({ path: shot("failed") });
    });
    await step("Retry starts a new job that ends on a usable map", async () => {
      await page.click("#retry-button");
      await until(page, () => window.__embedviz?.ready === true, null, "the retried map", 180_000);
      const got = await page.evaluate(() => ({ projection: window.__embedviz.projection, points: window.__embedviz.pointCount }));
      check(got.projection !== failedName, `the map shown is the failed one (${failedName})`);
      check(got.points === rows.length, `the retried map has ${got.points} points, the file ${rows.length} rows`);
      check((await page.locator("#map-state").getAttribute("data-state")) === "ready", "the map state is not ready");
      await noBanner(page, "after the retry");
      summary.retried = { failed: failedName, ...got };
      await page.screenshot({ path: shot("retried") });
    });
  },

  /** The map: colour by a column, search by meaning, a point's neighbours, lasso, export. */
  async map({ newContext }) {
    check(args.csv, "--csv is required");
    const rows = parseCsv(readFileSync(fromCaller(args.csv), "utf8"));
    page = await (await newContext()).newPage();
    page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
    await step("sign up, upload, embed, project", async () => {
      await signUp(page, newEmail("map"));
      await createProject(page, "map");
      await uploadAndOpen(page, fromCaller(args.csv));
      await embedAndProject(page, "PCA");
    });
    await step("colour by topic", async () => {
      await page.selectOption("#color-by", "topic");
      await until(page, () => document.getElementById("map-legend")?.dataset.column === "topic", null, "legend by topic");
      const legend = await page.$$eval("[data-testid=legend-item]", (els) => els.map((e) => [e.dataset.value, Number(e.querySelector(".legend-size").textContent.replace(/,/g, ""))]));
      const want = {};
      for (const r of rows) want[r.topic] = (want[r.topic] ?? 0) + 1;
      for (const [v, c] of legend) check(want[v] === c, `legend says ${c} × ${v}, the file has ${want[v]}`);
      check(legend.length === Object.keys(want).length, `legend has ${legend.length} values, the file ${Object.keys(want).length}`);
      summary.legend = legend.length;
    });
    await step("search by meaning", async () => {
      await page.fill("#map-search", "volcanic eruption and ash");
      await page.click("#map-search-button");
      await until(page, () => document.getElementById("search-results")?.dataset.state === "done", null, "search results");
      const results = await page.$$eval("[data-testid=search-result]", (els) => els.map((e) => e.querySelector(".match-text").textContent));
      check(results.length > 0, "no results");
      check(/volcano/i.test(results[0]), `first result is "${results[0]}"`);
      summary.search = results.slice(0, 3);
    });
    await step("click a point: its nearest neighbours with their text", async () => {
      await page.locator("#map-canvas").scrollIntoViewIfNeeded();
      const row = await clickRowForNeighbours(page, 0);
      const items = await page.$$eval("[data-testid=neighbor-item]", (els) => els.map((e) => [Number(e.dataset.row), e.querySelector(".match-text").textContent]));
      check(items.length >= 5, `only ${items.length} neighbours`);
      check(items.every(([, t]) => t && t !== "(row not found)"), "a neighbour has no text");
      for (const [r, t] of items) check(t === rows[r].text, `neighbour row ${r} shows "${t}", the file has "${rows[r].text}"`);
      summary.clickedRow = row;
      summary.neighbors = items.slice(0, 3);
      if (row === 0) check(items[0][0] === 1, `row 0's nearest neighbour is row ${items[0][0]}, not its near-duplicate row 1`);
    });
    await step("lasso a region into a table", async () => {
      await page.keyboard.press("Escape");
      await page.click("#lasso-button");
      await page.locator("#map-canvas").scrollIntoViewIfNeeded();
      const box = await page.locator("#map-canvas").boundingBox();
      // A loop around the middle of the densest cluster: take the first point's position.
      const c = await page.evaluate(() => window.__embedviz.screenPositionOf(0));
      const r = 110;
      await page.mouse.move(c.x + r, c.y);
      await page.mouse.down();
      for (let a = 0; a <= 2 * Math.PI + 0.3; a += 0.25) await page.mouse.move(c.x + r * Math.cos(a), c.y + r * Math.sin(a), { steps: 2 });
      await page.mouse.up();
      const count = await until(page, () => Number(document.getElementById("selection-count")?.dataset.count) > 1 && document.querySelectorAll("#selection-table tbody tr").length && Number(document.getElementById("selection-count").dataset.count), null, "selection table", 15_000);
      const tableRows = await page.$$eval("#selection-table tbody tr", (els) => els.map((e) => Number(e.dataset.row)));
      const selected = await page.evaluate(() => window.__embedviz.selected);
      check(tableRows.length === Math.min(100, count) && JSON.stringify(tableRows) === JSON.stringify(selected.slice(0, 100)), "the table rows are not the selected rows");
      summary.lassoSelected = count;
      summary.canvas = box;
    });
    await step("export the selection as CSV", async () => {
      // With the dataset's columns; a server that cannot add them yet says so, and the
      // export goes on without them.
      await page.locator("#map-canvas").scrollIntoViewIfNeeded();
      let downloading = page.waitForEvent("download", { timeout: 30_000 });
      await page.click("#export-selection-button");
      const outcome = await Promise.race([
        downloading.then(() => "download"),
        page.waitForFunction(() => document.getElementById("export-status")?.dataset.state === "error", null, { timeout: 30_000 }).then(() => "error"),
      ]);
      if (outcome === "error") {
        summary.exportColumnsRefused = (await bannerOf(page)).trim();
        check(/column/i.test(summary.exportColumnsRefused), `export failed: ${summary.exportColumnsRefused}`);
        await page.uncheck("#export-columns");
        downloading = page.waitForEvent("download", { timeout: 30_000 });
        await page.click("#export-selection-button");
      }
      const download = await downloading;
      const path = await download.path();
      const text = readFileSync(path, "utf8");
      const lines = text.trim().split(/\r?\n/);
      check(lines.length === summary.lassoSelected + 1, `the export has ${lines.length - 1} rows, ${summary.lassoSelected} were selected`);
      summary.exportHeader = lines[0];
      if (!summary.exportColumnsRefused) check(lines[0].replace(/"/g, "").split(",").includes("text"), `the export lacks the dataset's columns: ${lines[0]}`);
      summary.exportFile = download.suggestedFilename();
    });
    await step("export everything", async () => {
      const [download] = await Promise.all([page.waitForEvent("download", { timeout: 30_000 }), page.click("#export-all-button")]);
      const text = readFileSync(await download.path(), "utf8");
      check(text.trim().split(/\r?\n/).length === rows.length + 1, "the full export lacks rows");
      if (screenshotPath) await page.screenshot({ path: screenshotPath, fullPage: true });
    });
  },
};

// ---------- run ----------

const scenario = scenarios[args.scenario];
if (!scenario) {
  console.error(`unknown scenario ${args.scenario}; one of ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
const timer = setTimeout(() => {
  summary.error = `timed out after ${overallMs / 1000} s`;
  console.log(JSON.stringify(summary));
  process.exit(1);
}, overallMs);

let code = 0;
const b = await launchBrowser();
try {
  await scenario(b);
  summary.ok = true;
} catch (err) {
  if (err instanceof Blocked) {
    code = 3;
    summary.blocked = err.message;
  } else {
    code = 1;
    summary.error = err?.message ?? String(err);
  }
  console.error(`${args.scenario} ${code === 3 ? "BLOCKED" : "FAILED"}: ${summary.blocked ?? summary.error}`);
  if (page && screenshotPath) await page.screenshot({ path: screenshotPath, fullPage: true }).catch(() => {});
} finally {
  clearTimeout(timer);
  if (consoleErrors.length) summary.consoleErrors = consoleErrors.slice(0, 10);
  summary.seconds = Math.round((Date.now() - started) / 100) / 10;
  await b.close();
}
console.log(JSON.stringify(summary));
process.exit(code);
