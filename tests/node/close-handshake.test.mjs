// The WebSocket close handshake (RFC 6455 §5.5.1, §7.1.1): whoever closes, both Close
// frames are exchanged before the TCP connection ends, so the peer sees the real code and
// never 1006. Checked on a bare TCP socket (which frames, and when the EOF comes) and with
// the `ws` library and the reference graphql-ws client in lazy mode, which closes its
// socket with 1000 each time its last subscription completes.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';

import WebSocket from 'ws';
import { createClient } from 'graphql-ws';

import {
  standalone, stop, rawSocket, tcpWebSocket, closeCode, submitId, within, withLogs, WAIT_MS,
} from './helpers.mjs';

const CLOSE = 0x8;
const EVENTS = 'subscription($id: ID!){ submissionEvents(id:$id){ __typename seq } }';

describe('close handshake', { timeout: 300_000 }, () => {
  let proc;
  before(async () => {
    proc = await standalone(['--ws-init-timeout-ms', '600'], { env: { VERDICT_SUBMITS_PER_MINUTE: '0' } });
  });
  after(() => stop(proc));

  /** A bare socket that has been acknowledged. */
  async function acked(protocol = 'graphql-transport-ws') {
    const c = await tcpWebSocket(proc.port, '/graphql', protocol);
    c.text({ type: 'connection_init' });
    const ack = await c.frame('connection_ack');
    assert.match(ack.payload.toString(), /connection_ack/);
    return c;
  }

  /** Reads frames up to the server's Close frame; returns its code. */
  async function closeFrame(c) {
    for (;;) {
      const f = await c.frame('the Close frame');
      if (f.opcode === CLOSE) return closeCode(f);
    }
  }

  test('a client that closes with 1000 receives 1000, then the TCP connection ends', async () => {
    const c = await acked();
    const sent = Date.now();
    c.close(1000, 'bye');
    assert.equal(await closeFrame(c), 1000);
    const eof = await within(2_000, 'EOF after the close handshake', c.eof);
    assert.ok(eof - sent < 1_000, `EOF ${eof - sent} ms after the Close frame`);
  });

  test('any code a client closes with is echoed (4321, and 1001 from a page going away)', async () => {
    for (const code of [4321, 1001]) {
      const c = await acked();
      c.close(code);
      assert.equal(await closeFrame(c), code);
      await within(2_000, 'EOF', c.eof);
    }
  });

  test('the ws library sees 1000, not 1006, after closing with 1000', async () => {
    for (const protocol of ['graphql-transport-ws', 'graphql-ws']) {
      const ws = await rawSocket(`ws://127.0.0.1:${proc.port}/graphql`, protocol);
      ws.json({ type: 'connection_init' });
      assert.equal((await ws.next('ack')).type, 'connection_ack');
      ws.close(1000);
      const { code } = await within(2_000, 'close event', ws.closed);
      assert.equal(code, 1000, protocol);
    }
  });

  // Server-initiated: the server sends its Close, then waits for the client's answer
  // before it ends the TCP connection (RFC 6455 §7.1.1: the server closes TCP first, but
  // only after the exchange).
  const serverCloses = [
    ['4400 (malformed message)', 4400, async (c) => c.text({ type: 'nope' })],
    ['4408 (no connection_init)', 4408, async () => {}],
    ['4401 (subscribe before ack)', 4401, async (c) => c.text({ id: '1', type: 'subscribe', payload: { query: '{ __typename }' } })],
    ['4429 (second connection_init)', 4429, async (c) => {
      c.text({ type: 'connection_init' });
      await c.frame('ack');
      c.text({ type: 'connection_init' });
    }],
  ];
  for (const [name, code, provoke] of serverCloses) {
    test(`server-initiated ${name}: Close frame, then TCP open until the client answers`, async () => {
      const c = await tcpWebSocket(proc.port, '/graphql', 'graphql-transport-ws');
      await provoke(c);
      assert.equal(await closeFrame(c), code);
      const early = await Promise.race([c.eof.then(() => 'eof'), sleep(300).then(() => 'open')]);
      assert.equal(early, 'open', 'the server waits for the client\'s Close frame');
      const answered = Date.now();
      c.close(code);
      const eof = await within(2_000, 'EOF after our answer', c.eof);
      assert.ok(eof - answered < 1_000, `EOF ${eof - answered} ms after our answer`);
    });
  }

  test('legacy connection_terminate: the server closes with 1000 and a handshake', async () => {
    const c = await acked('graphql-ws');
    c.text({ type: 'connection_terminate' });
    assert.equal(await closeFrame(c), 1000);
    c.close(1000);
    await within(2_000, 'EOF', c.eof);
  });

  test('4406 when no known subprotocol is offered, with a handshake', async () => {
    const c = await tcpWebSocket(proc.port, '/graphql', 'mqtt');
    assert.equal(await closeFrame(c), 4406);
    c.close(4406);
    await within(2_000, 'EOF', c.eof);
  });

  test('300 back-to-back submit → subscribe → complete cycles on one lazy reference client: zero errors', { timeout: 240_000 }, async () => {
    const closes = [];
    const client = createClient({
      url: `ws://127.0.0.1:${proc.port}/graphql`,
      webSocketImpl: WebSocket,
      lazy: true, // the default, and what apps (Apollo, urql) use
      // No retries: a socket that ends badly must show as an error, not hide in a back-off.
      retryAttempts: 0,
      on: { closed: (e) => closes.push(e.code) },
    });
    const errors = [];
    const slow = [];
    await withLogs([proc], async () => {
      try {
        for (let i = 0; i < 300; i++) {
          const id = await submitId(proc.base, { language: 'bash', source: `echo ${i}` });
          const t0 = Date.now();
          let first = null;
          const seqs = [];
          await within(WAIT_MS, `cycle ${i}`, new Promise((res) => {
            client.subscribe({ query: EVENTS, variables: { id } }, {
              next: (r) => {
                first ??= Date.now() - t0;
                if (r.errors) errors.push({ i, errors: r.errors });
                else seqs.push(r.data.submissionEvents.seq);
              },
              error: (e) => { errors.push({ i, error: e?.code ?? String(e) }); res(); },
              complete: res,
            });
          }));
          if (first === null || first > 1_000) slow.push({ i, first });
          assert.deepEqual(seqs, seqs.map((_, k) => k + 1), `cycle ${i}: every event in order`);
          assert.ok(seqs.length >= 2, `cycle ${i}: events ${seqs}`);
        }
      } finally {
        await client.dispose();
      }
      assert.deepEqual(errors, [], 'no cycle failed');
      assert.deepEqual(slow, [], 'no cycle waited for a retry before its first event');
      await sleep(200);
      const abnormal = closes.filter((c) => c !== 1000);
      assert.deepEqual(abnormal, [], `every lazy close ended with 1000 (${closes.length} closes)`);
      assert.ok(closes.length >= 250, `the client closed its socket between cycles (${closes.length})`);
      console.log(`# 300 cycles: 0 errors, ${closes.length} sockets closed, all with 1000`);
    });
  });
});
