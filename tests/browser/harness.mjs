// Shared by the browser tests: starts `verdict` processes on free ports and Debian's
// Chromium through playwright-core, and saves screenshots.
//
//   VERDICT_BIN        the binary (default target/debug/verdict); a plain `cargo build`
//                      embeds the app (server/build.rs builds frontend-example/)
//   CHROMIUM           the browser (default /usr/bin/chromium); never downloaded
//   REDIS_URL          Redis for the server + worker tests (default redis://127.0.0.1:6379
//                      when it answers; skipped otherwise)
//   BROWSER_TEST_OUTPUT  where screenshots go (default target/browser-test-output)

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { createServer, createConnection } from 'node:net';
import { randomBytes } from 'node:crypto';
import { dirname, resolve, isAbsolute, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const VERDICT_BIN = (() => {
  const bin = process.env.VERDICT_BIN || 'target/debug/verdict';
  return isAbsolute(bin) ? bin : resolve(REPO_ROOT, bin);
})();
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const OUTPUT = process.env.BROWSER_TEST_OUTPUT || join(REPO_ROOT, 'target', 'browser-test-output');
mkdirSync(OUTPUT, { recursive: true });

/** Every child still running, killed at exit whatever happens. */
const children = new Set();
process.on('exit', () => {
  for (const c of children) {
    try { c.kill('SIGKILL'); } catch { /* gone */ }
  }
});

export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/** A started `verdict` process: `stop()` ends it (SIGTERM, then SIGKILL). */
export async function startVerdict(name, args, { env = {}, port, waitHealthy = true } = {}) {
  assert.ok(existsSync(VERDICT_BIN), `verdict binary not found at ${VERDICT_BIN}`);
  const child = spawn(VERDICT_BIN, args, {
    cwd: REPO_ROOT,
    env: { RUST_LOG: 'info', ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  const proc = { name, child, log: '', exited: null };
  const keep = (d) => { proc.log = (proc.log + d.toString()).slice(-8000); };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((r) => child.on('exit', (code, sig) => {
    proc.exited = `exited (${code ?? sig})`;
    children.delete(child);
    r();
  }));
  proc.kill = async (signal = 'SIGKILL') => {
    if (!proc.exited) child.kill(signal);
    await exited;
  };
  proc.stop = async () => {
    if (proc.exited) return;
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  };
  if (waitHealthy && port) {
    try {
      await waitHealthz(`http://127.0.0.1:${port}`, proc);
    } catch (e) {
      await proc.stop();
      throw new Error(`${e.message}\n--- ${name} log ---\n${proc.log}`);
    }
  }
  return proc;
}

async function waitHealthz(base, proc, ms = 30_000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (proc.exited) throw new Error(`${proc.name} ${proc.exited} before ${base}/healthz answered`);
    try {
      const res = await fetch(`${base}/healthz`, { signal: AbortSignal.timeout(2000) });
      if (res.ok) return;
    } catch { /* not yet */ }
    await sleep(100);
  }
  throw new Error(`${base}/healthz did not answer within ${ms} ms`);
}

/** `verdict standalone` on a free port. */
export async function standalone() {
  const port = await freePort();
  const proc = await startVerdict('standalone', ['standalone', '--listen', `127.0.0.1:${port}`], { port });
  return { port, base: `http://127.0.0.1:${port}`, proc };
}

/** The Redis URL to use, or null when none answers. */
export async function redisUrl() {
  const url = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
  const u = new URL(url);
  const ok = await new Promise((res) => {
    const s = createConnection({ host: u.hostname, port: Number(u.port || 6379) });
    const done = (v) => { s.destroy(); res(v); };
    s.setTimeout(1000, () => done(false));
    s.on('error', () => done(false));
    s.on('connect', () => s.write('PING\r\n'));
    s.on('data', (d) => done(d.toString().startsWith('+PONG') || d.toString().includes('NOAUTH')));
  });
  return ok ? url : null;
}

export const namespace = () => `verdict-browser-${randomBytes(4).toString('hex')}`;

/** Debian's Chromium, headless, with the flags this machine needs. */
export async function launch() {
  assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM} (apt-get install chromium)`);
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
}

/**
 * A page with every request off localhost blocked and recorded in `page.external`,
 * and the page's console errors in `page.consoleErrors`.
 */
export async function newPage(browser, viewport = { width: 1280, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const external = [];
  await context.route('**/*', (route) => {
    const u = new URL(route.request().url());
    if (['127.0.0.1', 'localhost', '[::1]'].includes(u.hostname) || u.protocol === 'data:') {
      return route.continue();
    }
    external.push(u.href);
    return route.abort('blockedbyclient');
  });
  const page = await context.newPage();
  page.external = external;
  page.requests = [];
  page.consoleErrors = [];
  page.on('request', (r) => page.requests.push(r.url()));
  page.on('console', (m) => { if (m.type() === 'error') page.consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => page.consoleErrors.push(String(e)));
  page.setDefaultTimeout(20_000);
  return page;
}

export async function screenshot(page, name) {
  const file = join(OUTPUT, `${name}.png`);
  try {
    await page.screenshot({ path: file, fullPage: true });
  } catch (e) {
    console.error(`screenshot ${name} failed: ${e.message}`);
  }
  return file;
}

// ---------------------------------------------------------------------------------------
// The example app

/** Loads the app and waits until it is connected and the languages are in. */
export async function openApp(page, base) {
  await page.goto(base + '/');
  await page.waitForSelector('#language option[value="python3"]', { state: 'attached' });
  await page.waitForSelector('#conn[data-state="connected"]');
}

/** Replaces the editor's text, as a paste would. */
export async function setSource(page, text) {
  await page.click('.cm-content');
  await page.keyboard.press('ControlOrMeta+a');
  await page.keyboard.press('Delete');
  await page.keyboard.insertText(text);
}

export async function setLimits(page, limits) {
  const ids = { cpuTimeMs: '#cpu', wallTimeMs: '#wall', memoryKb: '#mem', outputBytes: '#out', processes: '#procs' };
  for (const [k, sel] of Object.entries(ids)) await page.fill(sel, limits[k] != null ? String(limits[k]) : '');
}

/** Waits until the big verdict box shows `label` (e.g. "Accepted"). */
export async function waitVerdict(page, label, timeout = 30_000) {
  await page.waitForFunction(
    (l) => document.querySelector('#verdict')?.textContent === l,
    label,
    { timeout },
  ).catch(async (e) => {
    const seen = await page.evaluate(() => ({
      verdict: document.querySelector('#verdict')?.textContent,
      timeline: document.querySelector('#timeline')?.innerText,
      error: document.querySelector('#form-error')?.textContent,
    }));
    throw new Error(`verdict "${label}" not shown: ${JSON.stringify(seen)} (${e.message})`);
  });
}

export const timelineText = (page) => page.locator('#timeline').innerText();
