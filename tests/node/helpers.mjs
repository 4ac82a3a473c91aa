// Shared by the Node tests: `verdict` processes on free ports (killed when the tests end),
// raw WebSocket frames (over `ws`, and over a bare TCP socket), GraphQL over HTTP, timeouts.

import { after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer, createConnection } from 'node:net';
import { randomBytes } from 'node:crypto';
import { dirname, resolve, isAbsolute } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

import WebSocket from 'ws';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const VERDICT_BIN = (() => {
  const bin = process.env.VERDICT_BIN || 'target/debug/verdict';
  return isAbsolute(bin) ? bin : resolve(REPO_ROOT, bin);
})();
export const WAIT_MS = 30_000;

const running = new Set();
after(async () => {
  await Promise.all([...running].map(stop));
});
process.on('exit', () => {
  for (const p of running) {
    try { p.child.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

export function freePort() {
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

export function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, rej) => {
    timer = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** `verdict standalone ARGS` on `port` (a free one by default); resolves when healthy. */
export async function standalone(args = [], { port, env = {} } = {}) {
  assert.ok(existsSync(VERDICT_BIN), `verdict binary not found at ${VERDICT_BIN}`);
  port ??= await freePort();
  const child = spawn(
    VERDICT_BIN,
    ['standalone', '--listen', `127.0.0.1:${port}`, '--concurrency', '1', ...args],
    { cwd: REPO_ROOT, env: { RUST_LOG: 'warn', ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const proc = { child, port, base: `http://127.0.0.1:${port}`, log: '', exited: null };
  const keep = (chunk) => { proc.log = (proc.log + chunk.toString()).slice(-8192); };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  child.on('exit', (code, signal) => {
    proc.exited = `exited with ${signal ?? code}`;
    running.delete(proc);
  });
  running.add(proc);
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    if (proc.exited) throw new Error(`verdict ${proc.exited}:\n${proc.log}`);
    try {
      const res = await fetch(`${proc.base}/healthz`, { signal: AbortSignal.timeout(2_000) });
      if (res.status === 200) return proc;
    } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error(`verdict did not become healthy:\n${proc.log}`);
    await sleep(50);
  }
}

/** SIGTERM (or `signal`), then SIGKILL after 5 s. */
export async function stop(proc, signal = 'SIGTERM') {
  if (!proc || proc.exited) return;
  const gone = new Promise((res) => {
    proc.child.once('exit', res);
    if (proc.exited) res();
  });
  proc.child.kill(signal);
  const t = setTimeout(() => proc.child.kill('SIGKILL'), 5_000);
  await gone;
  clearTimeout(t);
}

/** A raw socket: `next()` gives the next JSON frame, `closed` resolves with {code, reason}. */
export function rawSocket(url, protocol) {
  return within(WAIT_MS, `WebSocket ${url} to open`, new Promise((res, rej) => {
    const ws = protocol ? new WebSocket(url, protocol) : new WebSocket(url);
    const queue = [];
    const waiters = [];
    let closed = null;
    ws.closed = new Promise((resClose) => {
      ws.on('close', (code, reason) => {
        closed = { code, reason: reason.toString() };
        for (const w of waiters.splice(0)) w.rej(new Error(`closed ${code} ${reason}`));
        resClose(closed);
      });
    });
    ws.on('message', (data) => {
      const msg = JSON.parse(data.toString());
      const w = waiters.shift();
      if (w) w.res(msg); else queue.push(msg);
    });
    ws.next = (what = 'a frame') => within(WAIT_MS, what, new Promise((r, j) => {
      if (queue.length) r(queue.shift());
      else if (closed) j(new Error(`closed ${closed.code} ${closed.reason}`));
      else waiters.push({ res: r, rej: j });
    }));
    ws.json = (msg) => ws.send(JSON.stringify(msg));
    ws.once('open', () => res(ws));
    ws.once('error', rej);
  }));
}

/** Reads one counter from /metrics. */
export async function metric(base, name) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  assert.ok(line, `${name} not in /metrics`);
  return Number(line.split(' ').at(-1));
}

/** `verdict ARGS` (server, worker, ...); resolves at once, or when healthy with `port`. */
export async function verdict(name, args, { port, env = {} } = {}) {
  assert.ok(existsSync(VERDICT_BIN), `verdict binary not found at ${VERDICT_BIN}`);
  const child = spawn(VERDICT_BIN, args, {
    cwd: REPO_ROOT,
    env: { RUST_LOG: 'warn', ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const proc = { name, child, port, base: port && `http://127.0.0.1:${port}`, log: '', exited: null };
  const keep = (chunk) => { proc.log = (proc.log + chunk.toString()).slice(-8192); };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  proc.gone = new Promise((res) => child.on('exit', (code, signal) => {
    proc.exited = `exited with ${signal ?? code}`;
    running.delete(proc);
    res(proc.exited);
  }));
  running.add(proc);
  if (!port) return proc;
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    if (proc.exited) throw new Error(`${name} ${proc.exited}:\n${proc.log}`);
    try {
      const res = await fetch(`${proc.base}/healthz`, { signal: AbortSignal.timeout(2_000) });
      if (res.status === 200) return proc;
    } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error(`${name} did not become healthy:\n${proc.log}`);
    await sleep(50);
  }
}

/** A Redis namespace of its own for one test run. */
export function namespace(what) {
  return `node-${what}-${process.pid}-${Date.now().toString(36)}`;
}

/** GraphQL over HTTP; fails on errors. */
export async function graphql(base, query, variables, headers = {}) {
  const res = await fetch(`${base}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json', ...headers },
    body: JSON.stringify({ query, variables }),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const body = await res.json();
  assert.equal(body.errors, undefined, `GraphQL errors: ${JSON.stringify(body.errors)}`);
  return body.data;
}

export const SUBMIT_ID = 'mutation($i: SubmitInput!){ submit(input:$i){ id } }';

/** Submits `input`; resolves with the id. */
export async function submitId(base, input, headers) {
  return (await graphql(base, SUBMIT_ID, { i: input }, headers)).submit.id;
}

/** Adds the tail of the processes' logs to an assertion error. */
export async function withLogs(procs, fn) {
  try {
    return await fn();
  } catch (err) {
    const logs = procs.filter(Boolean)
      .map((p) => `--- ${p.name ?? 'verdict'} (${p.exited ?? 'running'}) ---\n${p.log || '(no output)'}`)
      .join('\n');
    err.message = `${err.message}\n${logs}`;
    throw err;
  }
}

/**
 * A WebSocket client on a bare TCP socket, to see exactly which frames the server sends
 * and when it ends the TCP connection (the `ws` library hides both).
 *   frame()        the next frame: {opcode, payload}; rejects on EOF
 *   text(obj)      sends a JSON text frame (masked, as a client must)
 *   close(code)    sends a Close frame
 *   eof            resolves (with the time) when the server ends the TCP connection
 */
export function tcpWebSocket(port, path, protocol) {
  return within(WAIT_MS, `raw WebSocket on ${port}${path}`, new Promise((res, rej) => {
    const sock = createConnection({ host: '127.0.0.1', port });
    let buf = Buffer.alloc(0);
    let upgraded = false;
    const frames = [];
    const waiters = [];
    let ended = false;
    const c = {};
    c.eof = new Promise((r) => sock.on('close', () => {
      ended = true;
      for (const w of waiters.splice(0)) w.rej(new Error('EOF'));
      r(Date.now());
    }));
    const parse = () => {
      for (;;) {
        if (buf.length < 2) return;
        let len = buf[1] & 0x7f;
        let off = 2;
        if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
        else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
        if (buf.length < off + len) return;
        const frame = { opcode: buf[0] & 0x0f, payload: buf.subarray(off, off + len) };
        buf = buf.subarray(off + len);
        const w = waiters.shift();
        if (w) w.res(frame); else frames.push(frame);
      }
    };
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString();
        buf = buf.subarray(end + 4);
        upgraded = true;
        if (!head.startsWith('HTTP/1.1 101')) { rej(new Error(head)); return; }
        c.headers = head;
        res(c);
      }
      parse();
    });
    sock.on('error', rej);
    const send = (opcode, payload) => {
      const mask = randomBytes(4);
      const body = Buffer.from(payload);
      for (let i = 0; i < body.length; i++) body[i] ^= mask[i % 4];
      if (body.length >= 126) throw new Error('short frames only');
      sock.write(Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | body.length]), mask, body]));
    };
    c.frame = (what = 'a frame') => within(WAIT_MS, what, new Promise((r, j) => {
      if (frames.length) r(frames.shift());
      else if (ended) j(new Error('EOF'));
      else waiters.push({ res: r, rej: j });
    }));
    c.text = (obj) => send(0x1, JSON.stringify(obj));
    c.close = (code, reason = '') => {
      const p = Buffer.alloc(2 + Buffer.byteLength(reason));
      p.writeUInt16BE(code, 0);
      p.write(reason, 2);
      send(0x8, p);
    };
    c.destroy = () => sock.destroy();
    const key = randomBytes(16).toString('base64');
    sock.write([
      `GET ${path} HTTP/1.1`, `Host: 127.0.0.1:${port}`, 'Upgrade: websocket', 'Connection: Upgrade',
      `Sec-WebSocket-Key: ${key}`, 'Sec-WebSocket-Version: 13',
      ...(protocol ? [`Sec-WebSocket-Protocol: ${protocol}`] : []), '', '',
    ].join('\r\n'));
  }));
}

/** The code of a Close frame's payload. */
export const closeCode = (frame) => (frame.payload.length >= 2 ? frame.payload.readUInt16BE(0) : 1005);
