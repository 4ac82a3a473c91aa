// Python's gql 4 (tests/python/gql_scenario.py) against real servers: its default
// WebsocketsTransport offer (graphql-ws first: the server must honour that order) and
// graphql-transport-ws alone; and a SIGTERM on Redis with 6 subscriptions in flight,
// which the script follows as an app would (reconnect, resubscribe with afterSeq).
//
// The interpreter: VERDICT_PYTHON (scripts/test sets it to target/py-venv/bin/python,
// where it installs tests/python/requirements.txt). Without one the tests are skipped,
// except under CI, where they fail.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import {
  REPO_ROOT, standalone, verdict, stop, freePort, namespace, within, withLogs,
} from './helpers.mjs';

const PYTHON = process.env.VERDICT_PYTHON
  || [join(REPO_ROOT, 'target', 'py-venv', 'bin', 'python')].find(existsSync);
const SCRIPT = join(REPO_ROOT, 'tests', 'python', 'gql_scenario.py');

function missing(t) {
  if (PYTHON) return false;
  if (process.env.CI) assert.fail('no Python with gql: set VERDICT_PYTHON (scripts/test does)');
  t.skip('no Python with gql (set VERDICT_PYTHON)');
  return true;
}

/** Runs the script; `onLine` sees each JSON line; resolves with the `result` one. */
function scenario(args, onLine = () => {}) {
  return new Promise((res, rej) => {
    const child = spawn(PYTHON, [SCRIPT, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let result = null;
    child.stdout.on('data', (d) => {
      out += d;
      let nl;
      while ((nl = out.indexOf('\n')) >= 0) {
        const line = out.slice(0, nl);
        out = out.slice(nl + 1);
        const msg = JSON.parse(line);
        if (msg.result) result = msg.result;
        onLine(msg);
      }
    });
    child.stderr.on('data', (d) => { err = (err + d).slice(-4000); });
    child.on('exit', (code) => (code === 0 && result ? res(result) : rej(new Error(`gql_scenario ${args[0]} exited ${code}:\n${err}`))));
  });
}

describe('Python gql 4', { timeout: 180_000 }, () => {
  let proc;
  before(async () => { if (PYTHON) proc = await standalone([], { env: { VERDICT_SUBMITS_PER_MINUTE: '0' } }); });
  after(() => stop(proc));

  const cases = [
    ['default transport (offers graphql-ws, then graphql-transport-ws)', [], 'graphql-ws'],
    // gql 4.0.0 reads the answer's header case-sensitively and hyper writes it in lower
    // case: without the script's patch it would speak the legacy protocol (its bug).
    ['graphql-transport-ws only', ['graphql-transport-ws', '--patch-header-case'], 'graphql-transport-ws'],
  ];
  for (const [name, protocols, expected] of cases) {
    test(`${name}: submit, subscribe, resubscribe at once, 20 concurrent`, async (t) => {
      if (missing(t)) return;
      await withLogs([proc], async () => {
        const r = await within(120_000, 'the gql scenario', scenario([
          'basic', `${proc.base}/graphql`, `ws://127.0.0.1:${proc.port}/graphql`, ...protocols,
        ]));
        console.log(`# gql 4.0.0 ${name}: ${JSON.stringify(r)}`);
        assert.equal(r.subprotocol, expected, 'the first subprotocol the client offered');
        assert.ok(r.whole, 'every event in seq order, FinishedEvent last');
        assert.equal(r.verdict, 'ACCEPTED');
        assert.ok(r.resubscribe_whole);
        assert.ok(r.resubscribe_first_event_ms < 1000, `first event after ${r.resubscribe_first_event_ms} ms`);
        assert.equal(r.concurrent_whole, 20);
      });
    });
  }

  test('SIGTERM on Redis with 6 in flight, a new server on the same port: all 6 finish, no seq missing', async (t) => {
    if (missing(t)) return;
    const redis = process.env.REDIS_URL;
    if (!redis) { t.skip('REDIS_URL is not set'); return; }
    const env = { VERDICT_REDIS_URL: redis, VERDICT_REDIS_NAMESPACE: namespace('gql'), VERDICT_SUBMITS_PER_MINUTE: '0' };
    const port = await freePort();
    const listen = ['server', '--listen', `127.0.0.1:${port}`];
    const worker = await verdict('worker', ['worker', '--concurrency', '6'], { env });
    let server = await verdict('server', listen, { port, env });
    try {
      await withLogs([server, worker], async () => {
        let restarted;
        const r = await within(120_000, 'the gql SIGTERM scenario', scenario(
          ['sigterm', `${server.base}/graphql`, `ws://127.0.0.1:${port}/graphql`],
          (msg) => {
            if (!msg.ready) return;
            restarted = (async () => {
              const old = server;
              old.child.kill('SIGTERM');
              assert.equal(await old.gone, 'exited with 0');
              server = await verdict('server', listen, { port, env });
            })();
          },
        ));
        await restarted;
        console.log(`# gql 4.0.0 SIGTERM: ${r.whole}/6 whole; closes seen: ${JSON.stringify(r.closes.map((c) => c[0] ?? null))}`);
        assert.equal(r.whole, 6, JSON.stringify(r.seqs));
        assert.ok(r.closes.every((c) => c.length >= 1), 'each subscription saw the server go');
      });
    } finally {
      await stop(server);
      await stop(worker);
    }
  });
});
