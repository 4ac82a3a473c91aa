// Kill and restart the server while a submission runs: the connection indicator shows
// the outage, graphql-ws reconnects, the page re-subscribes after the last seq it saw and
// shows the final verdict. With Redis (server + worker apart), the submission survives the
// server; with the embedded broker of `verdict standalone` it does not, and the page says
// so, then works again.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startVerdict, standalone, freePort, redisUrl, namespace, launch, newPage, openApp,
  setSource, waitVerdict, timelineText, screenshot,
} from './harness.mjs';

const T = { timeout: 120_000 };
const SLOW = "import time\nprint('start', flush=True)\ntime.sleep(4)\nprint('end', flush=True)\n";
let browser;

before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

async function waitConn(page, state, timeout = 20_000) {
  await page.waitForSelector(`#conn[data-state="${state}"]`, { timeout });
}

test('server + worker on Redis: restart the server mid-run, the page shows the verdict', T, async (t) => {
  const redis = await redisUrl();
  if (!redis) {
    t.skip('no Redis answers (set REDIS_URL)');
    return;
  }
  const env = { VERDICT_REDIS_URL: redis, VERDICT_REDIS_NAMESPACE: namespace(), VERDICT_SUBMISSION_TTL: '600' };
  const port = await freePort();
  const listen = ['--listen', `127.0.0.1:${port}`];
  const worker = await startVerdict('worker', ['worker'], { env });
  let server = await startVerdict('server', ['server', ...listen], { env, port });
  const page = await newPage(browser);
  try {
    await openApp(page, `http://127.0.0.1:${port}`);
    await setSource(page, SLOW);
    await page.click('#run');
    await page.waitForFunction(() => /start/.test(document.querySelector('#stdout')?.textContent ?? ''), null, { timeout: 20_000 });

    await server.kill('SIGKILL');
    await waitConn(page, 'reconnecting', 10_000);
    await screenshot(page, 'redis-reconnecting');
    server = await startVerdict('server', ['server', ...listen], { env, port });
    await waitConn(page, 'connected', 20_000);

    await waitVerdict(page, 'Accepted', 30_000);
    const out = await page.locator('#stdout').innerText();
    assert.match(out, /start[\s\S]*end/);
    assert.equal(out.match(/start/g).length, 1, 'no event shown twice after the re-subscribe');
    const tl = await timelineText(page);
    assert.equal(tl.match(/Running test 1\/1/g).length, 1, tl);
    assert.match(tl, /Connection lost[\s\S]*Reconnected: resuming after event \d+[\s\S]*Finished: Accepted/);
    await screenshot(page, 'redis-recovered');
  } finally {
    await page.context().close();
    await server.stop();
    await worker.stop();
  }
});

test('standalone: restart mid-run, the indicator shows the outage and the page recovers', T, async () => {
  let { port, proc } = await standalone();
  const page = await newPage(browser);
  try {
    await openApp(page, `http://127.0.0.1:${port}`);
    await setSource(page, SLOW);
    await page.click('#run');
    await page.waitForFunction(() => /Running test/.test(document.querySelector('#timeline')?.textContent ?? ''));

    await proc.kill('SIGKILL');
    await waitConn(page, 'reconnecting', 10_000);
    proc = await startVerdict('standalone', ['standalone', '--listen', `127.0.0.1:${port}`], { port });
    await waitConn(page, 'connected', 20_000);
    // The embedded broker lost the submission: the page must say so, not hang.
    await page.waitForFunction(() => /Error:/.test(document.querySelector('#timeline')?.textContent ?? ''), null, { timeout: 20_000 });
    assert.equal(await page.locator('#run').isDisabled(), false);
    await screenshot(page, 'standalone-lost');

    await setSource(page, "print('after restart')\n");
    await page.click('#run');
    await waitVerdict(page, 'Accepted');
    assert.match(await page.locator('#stdout').innerText(), /after restart/);
    await screenshot(page, 'standalone-recovered');
  } finally {
    await page.context().close();
    await proc.stop();
  }
});
