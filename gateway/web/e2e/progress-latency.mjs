#!/usr/bin/env node
// The browser half of tests/bench/progress.py: logs in to a running stack, opens a dataset
// whose embedding is running (queued), and reports each progress event the page shows.
//   node e2e/progress-latency.mjs --base-url URL --email E --password P --dataset NAME
// The bench publishes progress events on NATS with the stage "event-N"; the page follows the
// job over WatchEmbedding (grpc-web through Envoy) and renders it in its progress bars. For
// each new N this prints one JSON line on stdout, {"seen":N,"dom":T1,"frame":T2}: T1 when the
// progress text changed in the DOM (a MutationObserver), T2 when the first animation frame
// after it began (the frame that paints it); both are Unix epoch milliseconds from the page's
// clock (performance.timeOrigin + performance.now()), the clock the bench's time.time() reads.
// Prints {"ready":true} once it is watching; ends when stdin closes, with a last line
// {"ok":true,...} (or {"ok":false,"error":...}, exit 1).
import { parseArgs } from "node:util";
import { launch, logIn } from "./browser.mjs";

const { values: args } = parseArgs({
  options: {
    "base-url": { type: "string" },
    email: { type: "string" },
    password: { type: "string" },
    dataset: { type: "string" },
    "timeout-s": { type: "string", default: "300" },
  },
});
if (!args["base-url"] || !args.email || !args.password || !args.dataset) {
  console.error("usage: progress-latency.mjs --base-url URL --email E --password P --dataset NAME");
  process.exit(2);
}
const baseUrl = args["base-url"].replace(/\/+$/, "");
const log = (...m) => console.error("[progress-latency]", ...m);
const say = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

const stdinClosed = new Promise((resolve) => {
  process.stdin.on("end", resolve);
  process.stdin.on("close", resolve);
  process.stdin.resume();
});

const { context, close } = await launch();
const errors = [];
let out;
const giveUp = setTimeout(() => {
  say({ ok: false, error: `gave up after ${args["timeout-s"]} s` });
  process.exit(1);
}, Number(args["timeout-s"]) * 1000);
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.exposeFunction("__progressSeen", (n, dom, frame) => say({ seen: n, dom, frame }));

  log("log in");
  await logIn(page, baseUrl, args.email, args.password);

  log("open the dataset");
  await page.goto(`${baseUrl}/#/${args.dataset}`);
  await page.locator('[data-testid="embedding-progress-text"]').waitFor({ state: "attached", timeout: 60_000 });

  await page.evaluate(() => {
    const now = () => performance.timeOrigin + performance.now();
    const ids = ["job-progress-text", "embedding-progress-text"];
    let last = 0;
    const look = () => {
      for (const id of ids) {
        const m = /event-(\d+)/.exec(document.querySelector(`[data-testid="${id}"]`)?.textContent ?? "");
        const n = m ? Number(m[1]) : 0;
        if (n > last) {
          last = n;
          const dom = now();
          requestAnimationFrame(() => window.__progressSeen(n, dom, now()));
        }
      }
    };
    new MutationObserver(look).observe(document.body, { subtree: true, childList: true, characterData: true });
    look();
  });
  say({ ready: true });
  log("watching; waiting for the bench to finish");
  await stdinClosed;
  const banner = await page.evaluate(() => {
    const b = document.getElementById("error-banner");
    return b && !b.hidden ? b.textContent ?? "" : "";
  });
  // The page's clock against Date.now(): the bench compares the page's times with its own.
  const clockSkewMs = await page.evaluate(() => performance.timeOrigin + performance.now() - Date.now());
  out = {
    ok: errors.length === 0 && !banner, errors, banner, clockSkewMs,
    userAgent: await page.evaluate(() => navigator.userAgent),
  };
} catch (e) {
  out = { ok: false, error: String(e).split("\n")[0], errors };
} finally {
  clearTimeout(giveUp);
  await close();
}
say(out);
process.exit(out.ok ? 0 : 1);
