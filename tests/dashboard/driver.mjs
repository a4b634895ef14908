// Drives Debian's chromium through playwright-core for tests/e2e/dashboard.rs: one JSON command a
// line on stdin, one JSON answer a line on stdout ({"ok":true,"value":...} or {"ok":false,
// "error":"..."}). Pages are named ("page" in a command; "main" when absent). Every request any
// page makes is recorded (op "requests"), so the test can check that none leaves 127.0.0.1.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
// As root in a sandbox-less container; no background traffic of the browser's own (updates,
// sync, field trials): what goes out is what the page asks for.
const ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions"];

let browser = null;
const pages = new Map();
const requests = [];
const problems = [];

async function page(name) {
  const p = pages.get(name || "main");
  if (!p) throw new Error(`no page ${name || "main"}: open it first`);
  return p;
}

const ops = {
  async open({ page: name = "main", url, width = 1280, height = 900, colorScheme = "light" }) {
    browser ??= await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
    const context = await browser.newContext({ viewport: { width, height }, colorScheme });
    context.on("request", (r) => requests.push({ page: name, url: r.url(), method: r.method() }));
    const p = await context.newPage();
    p.on("pageerror", (e) => problems.push(`${name}: page error: ${e.message}`));
    p.on("console", (m) => { if (m.type() === "error") problems.push(`${name}: console: ${m.text()}`); });
    pages.set(name, p);
    await p.goto(url);
    return p.url();
  },
  async hash({ page: name, hash }) {
    const p = await page(name);
    // A route change inside the page, never a navigation.
    await p.evaluate((h) => { location.hash = h; }, hash);
    return p.url();
  },
  async waitFor({ page: name, selector, text, count, timeout = 60000 }) {
    const p = await page(name);
    const loc = p.locator(selector);
    if (count !== undefined) {
      await p.waitForFunction(([s, n]) => document.querySelectorAll(s).length === n, [selector, count], { timeout });
      return await loc.allInnerTexts();
    }
    if (text !== undefined) {
      await loc.filter({ hasText: text }).first().waitFor({ timeout });
      return await loc.filter({ hasText: text }).first().innerText();
    }
    await loc.first().waitFor({ timeout });
    return await loc.first().innerText();
  },
  async texts({ page: name, selector }) {
    return await (await page(name)).locator(selector).allInnerTexts();
  },
  async attribute({ page: name, selector, attribute }) {
    return await (await page(name)).locator(selector).first().getAttribute(attribute);
  },
  async count({ page: name, selector }) {
    return await (await page(name)).locator(selector).count();
  },
  async click({ page: name, selector }) {
    await (await page(name)).locator(selector).first().click();
    return true;
  },
  async press({ page: name, key }) {
    await (await page(name)).keyboard.press(key);
    return true;
  },
  async type({ page: name, text }) {
    await (await page(name)).keyboard.type(text);
    return true;
  },
  async focused({ page: name }) {
    return await (await page(name)).evaluate(() => {
      const e = document.activeElement;
      return e ? { tag: e.tagName, id: e.id, text: e.textContent.trim().slice(0, 40) } : null;
    });
  },
  // What the test needs to know about the document: a marker that a reload would wipe, how many
  // navigations the page made, its whole HTML.
  async mark({ page: name }) {
    return await (await page(name)).evaluate(() => { window.__fleetMark = "set"; return true; });
  },
  async state({ page: name }) {
    return await (await page(name)).evaluate(() => ({
      mark: window.__fleetMark || null,
      navigations: performance.getEntriesByType("navigation").length,
      rendered: Number(document.body.dataset.rendered || 0),
      dialogOpen: document.getElementById("confirm").open,
      html: document.documentElement.outerHTML,
    }));
  },
  async screenshot({ page: name, path, fullPage = false }) {
    await (await page(name)).screenshot({ path, fullPage, animations: "disabled" });
    return path;
  },
  async requests() {
    return requests;
  },
  async problems() {
    return problems;
  },
  async close() {
    await browser?.close();
    browser = null;
    return true;
  },
};

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let answer;
  try {
    const cmd = JSON.parse(line);
    const op = ops[cmd.op];
    if (!op) throw new Error(`unknown op ${cmd.op}`);
    answer = { ok: true, value: await op(cmd) };
  } catch (e) {
    answer = { ok: false, error: String(e && e.stack || e) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
await browser?.close();
