// Helpers for browser.test.mjs: a real `throng serve` process on ephemeral ports, HS256
// tokens, a static HTTP server for the page and the library, a cuttable TCP proxy, an
// events receiver, the push API, and bounded polling. No dependency beyond node itself.
//
// This file sits in test/, so `node --test` loads it as a test file too: it must stay free
// of side effects at import (it defines, never starts, anything).

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

export const JS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO = path.resolve(JS_DIR, '..', '..');
export const THRONG_BIN = process.env.THRONG_BIN
  ? path.resolve(process.env.THRONG_BIN)
  : path.join(REPO, 'target', 'debug', 'throng');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
/** The library the page loads as /throng.js (THRONG_JS: another file, to try a build). */
export const LIBRARY = process.env.THRONG_JS ? path.resolve(process.env.THRONG_JS) : path.join(JS_DIR, 'throng.js');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const nowSecs = () => Math.floor(Date.now() / 1000);

/** Polls `cond` (sync or async) every `every` ms until it is truthy; throws after `ms`. */
export async function waitUntil(what, cond, { ms = 15000, every = 50, detail } = {}) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await cond();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      const extra = detail ? `\n${await detail()}` : '';
      throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${String(last)})${extra}`);
    }
    await sleep(every);
  }
}

// ---------------------------------------------------------------------------------------
// JWT (HS256)

const b64url = (buf) => Buffer.from(buf).toString('base64url');

export function mintJwt(secret, claims) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

// ---------------------------------------------------------------------------------------
// The server process

/** The `[client, api]` addresses of a JSON `listening` log line, or null. */
export function listeningAddrs(line) {
  let v;
  try {
    v = JSON.parse(line);
  } catch {
    return null;
  }
  const f = v.fields || {};
  if ((f.message ?? v.message) !== 'listening') return null;
  const client = f.client_addr ?? v.client_addr;
  const api = f.api_addr ?? v.api_addr;
  return client && api ? { client, api } : null;
}

const portOf = (addr) => Number(addr.slice(addr.lastIndexOf(':') + 1));

/**
 * Starts `throng serve`. `args` are the flags; `--listen`/`--api-listen` default to
 * 127.0.0.1:0. Resolves once the `listening` line is read, with `{ proc, ws, api, wsPort,
 * apiPort, log, stop() }`; rejects if the process exits first or after `ms`.
 */
export async function startServer(args, { ms = 20000 } = {}) {
  if (!existsSync(THRONG_BIN)) {
    throw new Error(`${THRONG_BIN} is missing: run \`cargo build -p throng --bin throng\` (or scripts/browser-tests.sh)`);
  }
  const full = ['serve', '--log-format', 'json', ...args];
  if (!args.includes('--listen')) full.push('--listen', '127.0.0.1:0');
  if (!args.includes('--api-listen')) full.push('--api-listen', '127.0.0.1:0');
  const proc = spawn(THRONG_BIN, full, {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
  });
  const log = [];
  const exited = once(proc, 'exit');
  // A safety net for a test run that ends without its `after` hooks.
  const reap = () => proc.exitCode === null && proc.signalCode === null && proc.kill('SIGKILL');
  process.once('exit', reap);
  exited.then(() => process.off('exit', reap));
  const server = {
    proc,
    log,
    exited,
    tail: (n = 15) => log.slice(-n).join('\n'),
    /** SIGTERM (or `signal`), waits for the exit; SIGKILL if it takes over `ms`. */
    async stop(signal = 'SIGTERM', ms = 10000) {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill(signal);
      const timer = sleep(ms).then(() => 'timeout');
      if ((await Promise.race([exited, timer])) === 'timeout') {
        proc.kill('SIGKILL');
        await exited;
      }
    },
  };
  const listening = new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: proc.stderr });
    rl.on('line', (line) => {
      log.push(line);
      if (log.length > 500) log.shift();
      const a = listeningAddrs(line);
      if (a) resolve(a);
    });
    exited.then(([code, sig]) =>
      reject(new Error(`throng serve exited (${code ?? sig}) before listening:\n${server.tail()}`)),
    );
    proc.on('error', reject);
  });
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`throng serve did not log "listening" within ${ms} ms:\n${server.tail()}`)), ms);
  });
  try {
    const a = await Promise.race([listening, timeout]);
    Object.assign(server, { ws: a.client, api: a.api, wsPort: portOf(a.client), apiPort: portOf(a.api) });
    return server;
  } catch (e) {
    await server.stop('SIGKILL');
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** A temporary TOML config file (e.g. `[jwt] leeway_secs`, which has no flag). */
export function tempConfig(text) {
  const dir = mkdtempSync(path.join(tmpdir(), 'throng-browser-'));
  const file = path.join(dir, 'throng.toml');
  writeFileSync(file, text);
  return { file, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

// ---------------------------------------------------------------------------------------
// Push API

export function pushApi(server, apiKey) {
  const call = async (method, p, body) => {
    const res = await fetch(`http://${server.api}${p}`, {
      method,
      headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10000),
    });
    const text = await res.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {}
    return { status: res.status, json, text };
  };
  return {
    call,
    /** `POST /v1/push`, asserting 202 accepted. */
    async push(obj) {
      const r = await call('POST', '/v1/push', obj);
      if (r.status !== 202 || r.json?.accepted !== true) {
        throw new Error(`push ${JSON.stringify(obj)} answered ${r.status} ${r.text}`);
      }
      return r.json;
    },
    /** `GET /v1/stats`'s counters. */
    async counters() {
      const r = await call('GET', '/v1/stats');
      if (r.status !== 200 || !r.json?.counters) throw new Error(`stats: ${r.status} ${r.text}`);
      return r.json.counters;
    },
    /** A counter of `GET /metrics` (Prometheus text), summed over its labels (shards). */
    async metric(name) {
      const r = await call('GET', '/metrics');
      if (r.status !== 200) throw new Error(`metrics: ${r.status} ${r.text}`);
      let sum = 0;
      let seen = false;
      for (const line of r.text.split('\n')) {
        const m = /^([a-z_]+)(?:\{[^}]*\})? (\S+)$/.exec(line);
        if (m && m[1] === name) {
          sum += Number(m[2]);
          seen = true;
        }
      }
      if (!seen) throw new Error(`metrics: no ${name}`);
      return sum;
    },
    async presence(user) {
      const r = await call('GET', `/v1/presence/${encodeURIComponent(user)}`);
      if (r.status !== 200) throw new Error(`presence ${user}: ${r.status} ${r.text}`);
      return r.json;
    },
  };
}

// ---------------------------------------------------------------------------------------
// HTTP: the page and the library

export const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>throng browser test</title></head>
<body><p>throng browser test</p></body></html>
`;

/** Serves `/` (an empty page) and the files of clients/js (`/throng.js`, ...). */
export async function startStatic() {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/' || url.pathname === '/index.html') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(PAGE);
      return;
    }
    if (url.pathname === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    if (url.pathname === '/throng.js') {
      let body;
      try {
        body = readFileSync(LIBRARY);
      } catch {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8', 'cache-control': 'no-store' });
      res.end(body);
      return;
    }
    const rel = path.normalize(decodeURIComponent(url.pathname)).replace(/^\/+/, '');
    const file = path.join(JS_DIR, rel);
    if (!file.startsWith(JS_DIR + path.sep) || rel.startsWith('node_modules') || !/\.(m?js|json)$/.test(file)) {
      res.writeHead(404).end();
      return;
    }
    let body;
    try {
      body = readFileSync(file);
    } catch {
      res.writeHead(404).end();
      return;
    }
    const type = file.endsWith('.json') ? 'application/json' : 'text/javascript; charset=utf-8';
    res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' });
    res.end(body);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${server.address().port}/`,
    close: () => new Promise((r) => server.close(r)),
    server,
  };
}

