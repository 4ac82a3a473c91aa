// Reference-client tests: Verdict driven the way a browser app drives it.
//
// A plain HTTP POST submits code; the official graphql-ws client subscribes to the
// submission's events over WebSocket; the legacy `graphql-ws` subprotocol is checked with
// a raw socket. Run by `scripts/test`, or by hand:
//
//   VERDICT_BIN=target/debug/verdict REDIS_URL=redis://127.0.0.1:6379 node --test tests/node/
//
// The Redis test is skipped when REDIS_URL is not set.

import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { randomBytes } from 'node:crypto';
import { dirname, resolve, isAbsolute } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

import WebSocket from 'ws';
import { createClient } from 'graphql-ws';

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const VERDICT_BIN = (() => {
  const bin = process.env.VERDICT_BIN || 'target/debug/verdict';
  return isAbsolute(bin) ? bin : resolve(REPO_ROOT, bin);
})();

/** How long any single wait (startup, a response, a whole subscription) may take. */
const WAIT_MS = 30_000;
/** Per-test budget in node:test; a little above the sum of the waits a test does. */
const TEST_TIMEOUT_MS = 90_000;

const SUBMIT = 'mutation($i: SubmitInput!){ submit(input:$i){ id status } }';
const EVENTS = `subscription($id: ID!){
  submissionEvents(id:$id){
    __typename
    seq
    ... on FinishedEvent { submission { status verdict tests { stdout } } }
  }
}`;
const HELLO = { language: 'python3', source: "print('hi')" };

// ---------------------------------------------------------------------------------------
// Child processes

