// SIGTERM and the subprotocol choice (issue 17).
//
// - On SIGTERM the server never sends `complete` for a submission that has not finished:
//   it closes each socket with 1001 after a proper close handshake, and waits for the
//   handshakes before it exits, so clients reconnect and resubscribe with `afterSeq`.
// - Standalone keeps everything in memory: after a restart the resubscribe is refused
//   with extensions.code NOT_FOUND.
// - The subprotocol is the client's first choice that we speak, echoed exactly.
// (The Redis restart with every client is in clients.test.mjs.)

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';

import WebSocket from 'ws';

import {
  standalone, stop, rawSocket, tcpWebSocket, closeCode, submitId, within, withLogs, WAIT_MS,
} from './helpers.mjs';
import { wsClient, watch, EVENTS } from './clients.mjs';

const SLOW = { language: 'python3', source: 'import time\nfor i in range(20):\n    print(i, flush=True)\n    time.sleep(0.3)\n' };

describe('SIGTERM', { timeout: 120_000 }, () => {
  test('each socket gets 1001, and the server exits only after the client answered', async () => {
    const proc = await standalone();
    await withLogs([proc], async () => {
      const c = await tcpWebSocket(proc.port, '/graphql', 'graphql-transport-ws');
      c.text({ type: 'connection_init' });
      await c.frame('ack');
      const exited = new Promise((res) => proc.child.once('exit', (code, signal) => res({ code, signal })));
      proc.child.kill('SIGTERM');
      let frame;
      do frame = await c.frame('the Close frame'); while (frame.opcode !== 0x8);
      assert.equal(closeCode(frame), 1001);
      const early = await Promise.race([exited.then(() => 'exited'), sleep(300).then(() => 'waiting')]);
      assert.equal(early, 'waiting', 'the server waits for the close handshake before it exits');
      c.close(1001);
      await within(2_000, 'EOF', c.eof);
      assert.deepEqual(await within(5_000, 'the exit', exited), { code: 0, signal: null });
    });
  });

  test('no `complete` for an unfinished subscription: 8 sockets, each sees only 1001', async () => {
    const proc = await standalone([], { env: { VERDICT_SUBMITS_PER_MINUTE: '0' } });
    await withLogs([proc], async () => {
      const id = await submitId(proc.base, SLOW);
      const sockets = [];
      for (let i = 0; i < 8; i++) {
        const ws = await rawSocket(`ws://127.0.0.1:${proc.port}/graphql`, 'graphql-transport-ws');
        ws.json({ type: 'connection_init' });
        assert.equal((await ws.next('ack')).type, 'connection_ack');
        ws.json({ id: 's', type: 'subscribe', payload: { query: EVENTS, variables: { id } } });
        assert.equal((await ws.next('the first event')).type, 'next');
        sockets.push(ws);
      }
      const frames = sockets.map(() => []);
      sockets.forEach((ws, i) => ws.on('message', (d) => frames[i].push(JSON.parse(d.toString()).type)));
      proc.child.kill('SIGTERM');
      const closes = await within(WAIT_MS, 'every close', Promise.all(sockets.map((ws) => ws.closed)));
      assert.deepEqual(closes.map((c) => c.code), Array(8).fill(1001));
      for (const f of frames) assert.ok(!f.includes('complete'), `frames after SIGTERM: ${f}`);
    });
  });

  test('standalone restart: the resubscribe is refused with extensions.code NOT_FOUND', async () => {
    let proc = await standalone();
    const port = proc.port;
    const closes = [];
    const client = wsClient(`ws://127.0.0.1:${port}/graphql`, { closed: (e) => closes.push(e.code) });
    const adapter = {
      subscribe: (variables, sink) => client.subscribe({ query: EVENTS, variables }, {
        next: (r) => (r.errors ? sink.error(r.errors) : sink.next(r.data.submissionEvents)),
        error: sink.error,
        complete: sink.complete,
      }),
    };
    try {
      await withLogs([proc], async () => {
        const id = await submitId(proc.base, SLOW);
        const w = watch(adapter, id);
        await within(WAIT_MS, 'events', (async () => { while (w.events.length < 2) await sleep(20); })());
        await stop(proc);
        proc = await standalone([], { port });
        const done = await within(WAIT_MS, 'the resubscribe to be answered', w.done);
        assert.equal(closes[0], 1001, `closes: ${closes}`);
        assert.equal(done.events.at(-1)?.__typename === 'FinishedEvent', false);
        const errors = done.errors.flat();
        assert.equal(errors.length, 1, JSON.stringify(done.errors));
        assert.equal(errors[0].extensions?.code, 'NOT_FOUND', JSON.stringify(errors));
      });
    } finally {
      await client.dispose();
      await stop(proc);
    }
  });
});

describe('subprotocol: the client\'s order of preference', { timeout: 60_000 }, () => {
  for (const offer of [['graphql-ws', 'graphql-transport-ws'], ['graphql-transport-ws', 'graphql-ws']]) {
    test(`offered ${offer.join(', ')}: ${offer[0]}`, async () => {
      const proc = await standalone();
      try {
        const ws = await rawSocket(`ws://127.0.0.1:${proc.port}/graphql`, offer);
        assert.equal(ws.protocol, offer[0]);
        ws.json({ type: 'connection_init' });
        assert.equal((await ws.next('ack')).type, 'connection_ack');
        ws.close(1000);
        assert.equal((await ws.closed).code, 1000);
        // The header carries the exact token (on one line, as gql reads it).
        const c = await tcpWebSocket(proc.port, '/ws', offer.join(', '));
        const header = c.headers.split('\r\n').find((l) => /^sec-websocket-protocol:/i.test(l));
        assert.equal(header.split(':')[1].trim(), offer[0]);
        c.destroy();
      } finally {
        await stop(proc);
      }
    });
  }

  test('unknown tokens are skipped; nothing we speak: 4406', async () => {
    const proc = await standalone();
    try {
      const ws = await rawSocket(`ws://127.0.0.1:${proc.port}/graphql`, ['chat', 'graphql-ws']);
      assert.equal(ws.protocol, 'graphql-ws');
      ws.terminate();
      const none = await new Promise((res) => {
        const s = new WebSocket(`ws://127.0.0.1:${proc.port}/graphql`, ['chat']);
        s.on('close', (code) => res(code));
        s.on('error', () => res('error'));
      });
      // The server answers without a subprotocol and closes with 4406; `ws` may refuse the
      // handshake first (it requires one of its offers back).
      assert.ok(none === 4406 || none === 'error', String(none));
    } finally {
      await stop(proc);
    }
  });
});
