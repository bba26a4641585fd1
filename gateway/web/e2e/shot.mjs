#!/usr/bin/env node
// A screenshot of one finished map on a running stack, for notes and docs:
//   node e2e/shot.mjs --base-url http://127.0.0.1:8080 --email E --password P \
//     --map projects/…/projections/… --screenshot map.png [--timeout-s 600]
// Logs in through the login form, opens the map's workspace, waits until the map has drawn
// every point (window.__embedviz.ready), writes the screenshot. The last stdout line is a
// JSON summary: the map's status line ("N points · K clusters"), the legend's entries
// (label and size), and how long the map took to appear.
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { launch, logIn } from "./browser.mjs";

const { values: args } = parseArgs({
  options: {
    "base-url": { type: "string" },
    email: { type: "string" },
    password: { type: "string" },
    map: { type: "string" },
    screenshot: { type: "string", default: "map.png" },
    "timeout-s": { type: "string", default: "600" },
  },
});
if (!args["base-url"] || !args.email || !args.password || !args.map) {
  console.error("usage: shot.mjs --base-url URL --email E --password P --map PROJECTION_NAME [--screenshot OUT.png] [--timeout-s 600]");
  process.exit(2);
}
const baseUrl = args["base-url"].replace(/\/+$/, "");
const out = resolve(process.env.INIT_CWD ?? process.cwd(), args.screenshot);
const timeout = Number(args["timeout-s"]) * 1000;
const { context, close } = await launch();
const summary = { ok: false, screenshot: out };
try {
  const page = context.pages()[0] ?? (await context.newPage());
  await page.setViewportSize({ width: 1440, height: 900 });
  await logIn(page, baseUrl, args.email, args.password);
  const began = Date.now();
  await page.goto(`${baseUrl}/#/${args.map}`);
  await page.waitForFunction(() => window.__embedviz?.ready === true, null, { timeout, polling: 500 });
  summary.mapSeconds = (Date.now() - began) / 1000;
  await page.waitForTimeout(1500); // labels are placed after the first frame
  summary.header = await page.evaluate(() => document.getElementById("map-status")?.textContent?.trim() ?? "");
  summary.legend = await page.evaluate(() => [...document.querySelectorAll("[data-testid=legend-item]")].map((e) => e.textContent.trim().replace(/\s+/g, " ")));
  await page.screenshot({ path: out });
  summary.ok = true;
} catch (e) {
  summary.error = String(e);
} finally {
  await close();
}
console.log(JSON.stringify(summary));
process.exit(summary.ok ? 0 : 1);