/** Every child this file started and that still runs, so that none outlives the tests. */
const running = new Set();
after(async () => {
  await Promise.all([...running].map(stop));
});
process.on('exit', () => {
  for (const p of running) {
    try { p.child.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

/** A TCP port that was free a moment ago on 127.0.0.1. */
function freePort() {
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

/** Starts `verdict ARGS`, keeping the tail of its output for failure messages. */
function startVerdict(name, args, env = {}) {
  assert.ok(
    existsSync(VERDICT_BIN),
    `verdict binary not found at ${VERDICT_BIN} (build it, or set VERDICT_BIN)`,
  );
  const child = spawn(VERDICT_BIN, args, {
    cwd: REPO_ROOT,
    env: { RUST_LOG: 'info', ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const proc = { name, child, log: '', exited: null };
  const keep = (chunk) => {
    proc.log = (proc.log + chunk.toString()).slice(-8192);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  child.on('error', (err) => { proc.exited = `spawn error: ${err.message}`; });
  child.on('exit', (code, signal) => {
    proc.exited = `exited with ${signal ? `signal ${signal}` : `code ${code}`}`;
    running.delete(proc);
  });
  running.add(proc);
  return proc;
}

/** SIGTERM, then SIGKILL if it has not gone within 5 s. */
async function stop(proc) {
  if (!proc || proc.exited) return;
  const gone = new Promise((res) => {
    proc.child.once('exit', res);
    if (proc.exited) res(); // it may have gone in between
  });
  proc.child.kill('SIGTERM');
  const t = setTimeout(() => proc.child.kill('SIGKILL'), 5_000);
  await gone;
  clearTimeout(t);
}

/** Adds the tail of the children's logs to an assertion error. */
async function withLogs(procs, fn) {
  try {
    return await fn();
  } catch (err) {
    const logs = procs
      .filter(Boolean)
      .map((p) => `--- ${p.name} (${p.exited ?? 'running'}) ---\n${p.log || '(no output)'}`)
      .join('\n');
    err.message = `${err.message}\n${logs}`;
    throw err;
  }
}

/** Resolves with `promise`, or rejects after `ms` with `what` in the message. */
function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, rej) => {
    timer = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls GET /healthz until it answers 200; fails early if a process exits. */
async function waitHealthy(base, procs) {
  const deadline = Date.now() + WAIT_MS;
  let last = 'no answer yet';
  while (Date.now() < deadline) {
    for (const p of procs) {
      if (p.exited) throw new Error(`${p.name} ${p.exited} before ${base}/healthz answered`);
    }
    try {
      const res = await fetch(`${base}/healthz`, { signal: AbortSignal.timeout(2_000) });
      if (res.status === 200) return;
      last = `HTTP ${res.status}`;
    } catch (err) {
      last = err.cause?.code ?? err.message;
    }
    await sleep(100);
  }
  throw new Error(`${base}/healthz did not answer 200 within ${WAIT_MS} ms (last: ${last})`);
}

// ---------------------------------------------------------------------------------------
// The client side

/** GraphQL over HTTP, as a browser's fetch would send it. */
async function graphql(base, query, variables) {
  const res = await fetch(`${base}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ query, variables }),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const text = await res.text();
  assert.equal(res.status, 200, `POST /graphql answered ${res.status}: ${text}`);
  const body = JSON.parse(text);
  assert.equal(body.errors, undefined, `GraphQL errors: ${JSON.stringify(body.errors)}`);
  return body.data;
}

async function submit(base, input) {
  const data = await graphql(base, SUBMIT, { i: input });
  const sub = data.submit;
  assert.equal(typeof sub.id, 'string', `submit returned no id: ${JSON.stringify(data)}`);
  assert.ok(sub.id.length > 0);
  assert.equal(sub.status, 'QUEUED', 'submit answers at once with status QUEUED');
  return sub.id;
}

/**
 * Subscribes with the official graphql-ws client (graphql-transport-ws subprotocol) and
 * collects every event until the server completes the stream.
 */
async function collectEvents(wsUrl, id) {
  const client = createClient({
    url: wsUrl,
    webSocketImpl: WebSocket,
    lazy: true,
    retryAttempts: 0,
  });
  const events = [];
  try {
    await within(
      WAIT_MS,
      `submissionEvents(${id}) to complete (got ${events.length} events so far)`,
      new Promise((res, rej) => {
        client.subscribe(
          { query: EVENTS, variables: { id } },
          {
            next: (msg) => {
              if (msg.errors) rej(new Error(`subscription errors: ${JSON.stringify(msg.errors)}`));
              else events.push(msg.data.submissionEvents);
            },
            error: (err) => rej(err instanceof Error ? err : new Error(describeWsError(err))),
            complete: res,
          },
        );
      }),
    );
  } finally {
    await client.dispose();
  }
  return events;
}

function describeWsError(err) {
  if (Array.isArray(err)) return `GraphQL errors: ${JSON.stringify(err)}`;
  if (err && typeof err === 'object' && 'code' in err) {
    return `WebSocket closed: ${err.code} ${err.reason ?? ''}`;
  }
  return String(err);
}

/** The contract every run of print('hi') must meet, whichever engine ran it. */
function assertHelloEvents(events) {
  assert.ok(events.length >= 2, `expected several events, got ${JSON.stringify(events)}`);
  const seqs = events.map((e) => e.seq);
  assert.equal(seqs[0], 1, `seq starts at 1: ${seqs}`);
  for (let i = 1; i < seqs.length; i += 1) {
    assert.ok(seqs[i] > seqs[i - 1], `seq strictly increasing: ${seqs}`);
    assert.equal(seqs[i], seqs[i - 1] + 1, `seq increases by one per event (none lost): ${seqs}`);
  }
  const types = events.map((e) => e.__typename);
  assert.equal(types.filter((t) => t === 'FinishedEvent').length, 1, `one FinishedEvent: ${types}`);

  const last = events.at(-1);
  assert.equal(last.__typename, 'FinishedEvent', `last event: ${types}`);
  const { submission } = last;
  assert.equal(submission.status, 'FINISHED');
  assert.equal(submission.verdict, 'ACCEPTED', JSON.stringify(submission));
  assert.equal(submission.tests.length, 1, JSON.stringify(submission));
  assert.equal(submission.tests[0].stdout, 'hi\n');
}

/** A raw WebSocket with one subprotocol; resolves once open. */
function openRaw(url, protocol) {
  return within(WAIT_MS, `WebSocket ${url} (${protocol}) to open`, new Promise((res, rej) => {
    const ws = new WebSocket(url, protocol);
    ws.once('open', () => res(ws));
    ws.once('error', rej);
    ws.once('unexpected-response', (_req, resp) => {
      rej(new Error(`upgrade refused: HTTP ${resp.statusCode}`));
    });
  }));
}

/** Buffers incoming JSON frames so that none is lost between two awaits. */
function frames(ws) {
  const queue = [];
  const waiters = [];
  let closed = null;
  ws.on('message', (data) => {
    const msg = JSON.parse(data.toString());
    const w = waiters.shift();
    if (w) w.res(msg); else queue.push(msg);
  });
  ws.on('close', (code, reason) => {
    closed = new Error(`socket closed: ${code} ${reason}`);
    for (const w of waiters.splice(0)) w.rej(closed);
  });
  return (what) => within(WAIT_MS, what, new Promise((res, rej) => {
    if (queue.length) res(queue.shift());
    else if (closed) rej(closed);
    else waiters.push({ res, rej });
  }));
}

// ---------------------------------------------------------------------------------------
// Tests

describe('verdict standalone (embedded broker)', { timeout: TEST_TIMEOUT_MS * 3 }, () => {
  // Started by the first test that needs it, so that a server that fails to start fails
  // each test (with its log) rather than a hook.
  let started;
  let proc;
  const standalone = () => {
    started ??= (async () => {
      const port = await freePort();
      const base = `http://127.0.0.1:${port}`;
      proc = startVerdict('standalone', ['standalone', '--listen', `127.0.0.1:${port}`]);
      await withLogs([proc], () => waitHealthy(base, [proc]));
      return { proc, port, base };
    })();
    return started;
  };

  after(async () => {
    await stop(proc);
  });

  test('HTTP submit, then graphql-ws subscription to FinishedEvent', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { proc, port, base } = await standalone();
    await withLogs([proc], async () => {
      const id = await submit(base, HELLO);
      const events = await collectEvents(`ws://127.0.0.1:${port}/graphql`, id);
      assertHelloEvents(events);
    });
  });

  test('legacy graphql-ws subprotocol is accepted at /ws', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { proc, port } = await standalone();
    await withLogs([proc], async () => {
      const ws = await openRaw(`ws://127.0.0.1:${port}/ws`, 'graphql-ws');
      try {
        assert.equal(ws.protocol, 'graphql-ws', 'server selected the legacy subprotocol');
        const next = frames(ws);
        ws.send(JSON.stringify({ type: 'connection_init', payload: {} }));
        let msg = await next('connection_ack');
        // The legacy protocol allows keep-alive frames ("ka") at any time.
        while (msg.type === 'ka') msg = await next('connection_ack');
        assert.equal(msg.type, 'connection_ack', JSON.stringify(msg));
      } finally {
        ws.terminate();
      }
    });
  });
});

test('verdict server + verdict worker on Redis', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const redisUrl = process.env.REDIS_URL;
  if (!redisUrl) {
    t.skip('REDIS_URL is not set');
    return;
  }
  const env = {
    VERDICT_REDIS_NAMESPACE: `node-test-${randomBytes(6).toString('hex')}`,
  };
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const procs = [];
  try {
    procs.push(startVerdict('server', [
      'server', '--listen', `127.0.0.1:${port}`, '--redis-url', redisUrl,
    ], env));
    procs.push(startVerdict('worker', [
      'worker', '--redis-url', redisUrl, '--concurrency', '1',
    ], env));
    await withLogs(procs, async () => {
      await waitHealthy(base, procs);
      const id = await submit(base, HELLO);
      const events = await collectEvents(`ws://127.0.0.1:${port}/graphql`, id);
      assertHelloEvents(events);
      for (const p of procs) assert.equal(p.exited, null, `${p.name} stayed up`);
    });
  } finally {
    await Promise.all(procs.map(stop));
  }
});
