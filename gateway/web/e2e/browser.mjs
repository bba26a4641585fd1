// Launches Debian's chromium headless through playwright-core with a fresh profile.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export async function launch() {
  const executablePath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
  const userDataDir = mkdtempSync(join(tmpdir(), "embedviz-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 1000 },
  });
  const close = async () => {
    await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  };
  return { context, close };
}

/** A browser for scenarios that need several users: each newContext() is a separate profile. */
export async function launchBrowser() {
  const executablePath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
  const browser = await chromium.launch({ executablePath, headless: true, args: CHROMIUM_ARGS });
  const newContext = () => browser.newContext({ viewport: { width: 1280, height: 1000 }, acceptDownloads: true });
  return { browser, newContext, close: () => browser.close().catch(() => {}) };
}

/** Logs in through the login form and waits for the projects screen. */
export async function logIn(page, baseUrl, email, password, timeout = 60_000) {
  await page.goto(`${baseUrl}/#/login`, { timeout });
  await page.locator("#auth-form").waitFor({ timeout });
  await page.fill("#auth-email", email);
  await page.fill("#auth-password", password);
  await page.click("#login-button");
  await page.waitForFunction(() => document.getElementById("app")?.dataset.screen === "projects", null, { timeout });
}
