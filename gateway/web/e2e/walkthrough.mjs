#!/usr/bin/env node
// Browser walkthrough against a running embedviz stack:
//   node e2e/walkthrough.mjs --base-url http://127.0.0.1:8080 --csv rows.csv --screenshot map.png
// Signs up a fresh user, creates a project, uploads the CSV through the file input, embeds
// the suggested text column, makes a UMAP map, checks the map shows every row, hovers a
// point and checks its tooltip. The last stdout line is a JSON summary; exit code 1 on
// any failure, with the reason on stderr (and in the JSON as "error").
import { readFileSync } from "node:fs";
import { basename, resolve } from "node:path";
import { parseArgs } from "node:util";
import { launch } from "./browser.mjs";

const { values: args } = parseArgs({
  options: {
    "base-url": { type: "string" },
    csv: { type: "string" },
    screenshot: { type: "string", default: "walkthrough.png" },
    method: { type: "string", default: "UMAP" },
    "timeout-s": { type: "string", default: "300" },
    "text-column": { type: "string" },
    "label-column": { type: "string" },
  },
});
if (!args["base-url"] || !args.csv) {
  console.error("usage: walkthrough.mjs --base-url URL --csv FILE [--screenshot OUT.png] [--method UMAP|PCA] [--timeout-s 300] [--text-column NAME] [--label-column NAME]");
  process.exit(2);
}
const baseUrl = args["base-url"].replace(/\/+$/, "");
// Under `npm run e2e` the cwd is gateway/web; resolve paths against where the user ran npm.
const fromCaller = (p) => resolve(process.env.INIT_CWD ?? process.cwd(), p);
args.csv = fromCaller(args.csv);
args.screenshot = fromCaller(args.screenshot);
const overallMs = Number(args["timeout-s"]) * 1000;
const started = Date.now();
const left = () => Math.max(1000, overallMs - (Date.now() - started));
const log = (...m) => console.error(`[walkthrough +${((Date.now() - started) / 1000).toFixed(1)}s]`, ...m);

// Rows in the CSV (quoted fields may hold new lines), to check the map shows them all.
function countCsvRows(text) {
  let rows = 0, inQuotes = false, sawData = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') inQuotes = !inQuotes;
    else if ((c === "\n" || c === "\r") && !inQuotes) {
      if (sawData) rows++;
      sawData = false;
      if (c === "\r" && text[i + 1] === "\n") i++;
    } else sawData = true;
  }
  if (sawData) rows++;
  return Math.max(0, rows - 1); // minus the header
}

const summary = { ok: false, points: 0, rows: 0, csvRows: 0, nonBackgroundPixels: 0, tooltip: "", quality: "", screenshot: args.screenshot, seconds: 0 };
const consoleErrors = [];
let browser;
let page;

async function step(name, fn) {
  log(name);
  try {
    return await fn();
  } catch (err) {
    const banner = page ? await page.locator("#error-banner:visible").textContent({ timeout: 500 }).catch(() => null) : null;
    throw new Error(`${name}: ${err?.message?.split("\n")[0] ?? err}${banner ? ` — the page says: ${banner.trim()}` : ""}`);
  }
}

/** Waits for `selector` to appear, failing at once if the page shows an error instead. */
async function expectElement(selector) {
  const handle = await page.waitForFunction(
    (selector) => {
      const banner = document.getElementById("error-banner");
      if (banner && !banner.hidden && banner.textContent) return { error: banner.textContent };
      return document.querySelector(selector) ? { ok: true } : false;
    },
    selector,
    { timeout: Math.min(left(), 60_000), polling: 100 },
  );
  const r = await handle.jsonValue();
  if (r.error) throw new Error(r.error);
}