/** Accepts event batches (`events_url`) and keeps every event. */
export async function startEventsSink() {
  const events = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      try {
        const batch = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        if (Array.isArray(batch)) events.push(...batch);
      } catch {}
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${server.address().port}/events`,
    events,
    close: () => {
      server.closeAllConnections?.();
      return new Promise((r) => server.close(r));
    },
  };
}

// ---------------------------------------------------------------------------------------
// The TCP proxy between the browser and the WebSocket listener

/**
 * Forwards every connection to 127.0.0.1:`targetPort()`. `cut()` destroys every open
 * pair (a lost connection, as the browser sees it: no close frame); while `blocked`, new
 * connections are accepted and destroyed at once.
 */
export async function startProxy(targetPort) {
  const pairs = new Set();
  const stats = { accepted: 0, refused: 0, forwarded: 0 };
  let blocked = false;
  const kill = (sock) => (sock.resetAndDestroy ? sock.resetAndDestroy() : sock.destroy());
  const server = net.createServer((client) => {
    stats.accepted++;
    client.on('error', () => {});
    if (blocked) {
      stats.refused++;
      kill(client);
      return;
    }
    client.setNoDelay(true);
    const upstream = net.connect(targetPort(), '127.0.0.1');
    upstream.setNoDelay(true);
    upstream.on('error', () => {});
    const pair = { client, upstream };
    pairs.add(pair);
    upstream.on('connect', () => stats.forwarded++);
    client.pipe(upstream);
    upstream.pipe(client);
    const end = () => {
      if (!pairs.delete(pair)) return;
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end);
    upstream.on('close', end);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: server.address().port,
    stats,
    open: () => pairs.size,
    block(on = true) {
      blocked = on;
    },
    /**
     * Stops forwarding on every open connection without closing it: a path that died
     * silently (a NAT that dropped the mapping, a laptop that slept), which neither end
     * sees. New connections are forwarded as usual.
     */
    freeze() {
      for (const { client, upstream } of pairs) {
        client.unpipe(upstream);
        upstream.unpipe(client);
        client.pause();
        upstream.pause();
      }
    },
    /** Drops every open connection with a TCP reset on both sides. */
    cut() {
      for (const pair of [...pairs]) {
        pairs.delete(pair);
        kill(pair.client);
        kill(pair.upstream);
      }
    },
    close() {
      this.cut();
      return new Promise((r) => server.close(r));
    },
  };
}

// ---------------------------------------------------------------------------------------
// In the page

/**
 * Runs before the page's scripts: wraps `WebSocket` so the test sees every socket the
 * library opens, every frame both ways and every close.
 */
export function recorderInitScript() {
  const Native = window.WebSocket;
  const sockets = [];
  window.__ws = sockets;
  class RecordingWebSocket extends Native {
    constructor(url, protocols) {
      super(url, protocols);
      const rec = { url: String(url), opened: false, extensions: null, recv: [], sent: [], close: null, error: false };
      sockets.push(rec);
      this.__rec = rec;
      this.addEventListener('open', () => {
        rec.opened = true;
        // What the 101 agreed to (Sec-WebSocket-Extensions), e.g. permessage-deflate.
        rec.extensions = this.extensions;
      });
      this.addEventListener('error', () => (rec.error = true));
      this.addEventListener('message', (e) => rec.recv.push(typeof e.data === 'string' ? e.data : '[binary]'));
      this.addEventListener('close', (e) => (rec.close = { code: e.code, reason: e.reason, clean: e.wasClean }));
    }
    send(data) {
      this.__rec.sent.push(typeof data === 'string' ? data : '[binary]');
      return super.send(data);
    }
  }
  window.WebSocket = RecordingWebSocket;
}

/**
 * In the page: imports the library, makes a client and records its events in `window.T`.
 * `arg`: { url, token?, useGetToken?, backoff?, options? (more client options) }.
 */
export async function pageCreateClient(arg) {
  const mod = await import('/throng.js');
  const ThrongClient = mod.ThrongClient ?? mod.default;
  if (typeof ThrongClient !== 'function') throw new Error('throng.js exports no ThrongClient');
  const plain = (x) => {
    if (x instanceof Error) {
      const { code, closeCode, reason, topic } = x;
      return JSON.parse(JSON.stringify({ error: x.name, message: x.message, code, closeCode, reason, topic }));
    }
    try {
      return JSON.parse(JSON.stringify(x ?? null));
    } catch {
      return String(x);
    }
  };
  const T = { events: [], t0: performance.now() };
  window.T = T;
  const opts = {};
  if (arg.useGetToken) opts.getToken = async () => window.nodeGetToken();
  else opts.token = arg.token;
  if (arg.backoff) opts.backoff = arg.backoff;
  Object.assign(opts, arg.options);
  const client = new ThrongClient(arg.url, opts);
  window.client = client;
  for (const name of ['push', 'state', 'resumed', 'gap', 'error', 'welcome']) {
    client.on(name, (x) => T.events.push({ name, x: plain(x), t: Math.round(performance.now() - T.t0) }));
  }
  T.of = (name) => T.events.filter((e) => e.name === name).map((e) => e.x);
  // Calls a client method, recording the outcome instead of throwing across evaluate.
  T.call = async (method, ...args) => {
    try {
      return { ok: true, value: plain(await client[method](...args)) };
    } catch (e) {
      return { ok: false, error: plain(e) };
    }
  };
  return true;
}
