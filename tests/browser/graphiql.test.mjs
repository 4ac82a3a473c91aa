// The self-hosted GraphiQL at /graphiql: it loads with every request off localhost
// blocked, and a subscription typed into it streams a submission's events.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { standalone, launch, newPage, screenshot } from './harness.mjs';

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

test('GraphiQL loads offline and a subscription streams events', { timeout: 90_000 }, async () => {
  const page = await newPage(browser);
  await page.goto(server.base + '/graphiql');
  await page.waitForSelector('.graphiql-container');
  await page.waitForSelector('.graphiql-query-editor .CodeMirror');

  // A program that prints for a while, so that events arrive while GraphiQL listens.
  const res = await fetch(server.base + '/graphql', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      query: 'mutation($i: SubmitInput!){ submit(input:$i){ id } }',
      variables: { i: { language: 'python3', source: "import time\nfor i in range(6):\n    print('tick', i, flush=True)\n    time.sleep(0.5)\n" } },
    }),
  });
  const id = (await res.json()).data.submit.id;

  const query = `subscription { submissionEvents(id: "${id}") { __typename seq ... on OutputEvent { chunk } ... on FinishedEvent { submission { verdict } } } }`;
  // Typed as a paste into GraphiQL's editor (retried: the editor may still be starting).
  const editor = page.locator('.graphiql-query-editor .CodeMirror');
  for (let i = 0; ; i++) {
    await editor.click();
    await page.keyboard.press('ControlOrMeta+a');
    await page.keyboard.press('Delete');
    await page.keyboard.insertText(query);
    if ((await editor.innerText()).includes(id)) break;
    if (i === 10) assert.fail(`could not type into GraphiQL: ${await editor.innerText()}`);
    await page.waitForTimeout(300);
  }
  // GraphiQL syncs the editor into its state with a debounce; run once it has settled,
  // and again if nothing started.
  const response = page.locator('.graphiql-response');
  for (let i = 0; i < 5; i++) {
    await page.waitForTimeout(500);
    await page.click('.graphiql-execute-button');
    const started = await page.waitForFunction(
      () => /__typename/.test(document.querySelector('.graphiql-response')?.textContent ?? ''),
      null,
      { timeout: 2000 },
    ).then(() => true, () => false);
    if (started) break;
  }

  // Several payloads replace one another in the response pane: a live one, then the last.
  await page.waitForFunction(
    () => /"__typename": "(QueuedEvent|RunningEvent|OutputEvent|CompilingEvent)"/.test(document.querySelector('.graphiql-response')?.textContent ?? ''),
    null,
    { timeout: 15_000 },
  ).catch(async (e) => {
    await screenshot(page, 'graphiql-failed');
    throw new Error(`${e.message}; response: ${await response.innerText()}`);
  });
  await page.waitForFunction(
    () => /FinishedEvent[\s\S]*ACCEPTED/.test(document.querySelector('.graphiql-response')?.textContent ?? ''),
    null,
    { timeout: 30_000 },
  );
  assert.match(await response.innerText(), /FinishedEvent/);
  await screenshot(page, 'graphiql-subscription');

  assert.deepEqual(page.external, [], 'GraphiQL asked for something off localhost');
  for (const url of page.requests) {
    assert.match(new URL(url).hostname, /^(127\.0\.0\.1|localhost)$/, `request to ${url}`);
  }
  assert.ok(page.requests.some((u) => u.includes('/assets/')), 'assets came from the server');
  await page.context().close();
});