/** Waits for a progress bar to reach a terminal state; fails fast on failed/cancelled or an error banner. */
async function waitForJob(id, what) {
  const handle = await page.waitForFunction(
    (id) => {
      const banner = document.getElementById("error-banner");
      if (banner && !banner.hidden && banner.textContent) return { error: banner.textContent };
      const el = document.getElementById(id);
      const state = el?.dataset.state;
      const text = document.querySelector(`[data-testid="${id}-text"]`)?.textContent ?? "";
      if (state === "succeeded" || state === "failed" || state === "cancelled") return { state, text };
      return false;
    },
    id,
    { timeout: left(), polling: 250 },
  );
  const r = await handle.jsonValue();
  if (r.error) throw new Error(`${what} stopped: ${r.error}`);
  if (r.state !== "succeeded") throw new Error(`${what} ${r.state}: ${r.text}`);
  log(`${what} done: ${r.text}`);
}

async function countNonBackgroundPixels() {
  const canvas = page.locator("#map-canvas");
  const png = await canvas.screenshot({ timeout: left() });
  const background = await page.evaluate(() => window.__embedviz?.background ?? "#ffffff");
  return page.evaluate(
    async ({ b64, background }) => {
      const img = new Image();
      img.src = `data:image/png;base64,${b64}`;
      await img.decode();
      const c = document.createElement("canvas");
      c.width = img.width;
      c.height = img.height;
      const ctx = c.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const d = ctx.getImageData(0, 0, c.width, c.height).data;
      const bg = [1, 3, 5].map((i) => parseInt(background.slice(i, i + 2), 16));
      let n = 0;
      for (let i = 0; i < d.length; i += 4) {
        if (Math.abs(d[i] - bg[0]) + Math.abs(d[i + 1] - bg[1]) + Math.abs(d[i + 2] - bg[2]) > 24) n++;
      }
      return n;
    },
    { b64: png.toString("base64"), background },
  );
}

