// Verdict with the clients apps use (see clients.mjs): Apollo Client 4 and 3 (GraphQLWsLink,
// and Apollo 3's WebSocketLink over subscriptions-transport-ws), urql, graphql-request
// with graphql-ws, and the reference graphql-ws client.
//
// - standalone: submit, subscribe, every event in seq order, clean completion, then a lazy
//   resubscribe with no delay (the previous socket is closing right then): its first event
//   must come at once, not after a retry back-off (the close handshake, issue 17.3).
// - Redis: 6 in-flight subscriptions, SIGTERM to the server, a new server on the same
//   port: every subscription ends with its FinishedEvent and no seq is missing.
//
// Timings are printed as `# ...` lines (node --test shows them).

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';

import { CLIENTS, watch } from './clients.mjs';
import {
  standalone, verdict, stop, freePort, namespace, within, withLogs, WAIT_MS,
} from './helpers.mjs';

const HELLO = { language: 'python3', source: "print('one')\nprint('two')" };
const SLOW = {
  language: 'python3',
  source: 'import time\nfor i in range(10):\n    print("tick", i, flush=True)\n    time.sleep(0.4)\n',
};

/** every seq from 1 to the last, once, in order, the last a FinishedEvent. */
function assertWhole(w, what) {
  assert.deepEqual(w.errors, [], `${what}: no error`);
  assert.ok(w.completed, `${what}: completed`);
  const seqs = w.events.map((e) => e.seq);
  assert.deepEqual(seqs, seqs.map((_, i) => i + 1), `${what}: no seq missing (${seqs})`);
  assert.equal(w.events.at(-1)?.__typename, 'FinishedEvent', `${what}: ends with FinishedEvent`);
}

describe('clients on verdict standalone', { timeout: 300_000 }, () => {
  let proc;
  before(async () => { proc = await standalone([], { env: { VERDICT_SUBMITS_PER_MINUTE: '0' } }); });
  after(() => stop(proc));

  for (const spec of CLIENTS) {
    test(`${spec.name}: submit, events in order, complete, lazy resubscribe at once`, async () => {
      await withLogs([proc], async () => {
        const c = await spec.make(`${proc.base}/graphql`, `ws://127.0.0.1:${proc.port}/graphql`);
        try {
          const id = await c.submit(HELLO);
          const first = await within(WAIT_MS, 'the first subscription', watch(c, id).done);
          assertWhole(first, 'first subscription');
          assert.equal(first.events.at(-1).submission.verdict, 'ACCEPTED');
          // No delay: the lazy client is closing its socket right now.
          const again = await within(WAIT_MS, 'the resubscription', watch(c, id).done);
          assertWhole(again, 'lazy resubscribe');
          const ms = again.firstAt - again.startedAt;
          console.log(`# ${spec.name}: lazy resubscribe, subscribe → first event ${ms} ms`);
          assert.ok(ms < 1_000, `first event after ${ms} ms (a retry back-off?)`);
          // 20 concurrent subscriptions on one client.
          const ids = await Promise.all(Array.from({ length: 20 }, () => c.submit(HELLO)));
          const all = await within(WAIT_MS * 2, '20 subscriptions', Promise.all(ids.map((i) => watch(c, i).done)));
          all.forEach((w, i) => assertWhole(w, `concurrent ${i}`));
        } finally {
          await c.dispose();
        }
      });
    });
  }
});

describe('clients on Redis: SIGTERM the server, a new one on the same port', { timeout: 600_000 }, () => {
  const redis = process.env.REDIS_URL;
  let worker;
  let env;
  before(async () => {
    if (!redis) return;
    env = { VERDICT_REDIS_URL: redis, VERDICT_REDIS_NAMESPACE: namespace('sigterm'), VERDICT_SUBMITS_PER_MINUTE: '0' };
    worker = await verdict('worker', ['worker', '--concurrency', '6'], { env });
  });
  after(() => stop(worker));

  for (const spec of CLIENTS) {
    test(`${spec.name}: 6 in-flight subscriptions survive a SIGTERM`, async (t) => {
      if (!redis) { t.skip('REDIS_URL is not set'); return; }
      const port = await freePort();
      const listen = ['server', '--listen', `127.0.0.1:${port}`];
      let server = await verdict('server', listen, { port, env });
      const closes = [];
      const old = server;
      try {
        await withLogs([old, worker], async () => {
          const c = await spec.make(`${server.base}/graphql`, `ws://127.0.0.1:${port}/graphql`, {
            on: { closed: (e) => closes.push(e?.code) },
          });
          try {
            const ids = await Promise.all(Array.from({ length: 6 }, () => c.submit(SLOW)));
            const watches = ids.map((id) => watch(c, id));
            await within(WAIT_MS, 'every subscription under way', (async () => {
              while (watches.some((w) => !w.events.some((e) => e.__typename === 'OutputEvent'))) await sleep(20);
            })());
            assert.ok(watches.every((w) => !w.completed), 'all six still running at the SIGTERM');
            const t0 = Date.now();
            old.child.kill('SIGTERM');
            const how = await within(10_000, 'the old server to exit', old.gone);
            const exitMs = Date.now() - t0;
            assert.equal(how, 'exited with 0', 'a clean exit on SIGTERM');
            server = await verdict('server', listen, { port, env });
            const done = await within(WAIT_MS * 2, 'every subscription to finish', Promise.all(watches.map((w) => w.done)));
            done.forEach((w, i) => assertWhole(w, `subscription ${i}`));
            const dups = done.reduce((n, w) => n + w.duplicates, 0);
            if (spec.resendsVariables) assert.equal(dups, 0, 'afterSeq: nothing replayed twice');
            const abnormal = closes.filter((code) => code !== undefined && code !== 1000 && code !== 1001);
            console.log(`# ${spec.name}: SIGTERM with 6 in flight: 6/6 ended with FinishedEvent, no seq missing; `
              + `old server exited in ${exitMs} ms; ${dups} replayed events dropped by seq; client closes ${JSON.stringify(closes)}`);
            if (closes.length) {
              assert.ok(closes.includes(1001), `the client saw 1001: ${closes}`);
              // Closes while the server was down are refused connects (1006): fine. The
              // close of the live socket must be 1001.
              assert.equal(closes.find((code) => code !== 1000), 1001, `first close: ${closes}`);
            }
            void abnormal;
          } finally {
            await c.dispose();
          }
        });
      } finally {
        await stop(server);
      }
    });
  }
});
