// The map bench: builds nothing; serves the bench page that `vite build --config
// bench/vite.config.ts` wrote (default ../../build/bench-map-web), opens it in headless
// Chromium with the scenarios' flags (e2e/browser.mjs: software GL) and runs
// window.bench.run(n) for each size. Progress on stderr; the last stdout line is JSON.
// node e2e/bench-map.mjs [--dir DIR] [--sizes 100000,1000000] [--repeats 15]
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, resolve } from "node:path";
import { launch } from "./browser.mjs";

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const dir = resolve(opt("dir", new URL("../../../build/bench-map-web", import.meta.url).pathname));
const sizes = opt("sizes", "100000,1000000").split(",").map(Number);
const repeats = Number(opt("repeats", "15"));
const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".map": "application/json" };

const server = createServer(async (req, res) => {
  try {
    const path = new URL(req.url, "http://x").pathname;
    const body = await readFile(join(dir, path === "/" ? "map.html" : path));
    res.writeHead(200, { "content-type": types[extname(path)] ?? "application/octet-stream" });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const url = `http://127.0.0.1:${server.address().port}/map.html`;
const { context, close } = await launch();
let out;
try {
  const page = context.pages()[0] ?? (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  await page.waitForFunction(() => document.title === "bench ready", null, { timeout: 60_000 });
  const results = [];
  for (const n of sizes) {
    process.stderr.write(`bench-map: ${n} points…\n`);
    results.push(await page.evaluate(([n, r]) => window.bench.run(n, r), [n, repeats]));
    process.stderr.write(`bench-map: ${JSON.stringify(results.at(-1))}\n`);
  }
  out = { ok: errors.length === 0, errors, results, userAgent: await page.evaluate(() => navigator.userAgent) };
} catch (e) {
  out = { ok: false, error: String(e) };
} finally {
  await close();
  server.close();
}
console.log(JSON.stringify(out));
process.exit(out.ok ? 0 : 1);