async function main() {
  const csvText = readFileSync(args.csv, "utf8");
  summary.csvRows = countCsvRows(csvText);
  const b = await launch();
  browser = b.close;
  page = b.context.pages()[0] ?? (await b.context.newPage());
  page.setDefaultTimeout(60_000);
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push(`page error: ${e.message}`));

  const email = `walkthrough-${Date.now()}-${Math.random().toString(36).slice(2, 8)}@example.com`;
  await step("open the login screen", async () => {
    await page.goto(`${baseUrl}/#/login`, { timeout: 30_000 });
    await page.locator("#auth-form").waitFor({ timeout: 30_000 });
  });
  await step(`sign up ${email}`, async () => {
    await page.fill("#auth-email", email);
    await page.fill("#auth-password", "correct horse battery staple");
    await page.fill("#auth-display-name", "Walkthrough");
    await page.click("#signup-button");
    await expectElement("#create-project-form");
  });
  await step("create a project", async () => {
    await page.fill("#new-project-name", `walkthrough ${new Date().toISOString()}`);
    await page.click("#create-project-button");
    await expectElement("#upload-input");
  });
  await step(`upload ${basename(args.csv)}`, async () => {
    await page.setInputFiles("#upload-input", args.csv);
    // A small file uploads and imports faster than one poll: the page may already have
    // moved on to the dataset screen, so that counts as both jobs having succeeded.
    const handle = await page.waitForFunction(
      () => {
        const banner = document.getElementById("error-banner");
        if (banner && !banner.hidden && banner.textContent) return { error: banner.textContent };
        if (document.getElementById("app")?.dataset.screen === "dataset") return { state: "succeeded" };
        for (const id of ["upload-progress", "import-progress"]) {
          const state = document.getElementById(id)?.dataset.state;
          if (state === "failed" || state === "cancelled") {
            return { error: document.querySelector(`[data-testid="${id}-text"]`)?.textContent ?? state };
          }
        }
        return false;
      },
      null,
      { timeout: left(), polling: 100 },
    );
    const outcome = await handle.jsonValue();
    if (outcome.error) throw new Error(`upload stopped: ${outcome.error}`);
    log("upload and import done");
    await expectElement("[data-testid=text-column]");
  });
  await step("pick the text column", async () => {
    const wanted = args["text-column"];
    if (wanted) {
      for (const box of await page.locator("[data-testid=text-column]").all()) {
        await box.setChecked((await box.getAttribute("value")) === wanted);
      }
    }
    const chosen = await page.$$eval("[data-testid=text-column]:checked", (els) => els.map((e) => e.value));
    if (!chosen.length) await page.locator("[data-testid=text-column]").first().check();
    log("text columns:", (await page.$$eval("[data-testid=text-column]:checked", (els) => els.map((e) => e.value))).join(", "));
    await page.locator("#model-select option").first().waitFor({ state: "attached" });
  });
  await step("embed", async () => {
    await page.click("#start-embedding-button");
    await waitForJob("embedding-progress", "embedding");
  });
  await step(`project with ${args.method}`, async () => {
    await expectElement("#start-projection-button:enabled");
    await page.selectOption("#projection-method", { label: args.method.toUpperCase() });
    if (args["label-column"]) await page.selectOption("#label-column", { value: args["label-column"] });
    await page.click("#start-projection-button");
    await waitForJob("projection-progress", "projection");
  });
  await step("wait for the map", async () => {
    await page.waitForFunction(() => window.__embedviz?.ready === true, null, { timeout: left() });
    summary.points = await page.evaluate(() => window.__embedviz.pointCount);
    summary.rows = Number(await page.locator("#dataset-summary").getAttribute("data-rows"));
    if (summary.points !== summary.rows) throw new Error(`the map shows ${summary.points} points but the dataset has ${summary.rows} rows`);
    if (summary.rows !== summary.csvRows) log(`note: the CSV has ${summary.csvRows} data lines, the dataset ${summary.rows} rows`);
    if (summary.points === 0) throw new Error("the map has no points");
    await page.waitForTimeout(500); // let the first frames land
    summary.nonBackgroundPixels = await countNonBackgroundPixels();
    if (summary.nonBackgroundPixels < Math.min(summary.points, 50)) throw new Error(`the map canvas looks empty (${summary.nonBackgroundPixels} coloured pixels)`);
    // the map's quality figures over its corner
    summary.quality = ((await page.locator("#map-quality").textContent({ timeout: 5000 }).catch(() => "")) ?? "").trim();
  });
  await step("hover a point", async () => {
    let shown = null;
    const tries = Math.min(summary.points, 25);
    for (let k = 0; k < tries && !shown; k++) {
      const i = Math.floor((k * summary.points) / tries);
      const pos = await page.evaluate((i) => window.__embedviz.screenPositionOf(i), i);
      if (!pos) continue;
      await page.mouse.move(pos.x - 30, pos.y - 30);
      await page.mouse.move(pos.x, pos.y, { steps: 5 });
      try {
        await page.waitForFunction(() => {
          const t = document.getElementById("map-tooltip");
          return t && !t.hidden && t.dataset.loaded === "true";
        }, null, { timeout: 5000 });
        shown = (await page.locator("#map-tooltip-text").textContent())?.trim();
      } catch {
        /* that point may be covered by another; try the next */
      }
    }
    if (!shown) throw new Error("no tooltip appeared when hovering points");
    if (shown.startsWith("could not load the row")) throw new Error(`tooltip: ${shown}`);
    summary.tooltip = shown.slice(0, 200);
  });
  await step("save the screenshot", async () => {
    await page.screenshot({ path: args.screenshot, fullPage: true });
  });
  summary.ok = true;
}

const timer = setTimeout(() => {
  console.error(`walkthrough: gave up after ${overallMs / 1000} s`);
  summary.error = `timed out after ${overallMs / 1000} s`;
  console.log(JSON.stringify(summary));
  process.exit(1);
}, overallMs + 15_000);

let code = 0;
try {
  await main();
} catch (err) {
  code = 1;
  summary.error = err?.message ?? String(err);
  console.error(`walkthrough FAILED: ${summary.error}`);
  if (page) await page.screenshot({ path: args.screenshot, fullPage: true }).catch(() => {});
} finally {
  clearTimeout(timer);
  if (consoleErrors.length) summary.consoleErrors = consoleErrors.slice(0, 20);
  summary.seconds = Math.round((Date.now() - started) / 100) / 10;
  await browser?.().catch(() => {});
}
console.log(JSON.stringify(summary));
process.exit(code);
