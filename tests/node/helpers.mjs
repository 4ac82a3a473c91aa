// Shared by audit.test.mjs and ws-protocol.test.mjs: start `verdict standalone` on a free
// port (killed when the tests end), raw WebSocket frames, timeouts.

import { after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
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
