// The example app in a real browser against `verdict standalone`: the page submits code and
// shows the events as they arrive over graphql-ws.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  standalone, launch, newPage, openApp, setSource, setLimits, waitVerdict, timelineText,
  screenshot, OUTPUT,
} from './harness.mjs';

const T = { timeout: 90_000 };
let server;
let browser;
let page;

before(async () => {
  console.log(`screenshots: ${OUTPUT}`);
  server = await standalone();
  browser = await launch();
  page = await newPage(browser);
  await openApp(page, server.base);
});

after(async () => {
  await browser?.close();
  await server?.proc.stop();
});

async function fresh(language = 'python3') {
  await page.selectOption('#language', language);
  await page.locator('#tests .test button').evaluateAll((bs) => bs.forEach((b) => b.click()));
  await setLimits(page, {});
  await page.fill('#stdin', '');
}

test('python hello: Queued, Running, Accepted and the stdout pane', T, async () => {
  await fresh();
  await setSource(page, "print('hello from verdict')\n");
  await page.click('#run');
  await waitVerdict(page, 'Accepted');
  const tl = await timelineText(page);
  assert.match(tl, /Queued/);
  assert.match(tl, /Running test 1\/1/);
  assert.match(tl, /Test 1: Accepted/);
  assert.match(tl, /Finished: Accepted/);
  assert.equal((await page.locator('#stdout').innerText()).trim(), 'hello from verdict');
  assert.equal(await page.locator('#verdict').getAttribute('data-verdict'), 'ACCEPTED');
  await screenshot(page, 'hello-accepted');
  assert.deepEqual(page.external, [], 'no request left localhost');
});

test('while True: pass with a CPU limit: Time Limit Exceeded within 3 s of Run', T, async () => {
  await fresh();
  await setSource(page, 'while True:\n    pass\n');
  await setLimits(page, { cpuTimeMs: 500 });
  const t0 = Date.now();
  await page.click('#run');
  await waitVerdict(page, 'Time Limit Exceeded', 10_000);
  const ms = Date.now() - t0;
  await screenshot(page, 'tle');
  assert.ok(ms < 3000, `Time Limit Exceeded shown after ${ms} ms`);
  assert.match(await timelineText(page), /Test 1: Time Limit Exceeded/);
});

test('C++ with 3 tests, test 2 wrong: per-test verdicts, then Wrong Answer', T, async () => {
  await fresh('cpp');
  await setSource(page, '#include <iostream>\nint main() { long n; std::cin >> n; std::cout << n * 2 << "\\n"; }\n');
  for (const [i, o] of [['1', '2'], ['2', '5'], ['3', '6']]) {
    await page.click('#add-test');
    await page.locator('#tests .test-stdin').last().fill(i);
    await page.locator('#tests .test-expected').last().fill(o);
  }
  await page.click('#run');
  await waitVerdict(page, 'Wrong Answer', 60_000);
  const tl = await timelineText(page);
  assert.match(tl, /Compiling/);
  assert.match(tl, /Test 1: Accepted/);
  assert.match(tl, /Test 2: Wrong Answer/);
  assert.match(tl, /Test 3: Accepted/);
  await screenshot(page, 'cpp-wrong-answer');
});

test('a compile error shows the compiler message', T, async () => {
  await fresh('c');
  await setSource(page, 'int main(void) { return undefined_name; }\n');
  await page.click('#run');
  await waitVerdict(page, 'Compilation Error', 60_000);
  assert.equal(await page.locator('#compile-box').isVisible(), true);
  assert.match(await page.locator('#compile').innerText(), /undefined_name/);
  await screenshot(page, 'compile-error');
});

test('Cancel while running: Cancelled', T, async () => {
  await fresh();
  await setSource(page, "import time\nprint('sleeping', flush=True)\ntime.sleep(8)\nprint('woke')\n");
  await page.click('#run');
  await page.waitForFunction(() => /Running test/.test(document.querySelector('#timeline')?.textContent ?? ''));
  await page.click('#cancel');
  await waitVerdict(page, 'Cancelled', 15_000);
  assert.doesNotMatch(await page.locator('#stdout').innerText(), /woke/);
  assert.equal(await page.locator('#cancel').isHidden(), true);
  await screenshot(page, 'cancelled');
});

test('Ctrl+Enter runs, and a history entry re-opens with the replay', T, async () => {
  await fresh();
  await setSource(page, "print('via keyboard')\n");
  await page.keyboard.press('Control+Enter');
  await waitVerdict(page, 'Accepted');
  assert.match(await page.locator('#stdout').innerText(), /via keyboard/);
  // The first run of this page (hello) is the last entry of the history.
  await page.locator('#history li button').last().click();
  await waitVerdict(page, 'Accepted');
  assert.match(await page.locator('#stdout').innerText(), /hello from verdict/);
  assert.match(await timelineText(page), /Queued[\s\S]*Running test 1\/1[\s\S]*Finished: Accepted/);
  await screenshot(page, 'history-replay');
});

test('phone width: no horizontal scroll, Run reachable', T, async () => {
  const phone = await newPage(browser, { width: 390, height: 844 });
  try {
    await openApp(phone, server.base);
    await setSource(phone, "print('small screen')\n");
    await phone.click('#run');
    await waitVerdict(phone, 'Accepted');
    const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `page is ${overflow}px wider than the phone`);
    await screenshot(phone, 'phone');
  } finally {
    await phone.context().close();
  }
});

test('API key: refused without it, then sent in connection_init and the Authorization header', T, async () => {
  const { createHash } = await import('node:crypto');
  const { startVerdict, freePort } = await import('./harness.mjs');
  const key = 'browser-test-key';
  const digest = createHash('sha256').update(key).digest('hex');
  const port = await freePort();
  const keyed = await startVerdict('keyed', ['standalone', '--listen', `127.0.0.1:${port}`], {
    port,
    env: { VERDICT_API_KEYS: `browser:${digest}` },
  });
  const p = await newPage(browser);
  try {
    await p.goto(`http://127.0.0.1:${port}/`);
    await p.waitForSelector('#conn[data-state="unauthorized"]');
    await p.waitForFunction(() => /Could not load languages/.test(document.querySelector('#form-error')?.textContent ?? ''));
    await screenshot(p, 'api-key-refused');
    await p.fill('#api-key', key);
    await p.press('#api-key', 'Enter');
    await p.locator('#api-key').blur();
    await p.waitForSelector('#conn[data-state="connected"]');
    await p.waitForSelector('#language option[value="python3"]', { state: 'attached' });
    await setSource(p, "print('with a key')\n");
    await p.click('#run');
    await waitVerdict(p, 'Accepted');
    assert.match(await p.locator('#stdout').innerText(), /with a key/);
    await screenshot(p, 'api-key-accepted');
  } finally {
    await p.context().close();
    await keyed.stop();
  }
});
