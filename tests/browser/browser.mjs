// Debian's chromium driven by playwright-core (no browser download), and where the tests put
// their screenshots and node logs: tests/browser/artifacts/ (git-ignored).
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const artifacts = path.join(path.dirname(fileURLToPath(import.meta.url)), "artifacts");
fs.mkdirSync(artifacts, { recursive: true });

/** The browser: $CHROMIUM or /usr/bin/chromium (apt-get install chromium). */
export async function launchBrowser() {
  const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
  if (!fs.existsSync(executablePath)) {
    throw new Error(`${executablePath} is missing: apt-get install -y chromium (or set CHROMIUM)`);
  }
  return chromium.launch({
    executablePath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    timeout: 30_000,
  });
}

/** A page whose console errors and failed requests are kept, to show when a test fails. */
export async function openPage(browser, { width = 1400, height = 1000 } = {}) {
  const context = await browser.newContext({ viewport: { width, height } });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  const problems = [];
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.push(`console: ${msg.text()}`);
  });
  return { page, problems };
}

export function screenshotPath(name) {
  return path.join(artifacts, `${name}.png`);
}

/** POST /v1/publish on a node; resolves to { epoch, seq }. */
export async function publish(node, topic, data, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(`${node.http}/v1/publish`, { method: "POST", headers, body: JSON.stringify({ topic, data }) });
  const body = await res.json();
  if (!res.ok) throw new Error(`publish refused: ${res.status} ${JSON.stringify(body)}`);
  return body;
}
