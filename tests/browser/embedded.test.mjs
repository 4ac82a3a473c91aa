// What a fresh clone's plain `cargo build` serves (server/build.rs builds and embeds
// frontend-example; CI runs this on a clean clone with no frontend step before cargo):
// `/` is the example app and `/graphiql` the self-hosted GraphiQL, in Chromium, with
// every request off localhost blocked, and neither page asks for anything off localhost.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { standalone, launch, newPage, openApp, screenshot } from './harness.mjs';

let server;
let browser;

before(async () => {
  server = await standalone();
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.proc.stop();
});

test('/ is the embedded example app and /graphiql the self-hosted GraphiQL, nothing off localhost', { timeout: 60_000 }, async () => {
  const page = await newPage(browser);
  try {
    await openApp(page, server.base);
    assert.ok(await page.locator('#timeline').count(), 'the app, not a placeholder');
    assert.ok(await page.locator('.cm-content').count(), 'the editor');
    await screenshot(page, 'embedded-app');

    await page.goto(server.base + '/graphiql');
    await page.waitForSelector('.graphiql-container');
    await page.waitForSelector('.graphiql-query-editor .CodeMirror');
    await screenshot(page, 'embedded-graphiql');

    assert.deepEqual(page.external, [], 'no request left localhost (no CDN)');
    const assets = page.requests.filter((u) => u.includes('/assets/'));
    assert.ok(assets.length > 0, 'scripts come from the binary\'s /assets/');
    assert.deepEqual(page.consoleErrors, [], 'no console errors');
  } finally {
    await page.context().close();
  }
});
