#!/usr/bin/env node
// No backend needed: serves dist/ with `vite preview` (or uses --base-url), opens it in
// headless chromium and checks the login screen renders without console errors.
import { spawn } from "node:child_process";
import { parseArgs } from "node:util";
import { launch } from "./browser.mjs";

const { values: args } = parseArgs({ options: { "base-url": { type: "string" }, port: { type: "string", default: "4173" } } });
let server;
let baseUrl = args["base-url"];
if (!baseUrl) {
  server = spawn("node_modules/.bin/vite", ["preview", "--port", args.port, "--strictPort", "--host", "127.0.0.1"], { stdio: ["ignore", "pipe", "inherit"] });
  baseUrl = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("vite preview did not start in 30 s")), 30_000);
    server.stdout.on("data", (d) => {
      if (String(d).includes(`:${args.port}`)) {
        clearTimeout(t);
        resolve(`http://127.0.0.1:${args.port}`);
      }
    });
    server.on("exit", (c) => reject(new Error(`vite preview exited with ${c}`)));
  });
}

const problems = [];
const { context, close } = await launch();
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") problems.push(`console ${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  await page.goto(`${baseUrl}/`);
  await page.locator("#auth-form").waitFor({ timeout: 15_000 });
  for (const id of ["auth-email", "auth-password", "login-button", "signup-button"]) {
    if (!(await page.locator(`#${id}`).isVisible())) problems.push(`#${id} is not visible`);
  }
  if ((await page.evaluate(() => location.hash)) !== "#/login") problems.push("not redirected to #/login");
  await page.waitForTimeout(500);
} catch (err) {
  problems.push(err.message);
} finally {
  await close();
  server?.kill();
}
console.log(JSON.stringify({ ok: problems.length === 0, problems }));
process.exit(problems.length ? 1 : 0);
