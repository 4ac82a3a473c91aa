// graphql-ws conformance with raw frames (each close code of PROTOCOL.md, ping/pong, the
// legacy subprotocol), and the reference `graphql-ws` client's retry behaviour: a
// rejected key is not retried, a dropped server is.
//
// Clients should pass `shouldRetry: (e) => e?.code !== 4403`: graphql-ws retries 4403 by
// default ("might grant access after retry"), which for a bad API key only adds load.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';

import WebSocket from 'ws';
import { createClient } from 'graphql-ws';

import { standalone, stop, rawSocket, metric, within, WAIT_MS } from './helpers.mjs';

const KEY = 'node-test-key';
const DIGEST = createHash('sha256').update(KEY).digest('hex');
const SLEEPER = { language: 'python3', source: 'import time\ntime.sleep(5)' };
const SUBMIT = 'mutation($i: SubmitInput!){ submit(input:$i){ id } }';
const EVENTS = 'subscription($id: ID!){ submissionEvents(id:$id){ __typename seq } }';

async function submit(base, input, key) {
  const res = await fetch(`${base}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}) },
    body: JSON.stringify({ query: SUBMIT, variables: { i: input } }),
  });
  const body = await res.json();
  assert.ok(body.data?.submit?.id, JSON.stringify(body));
  return body.data.submit.id;
}

describe('graphql-transport-ws close codes (keys configured)', { timeout: 120_000 }, () => {
  let proc;
  let url;
  before(async () => {
    proc = await standalone(['--ws-init-timeout-ms', '700', '--ws-keepalive-ms', '60000'], {
      env: { VERDICT_API_KEYS: `node:${DIGEST}` },
    });
    url = `ws://127.0.0.1:${proc.port}/graphql`;
  });
  after(() => stop(proc));

  const open = () => rawSocket(url, 'graphql-transport-ws');
  const init = async (key = KEY) => {
    const ws = await open();
    ws.json({ type: 'connection_init', payload: { authorization: `Bearer ${key}` } });
    assert.deepEqual(await ws.next('connection_ack'), { type: 'connection_ack' });
    return ws;
  };

  test('4400 on a malformed message, with a reason that fits a close frame', async () => {
    const ws = await open();
    ws.json({ type: 'x'.repeat(500) });
    const { code, reason } = await ws.closed;
    assert.equal(code, 4400);
    assert.ok(Buffer.byteLength(reason) <= 123, reason);
  });

  test('4401 on subscribe before connection_ack', async () => {
    const ws = await open();
    ws.json({ id: '1', type: 'subscribe', payload: { query: '{ __typename }' } });
    assert.deepEqual(await ws.closed, { code: 4401, reason: 'Unauthorized' });
  });

  test('4403 on a missing or bad key', async () => {
    for (const payload of [{}, { authorization: 'Bearer wrong' }]) {
      const ws = await open();
      ws.json({ type: 'connection_init', payload });
      assert.deepEqual(await ws.closed, { code: 4403, reason: 'Forbidden' });
    }
  });

  test('4408 when connection_init does not come', async () => {
    const ws = await open();
    const t0 = Date.now();
    const { code } = await ws.closed;
    assert.equal(code, 4408);
    assert.ok(Date.now() - t0 >= 600, 'after the configured timeout');
  });

  test('4429 on a second connection_init', async () => {
    const ws = await init();
    ws.json({ type: 'connection_init', payload: { authorization: `Bearer ${KEY}` } });
    assert.equal((await ws.closed).code, 4429);
  });

  test('4409 on a duplicate subscription id; ping → pong before that', async () => {
    const id = await submit(proc.base, SLEEPER, KEY);
    const ws = await init();
    ws.json({ type: 'ping' });
    assert.equal((await ws.next('pong')).type, 'pong');
    const sub = { id: 'same', type: 'subscribe', payload: { query: EVENTS, variables: { id } } };
    ws.json(sub);
    assert.equal((await ws.next('first event')).type, 'next');
    ws.json(sub);
    assert.deepEqual(await ws.closed, { code: 4409, reason: 'Subscriber for same already exists' });
  });

  test('legacy graphql-ws: init with key, start, data, complete', async () => {
    const ws = await rawSocket(`ws://127.0.0.1:${proc.port}/ws`, 'graphql-ws');
    assert.equal(ws.protocol, 'graphql-ws');
    ws.json({ type: 'connection_init', payload: { authorization: `Bearer ${KEY}` } });
    assert.equal((await ws.next()).type, 'connection_ack');
    ws.json({ id: 'q', type: 'start', payload: { query: '{ languages { id } }' } });
    let msg = await ws.next('data');
    while (msg.type === 'ka') msg = await ws.next('data');
    assert.equal(msg.type, 'data', JSON.stringify(msg));
    assert.ok(Array.isArray(msg.payload.data.languages));
    msg = await ws.next('complete');
    while (msg.type === 'ka') msg = await ws.next('complete');
    assert.deepEqual(msg, { id: 'q', type: 'complete' });
    ws.terminate();
  });
});

describe('reference graphql-ws client', { timeout: 120_000 }, () => {
  test('a rejected key is not retried', async () => {
    const proc = await standalone([], { env: { VERDICT_API_KEYS: `node:${DIGEST}` } });
    try {
      const before = await metric(proc.base, 'verdict_websockets_total');
      const client = createClient({
        url: `ws://127.0.0.1:${proc.port}/graphql`,
        webSocketImpl: WebSocket,
        connectionParams: { authorization: 'Bearer not-a-key' },
        retryAttempts: 5,
        retryWait: () => sleep(50),
        shouldRetry: (e) => e?.code !== 4403,
      });
      const err = await within(WAIT_MS, 'the client to give up', new Promise((res) => {
        client.subscribe({ query: '{ __typename }' }, { next() {}, error: res, complete: () => res(null) });
      }));
      await client.dispose();
      assert.equal(err?.code, 4403, `closed with 4403: ${JSON.stringify(err)}`);
      assert.equal(await metric(proc.base, 'verdict_websockets_total'), before + 1, 'one connection, no retries');
    } finally {
      await stop(proc);
    }
  });

  test('a dropped server is retried', async () => {
    let proc = await standalone();
    const port = proc.port;
    let connected = 0;
    const client = createClient({
      url: `ws://127.0.0.1:${port}/graphql`,
      webSocketImpl: WebSocket,
      retryAttempts: 50,
      retryWait: () => sleep(200),
      // Our recommended setting (see the top of this file). It also retries a refused
      // connect, which the default (`isLikeCloseEvent`) gives up on when the socket's
      // error event wins the race with its close event.
      shouldRetry: (e) => e?.code !== 4403,
      on: { connected: () => { connected += 1; } },
    });
    try {
      const id = await submit(proc.base, SLEEPER);
      let events = 0;
      const done = new Promise((res, rej) => {
        client.subscribe(
          { query: EVENTS, variables: { id } },
          { next: () => { events += 1; }, error: rej, complete: res },
        );
      });
      done.catch(() => {}); // the new server does not know the id: NOT_FOUND, then complete
      await within(WAIT_MS, 'first event', (async () => { while (events === 0) await sleep(20); })());
      await stop(proc, 'SIGKILL');
      proc = await standalone([], { port });
      await within(WAIT_MS, 'the client to reconnect', (async () => { while (connected < 2) await sleep(50); })());
      assert.ok(connected >= 2);
    } finally {
      await client.dispose();
      await stop(proc);
    }
  });
});
