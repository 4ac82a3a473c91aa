// The example app in a real browser: the page submits code and shows the events as they
// arrive over graphql-ws. The scenarios run against `verdict standalone` and against
// `verdict server` + `verdict worker` on Redis (skipped when no Redis answers).
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  standalone, launch, newPage, openApp, setSource, setLimits, waitVerdict, timelineText,
  screenshot, OUTPUT, redisUrl, startVerdict, freePort, namespace,
} from './harness.mjs';

const T = { timeout: 90_000 };
let browser;

before(async () => {
  console.log(`screenshots: ${OUTPUT}`);
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

/** `verdict server` + `verdict worker` on Redis, or null when no Redis answers. */
async function onRedis() {
  const redis = await redisUrl();
  if (!redis) return null;
  const env = { VERDICT_REDIS_URL: redis, VERDICT_REDIS_NAMESPACE: namespace(), VERDICT_SUBMISSION_TTL: '600' };
  const port = await freePort();
  const worker = await startVerdict('worker', ['worker'], { env });
  const server = await startVerdict('server', ['server', '--listen', `127.0.0.1:${port}`], { env, port })
    .catch(async (e) => { await worker.stop(); throw e; });
  return {
    base: `http://127.0.0.1:${port}`,
    proc: { stop: async () => { await server.stop(); await worker.stop(); } },
  };
}

for (const [backend, start] of [['standalone', standalone], ['redis', onRedis]]) {
  describe(`example app on ${backend}`, () => {
    let server;
    let page;
    const shot = (name) => screenshot(page, `${backend}-${name}`);

    before(async () => {
      server = await start();
      if (!server) return;
      page = await newPage(browser);
      await openApp(page, server.base);
    });
    after(async () => {
      await page?.context().close();
      await server?.proc.stop();
    });

    const it = (name, fn) => test(name, T, async (t) => {
      if (!server) {
        t.skip('no Redis answers (set REDIS_URL)');
        return;
      }
      await fn();
    });

    async function fresh(language = 'python3') {
      await page.selectOption('#language', language);
      await page.locator('#tests .test button').evaluateAll((bs) => bs.forEach((b) => b.click()));
      await setLimits(page, {});
      await page.fill('#stdin', '');
    }

    it('python hello: Queued, Running, Accepted and the stdout pane', async () => {
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
      await shot('hello-accepted');
      assert.deepEqual(page.external, [], 'no request left localhost');
    });

    it('while True: pass with a CPU limit: Time Limit Exceeded within 3 s of Run', async () => {
      await fresh();
      await setSource(page, 'while True:\n    pass\n');
      await setLimits(page, { cpuTimeMs: 500 });
      const t0 = Date.now();
      await page.click('#run');
      await waitVerdict(page, 'Time Limit Exceeded', 10_000);
      const ms = Date.now() - t0;
      await shot('tle');
      assert.ok(ms < 3000, `Time Limit Exceeded shown after ${ms} ms`);
      assert.match(await timelineText(page), /Test 1: Time Limit Exceeded/);
    });

    it('C++ with 3 tests, test 2 wrong: per-test verdicts, then Wrong Answer', async () => {
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
      await shot('cpp-wrong-answer');
    });

    it('a compile error shows the compiler message', async () => {
      await fresh('c');
      await setSource(page, 'int main(void) { return undefined_name; }\n');
      await page.click('#run');
      await waitVerdict(page, 'Compilation Error', 60_000);
      assert.equal(await page.locator('#compile-box').isVisible(), true);
      assert.match(await page.locator('#compile').innerText(), /undefined_name/);
      await shot('compile-error');
    });

    it('Cancel while running: Cancelled', async () => {
      await fresh();
      await setSource(page, "import time\nprint('sleeping', flush=True)\ntime.sleep(8)\nprint('woke')\n");
      await page.click('#run');
      await page.waitForFunction(() => /Running test/.test(document.querySelector('#timeline')?.textContent ?? ''));
      await page.click('#cancel');
      await waitVerdict(page, 'Cancelled', 15_000);
      assert.doesNotMatch(await page.locator('#stdout').innerText(), /woke/);
      assert.equal(await page.locator('#cancel').isHidden(), true);
      await shot('cancelled');
    });

    it('Ctrl+Enter runs, and a history entry re-opens with the replay', async () => {
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
      await shot('history-replay');
    });

    it('phone width: no horizontal scroll, Run reachable', async () => {
      const phone = await newPage(browser, { width: 390, height: 844 });
      try {
        await openApp(phone, server.base);
        await setSource(phone, "print('small screen')\n");
        await phone.click('#run');
        await waitVerdict(phone, 'Accepted');
        const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        assert.ok(overflow <= 0, `page is ${overflow}px wider than the phone`);
        await screenshot(phone, `${backend}-phone`);
      } finally {
        await phone.context().close();
      }
    });
  });
}

test('API key (standalone): refused without it, then sent in connection_init and the Authorization header', T, async () => {
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
