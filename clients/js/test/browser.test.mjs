// The JS client library (throng.js) in a real headless Chromium against a real server.
//
//   node --test clients/js/test/          (or scripts/browser-tests.sh, which installs what
//                                           is missing first)
//
// Needs target/debug/throng (THRONG_BIN overrides), Debian's chromium at /usr/bin/chromium
// (CHROMIUM_PATH overrides) and playwright-core (npm install in clients/js).
//
// Layout: node starts `throng serve` on ephemeral ports, an HTTP server for the page and
// the library, and a TCP proxy between the browser and the WebSocket listener that the
// test can cut. The page runs the library; node drives it with page.evaluate and pushes
// through the push API with fetch. Every wait is a polled condition with a deadline.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';

import {
  CHROMIUM,
  mintJwt,
  nowSecs,
  pageCreateClient,
  pushApi,
  recorderInitScript,
  sleep,
  startEventsSink,
  startProxy,
  startServer,
  startStatic,
  tempConfig,
  waitUntil,
} from './harness.mjs';

const SECRET = 'browser-test-secret-0123456789abcdef';
const API_KEY = 'browser-test-key';
const LEEWAY_SECS = 1;
const BACKOFF = { minMs: 50, maxMs: 400 };
const CASE_MS = 90000;

const uniq = (prefix) => `${prefix}-${randomBytes(4).toString('hex')}`;
const token = (claims) => mintJwt(SECRET, { exp: nowSecs() + 3600, ...claims });
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

let chromium;
let browser;
let server;
let serverArgs;
let config;
let web;
let proxy;
let sink;
let api;

/** The flags of every server of this file, the restarted one included. */
function baseArgs() {
  return [
    '--config', config.file, // [jwt] leeway_secs, which has no flag
    '--jwt-secret', SECRET,
    '--api-key', API_KEY,
    '--public-topics', 'room:*',
    '--shards', '1',
    '--refresh-ahead-ms', '60000',
    '--drain-ms', '200',
    '--shutdown-grace-ms', '1000',
    '--events-url', sink.url,
  ];
}

before(async () => {
  try {
    ({ chromium } = await import('playwright-core'));
  } catch (e) {
    throw new Error(`playwright-core is missing (run \`npm install\` in clients/js, or scripts/browser-tests.sh): ${e.message}`);
  }
  config = tempConfig(`[jwt]\nleeway_secs = ${LEEWAY_SECS}\n`);
  sink = await startEventsSink();
  serverArgs = baseArgs();
  server = await startServer(serverArgs);
  api = pushApi(server, API_KEY);
  web = await startStatic();
  proxy = await startProxy(() => server.wsPort);
  const args = ['--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'];
  if (process.getuid?.() === 0) args.push('--no-sandbox');
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args, timeout: 60000 });
});

after(async () => {
  await browser?.close().catch(() => {});
  await proxy?.close().catch(() => {});
  await web?.close().catch(() => {});
  await server?.stop().catch(() => {});
  await sink?.close().catch(() => {});
  config?.remove();
});

/** A fresh browser context and page with the WebSocket recorder installed. */
async function openPage(t, { getToken, srv, px } = {}) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const pageErrors = [];
  const consoleLines = [];
  page.on('pageerror', (e) => pageErrors.push(String(e?.stack || e)));
  page.on('console', (m) => {
    consoleLines.push(`${m.type()}: ${m.text().replace(/token=[^&\s']*/g, 'token=…')}`);
    if (consoleLines.length > 50) consoleLines.shift();
  });
  await page.addInitScript(recorderInitScript);
  if (getToken) await page.exposeFunction('nodeGetToken', getToken);
  await page.goto(web.url);
  t.after(() => context.close().catch(() => {}));
  const dump = async () => {
    const inPage = await page
      .evaluate(() => {
        const hide = (s) => s.replace(/token=[^&]*/, 'token=…').replace(/"token":"[^"]*"/, '"token":"…"');
        const lines = ['events (last 40):'];
        for (const e of (window.T?.events || []).slice(-40)) lines.push(`  ${e.t}ms ${e.name} ${JSON.stringify(e.x)}`);
        (window.__ws || []).forEach((w, i) => {
          lines.push(`socket ${i}: ${hide(w.url)} opened=${w.opened} close=${JSON.stringify(w.close)}`);
          for (const m of w.recv.slice(-6)) lines.push(`  <- ${m.slice(0, 300)}`);
          for (const m of w.sent.slice(-6)) lines.push(`  -> ${hide(m).slice(0, 300)}`);
        });
        return lines.join('\n');
      })
      .catch((e) => `(page unreadable: ${e.message})`);
    return [
      `page ${inPage}`,
      `page errors: ${JSON.stringify(pageErrors)}`,
      `console: ${consoleLines.slice(-15).join(' | ')}`,
      `proxy: ${JSON.stringify((px ?? proxy).stats)} open ${(px ?? proxy).open()}`,
      `server log tail:\n${(srv ?? server).tail(10)}`,
    ].join('\n');
  };
  /** Waits until `fn(arg)` is truthy in the page; returns its value. */
  const waitPage = (what, fn, arg, ms = 15000) =>
    waitUntil(what, () => page.evaluate(fn, arg), { ms, detail: dump });
  /** Calls a client method in the page: `{ ok, value }` or `{ ok: false, error }`. */
  const call = (method, ...args) => page.evaluate(([m, a]) => window.T.call(m, ...a), [method, args]);
  const events = (name) => page.evaluate((n) => window.T.of(n), name);
  return { page, pageErrors, dump, waitPage, call, events };
}

async function createClient(p, opts) {
  await p.page.evaluate(pageCreateClient, {
    url: `ws://127.0.0.1:${proxy.port}/ws`,
    backoff: BACKOFF,
    ...opts,
  });
}

/** The pushes the page got: direct ones (with `seq`, no topic) and those of `topic`. */
async function pushes(p, topic) {
  const all = await p.events('push');
  return {
    direct: all.filter((x) => x.topic === undefined && x.seq !== undefined),
    topic: all.filter((x) => x.topic === topic),
  };
}

async function connectAndSubscribe(p, topic) {
  const w = await p.call('connect');
  assert.equal(w.ok, true, `connect failed: ${JSON.stringify(w.error)}\n${await p.dump()}`);
  assert.equal(w.value?.type, 'welcome', `connect resolved with ${JSON.stringify(w.value)}`);
  if (topic !== undefined) {
    const s = await p.call('subscribe', topic);
    assert.equal(s.ok, true, `subscribe failed: ${JSON.stringify(s.error)}`);
    assert.equal(s.value?.type, 'subscribed', `subscribe resolved with ${JSON.stringify(s.value)}`);
    assert.equal(s.value.topic, topic);
  }
  return w.value;
}

describe('throng.js in headless chromium', { timeout: 9 * CASE_MS }, () => {
  test('a. connects, subscribes, gets a direct and a topic push; publish, send, unsubscribe, acks', { timeout: CASE_MS }, async (t) => {
    const user = uniq('alice');
    const topic = uniq('room:a');
    const p = await openPage(t);
    await createClient(p, { token: token({ sub: user, publish: ['room:*'] }) });

    const welcome = await connectAndSubscribe(p, topic);
    assert.equal(welcome.user, user);
    assert.equal(welcome.seq, 0);
    const states = await p.events('state');
    assert.deepEqual(states.slice(0, 2), ['connecting', 'connected'], `states: ${JSON.stringify(states)}`);
    assert.equal((await p.events('welcome')).length, 1);
    const first = await p.page.evaluate(() => window.__ws[0].url);
    assert.match(first, /^ws:\/\/127\.0\.0\.1:\d+\/ws\?/);
    assert.doesNotMatch(first, /[?&](since|epoch)=/, 'a first connection does not resume');

    await api.push({ user, id: 'd-1', data: { hello: 'direct' } });
    await api.push({ topic, data: { hello: 'topic' } });
    await p.waitPage('the direct and the topic push', (tp) => {
      const ps = window.T.of('push');
      return ps.some((x) => x.topic === undefined && x.seq === 1) && ps.some((x) => x.topic === tp && x.seq === 1);
    }, topic);
    let got = await pushes(p, topic);
    assert.equal(got.direct.length, 1);
    assert.deepEqual(got.direct[0].data, { hello: 'direct' });
    assert.equal(got.direct[0].id, 'd-1');
    assert.equal(got.topic.length, 1);
    assert.deepEqual(got.topic[0].data, { hello: 'topic' });

    // publish: answered `published`, and the subscribed publisher gets its own push.
    const pub = await p.call('publish', topic, { text: 'hi all' });
    assert.equal(pub.ok, true, `publish failed: ${JSON.stringify(pub.error)}`);
    assert.equal(pub.value?.type, 'published');
    assert.equal(pub.value.seq, 2);
    await p.waitPage('the published push', (tp) => window.T.of('push').some((x) => x.topic === tp && x.seq === 2), topic);
    got = await pushes(p, topic);
    assert.equal(got.topic[1].from, user);
    assert.deepEqual(got.topic[1].data, { text: 'hi all' });

    // send: answered `sent`, and the upstream gets the event.
    const sent = await p.call('send', { action: 'typing' });
    assert.equal(sent.ok, true, `send failed: ${JSON.stringify(sent.error)}`);
    assert.equal(sent.value?.type, 'sent');
    await waitUntil('the send event at the upstream', () =>
      sink.events.some((e) => e.type === 'send' && e.user === user && e.data?.action === 'typing'));

    // Acks are automatic: the server records the session's acked seq.
    await waitUntil('the direct push acked', async () => (await api.presence(user)).details?.some((d) => d.acked === 1), {
      detail: async () => JSON.stringify(await api.presence(user)),
    });

    // unsubscribe: answered `unsubscribed`; later topic pushes do not come.
    const un = await p.call('unsubscribe', topic);
    assert.equal(un.ok, true, `unsubscribe failed: ${JSON.stringify(un.error)}`);
    assert.equal(un.value?.type, 'unsubscribed');
    await api.push({ topic, data: { after: 'unsubscribe' } });
    await api.push({ user, data: { marker: true } });
    await p.waitPage('the marker push', () => window.T.of('push').some((x) => x.data?.marker === true));
    got = await pushes(p, topic);
    assert.equal(got.topic.length, 2, `a topic push after unsubscribe arrived: ${JSON.stringify(got.topic)}`);
    assert.deepEqual(got.direct.map((x) => x.seq), [1, 2]);

    assert.deepEqual(await p.events('gap'), []);
    assert.deepEqual(p.pageErrors, []);

    // close(): disconnected, and no reconnect.
    await p.call('close');
    await p.waitPage('state disconnected after close()', () => window.T.of('state').at(-1) === 'disconnected');
    await waitUntil('the server to see the session gone', async () => (await api.presence(user)).sessions === 0);
    assert.equal(await p.page.evaluate(() => window.__ws.length), 1, 'close() must not reconnect');
  });

  test('b. a cut TCP connection with pushes flowing: every push once, in order, resumed', { timeout: CASE_MS }, async (t) => {
    const user = uniq('bob');
    const topic = uniq('room:b');
    const N = 50;
    const CUT_AT = 10;
    const UNBLOCK_AT = 35;
    const p = await openPage(t);
    await createClient(p, { token: token({ sub: user }) });
    // Subscribed before the topic's first push: the placeholder epoch, learnt from seq 1.
    await connectAndSubscribe(p, topic);

    for (let i = 1; i <= N; i++) {
      await api.push({ user, data: { n: i } });
      await api.push({ topic, data: { n: i } });
      if (i === 1) {
        // The topic's epoch comes with its seq-1 push: only a client that has it can resume
        // the topic (one that missed it can only report a gap), so that one must be in.
        await p.waitPage('the first topic push', (tp) => window.T.of('push').some((x) => x.topic === tp && x.seq === 1), topic);
      }
      if (i === CUT_AT) {
        proxy.block(true);
        proxy.cut();
      }
      if (i === UNBLOCK_AT) {
        // The page saw the loss and tried at least once (refused) before it may come back.
        await p.waitPage('state disconnected after the cut', () => window.T.of('state').includes('disconnected'));
        await waitUntil('a refused reconnect attempt', () => proxy.stats.refused >= 1, { detail: p.dump });
        proxy.block(false);
      }
    }

    await p.waitPage(
      `all ${N} direct and ${N} topic pushes`,
      ([tp, n]) => {
        const ps = window.T.of('push');
        return ps.filter((x) => x.topic === undefined).length >= n && ps.filter((x) => x.topic === tp).length >= n;
      },
      [topic, N],
      30000,
    );
    const got = await pushes(p, topic);
    assert.deepEqual(got.direct.map((x) => x.seq), range(1, N), 'direct seqs: each once, in order');
    assert.deepEqual(got.direct.map((x) => x.data.n), range(1, N));
    assert.deepEqual(got.topic.map((x) => x.seq), range(1, N), 'topic seqs: each once, in order');
    assert.deepEqual(got.topic.map((x) => x.data.n), range(1, N));

    const resumed = await p.events('resumed');
    assert.ok(resumed.some((r) => r.stream === 'user'), `no resumed for the user stream: ${JSON.stringify(resumed)}`);
    assert.ok(
      resumed.some((r) => r.stream === 'topic' && r.topic === topic),
      `no resumed for the topic: ${JSON.stringify(resumed)}`,
    );
    assert.deepEqual(await p.events('gap'), [], 'nothing was lost, so no gap');
    const states = await p.events('state');
    assert.equal(states.at(-1), 'connected', `states: ${JSON.stringify(states)}`);

    // On the wire: the reconnect resumed with since/epoch on the URL and on subscribe.
    const sockets = await p.page.evaluate(() => window.__ws.map((w) => ({ url: w.url, sent: w.sent, opened: w.opened })));
    const last = sockets.at(-1);
    assert.ok(sockets.length >= 2 && last.opened, `sockets: ${sockets.length}`);
    const q = new URL(last.url).searchParams;
    assert.match(q.get('since') ?? '', /^\d+$/, `reconnect URL without since: ${last.url.replace(/token=[^&]*/, 'token=…')}`);
    assert.ok(q.get('epoch'), 'reconnect URL without epoch');
    const resub = last.sent.map((s) => JSON.parse(s)).find((m) => m.type === 'subscribe' && m.topic === topic);
    assert.ok(resub, 'the topic was not subscribed again');
    assert.ok(resub.epoch && resub.epoch !== '0000000000000000', `resubscribe epoch: ${JSON.stringify(resub)}`);
    assert.equal(typeof resub.since, 'number');

    await waitUntil(`the user stream acked up to ${N}`, async () => (await api.presence(user)).details?.some((d) => d.acked === N), {
      detail: async () => JSON.stringify(await api.presence(user)),
    });
    assert.deepEqual(p.pageErrors, []);
    await p.call('close');
  });

  test('c. server restart on the same port: gap for the user stream, new pushes arrive', { timeout: CASE_MS }, async (t) => {
    const user = uniq('carol');
    const topic = uniq('room:c');
    const p = await openPage(t);
    await createClient(p, { token: token({ sub: user }) });
    const firstWelcome = await connectAndSubscribe(p, topic);
    for (let i = 1; i <= 3; i++) {
      await api.push({ user, data: { before: i } });
      await api.push({ topic, data: { before: i } });
    }
    await p.waitPage('3 + 3 pushes before the restart', (tp) => {
      const ps = window.T.of('push');
      return ps.filter((x) => x.topic === undefined).length === 3 && ps.filter((x) => x.topic === tp).length === 3;
    }, topic);

    // Stop (drain: `reconnect` hint, then 1001) and wait for the exit; then a new process
    // on the same addresses. The history and epochs of the old one are gone.
    const old = server;
    await old.stop('SIGTERM');
    await p.waitPage('state disconnected', () => window.T.of('state').includes('disconnected'));
    const args = [...serverArgs, '--listen', old.ws, '--api-listen', old.api];
    server = await waitUntil('the new server to bind the old port', () => startServer(args).catch(() => null), {
      ms: 20000,
      every: 250,
    });
    api = pushApi(server, API_KEY);
    assert.equal(server.ws, old.ws);

    await p.waitPage('gap for the user stream', () => window.T.of('gap').some((g) => g.stream === 'user'), undefined, 30000);
    await p.waitPage('connected again', () => window.T.of('state').at(-1) === 'connected');
    const welcomes = await p.events('welcome');
    const w2 = welcomes.at(-1);
    assert.ok(welcomes.length >= 2, 'a second welcome');
    assert.notEqual(w2.epoch, firstWelcome.epoch, 'the restarted server has a new epoch');
    assert.equal(w2.resumed, false);
    await p.waitPage('gap for the topic', (tp) => window.T.of('gap').some((g) => g.stream === 'topic' && g.topic === tp), topic);
    assert.ok(!(await p.events('resumed')).some((r) => r.stream === 'user'), 'resumed reported for the user stream');

    // New pushes are numbered from 1 again in the new epochs; the library must not take
    // them for duplicates of the old seqs 1..3.
    await api.push({ user, data: { after: 1 } });
    await api.push({ topic, data: { after: 1 } });
    await p.waitPage('the pushes after the restart', (tp) => {
      const ps = window.T.of('push');
      return ps.some((x) => x.topic === undefined && x.data?.after === 1) && ps.some((x) => x.topic === tp && x.data?.after === 1);
    }, topic);
    const got = await pushes(p, topic);
    assert.deepEqual(got.direct.map((x) => x.seq), [1, 2, 3, 1]);
    assert.deepEqual(got.topic.map((x) => x.seq), [1, 2, 3, 1]);
    await waitUntil('the new push acked on the new server', async () => (await api.presence(user)).details?.some((d) => d.acked === 1), {
      detail: async () => JSON.stringify(await api.presence(user)),
    });
    assert.deepEqual(p.pageErrors, []);
    await p.call('close');
  });

  test('d. token refresh: getToken again on token_expiring, refreshed, same session past the old expiry', { timeout: CASE_MS }, async (t) => {
    const user = uniq('dave');
    const issued = [];
    // The first token runs out in a few seconds (close 4001 at exp + leeway); the server
    // sends token_expiring right after welcome since --refresh-ahead-ms is longer.
    const getToken = () => {
      const exp = nowSecs() + (issued.length === 0 ? 4 : 3600);
      issued.push(exp);
      return token({ sub: user, exp });
    };
    const p = await openPage(t, { getToken });
    await createClient(p, { useGetToken: true });
    const welcome = await connectAndSubscribe(p);
    assert.equal(issued.length >= 1, true);
    const firstExp = issued[0];

    await p.waitPage('token_expiring on the wire', () => window.__ws[0].recv.some((s) => s.includes('"token_expiring"')));
    await waitUntil('getToken called again', () => issued.length >= 2, { detail: p.dump });
    await p.waitPage('a refresh sent', () => window.__ws[0].sent.some((s) => JSON.parse(s).type === 'refresh'));
    await p.waitPage('refreshed received', () => window.__ws[0].recv.some((s) => JSON.parse(s).type === 'refreshed'));
    const refreshed = await p.page.evaluate(() => window.__ws[0].recv.map((s) => JSON.parse(s)).find((m) => m.type === 'refreshed'));
    assert.equal(refreshed.exp, issued[1]);

    // Past the first token's close time the connection is still the same one.
    const deadline = (firstExp + LEEWAY_SECS) * 1000 + 1500;
    await waitUntil('the first token expiry to pass', () => Date.now() > deadline, { ms: 15000, every: 100 });
    await api.push({ user, data: { late: true } });
    await p.waitPage('a push after the old expiry', () => window.T.of('push').some((x) => x.data?.late === true));
    const state = await p.page.evaluate(() => ({
      sockets: window.__ws.length,
      close: window.__ws[0].close,
      welcomes: window.T.of('welcome').length,
      states: window.T.of('state'),
    }));
    assert.equal(state.close, null, `the socket closed: ${JSON.stringify(state.close)}`);
    assert.equal(state.sockets, 1, 'no reconnect');
    assert.equal(state.welcomes, 1);
    assert.ok(!state.states.includes('disconnected'), `states: ${JSON.stringify(state.states)}`);
    const pres = await api.presence(user);
    assert.equal(pres.sessions, 1);
    assert.equal(pres.details?.[0]?.session, welcome.session, 'the same session on the server');
    const errors = await p.events('error');
    assert.deepEqual(errors, [], `error events: ${JSON.stringify(errors)}`);
    assert.deepEqual(p.pageErrors, []);
    await p.call('close');
  });
  // The client paces itself to the client_rate its welcome gives (2 here; the client's own
  // clientRate option is left at 100): the re-subscribes after a reconnect go as the
  // server's bucket allows, none is refused, and the topics' pushes do not stop.
  test('e. re-subscribes after a reconnect are paced to the welcome\'s client_rate: none refused, every topic push still arrives', {
    timeout: CASE_MS,
  }, async (t) => {
    const own = await startServer([...serverArgs, '--client-rate', '2']);
    t.after(() => own.stop());
    const ownProxy = await startProxy(() => own.wsPort);
    t.after(() => ownProxy.close());
    const ownApi = pushApi(own, API_KEY);
    const user = uniq('erin');
    const topics = [1, 2, 3, 4].map((i) => uniq(`room:e${i}`));
    const p = await openPage(t, { srv: own, px: ownProxy });
    await p.page.evaluate(pageCreateClient, {
      url: `ws://127.0.0.1:${ownProxy.port}/ws`,
      token: token({ sub: user }),
      backoff: BACKOFF,
    });
    await connectAndSubscribe(p);
    // 2 messages a second: subscribes beyond the bucket are refused locally; retried.
    for (const topic of topics) {
      await waitUntil(`subscribed to ${topic}`, async () => (await p.call('subscribe', topic)).ok, { ms: 20000, every: 300 });
    }
    const welcome = (await p.events('welcome'))[0];
    assert.equal(welcome.client_rate, 2, JSON.stringify(welcome));
    for (const topic of topics) await ownApi.push({ topic, data: { n: 1 } });
    await p.waitPage('the first push of every topic', (n) => window.T.of('push').length === n, topics.length);

    ownProxy.cut();
    // On the new connection the 4 re-subscribes wait for the bucket (2 tokens, one kept).
    await p.waitPage('every topic subscribed again', (n) =>
      window.__ws.length >= 2 && window.__ws.at(-1).recv.filter((s) => s.includes('"subscribed"')).length === n, topics.length, 15000);
    for (const topic of topics) await ownApi.push({ topic, data: { n: 2 } });
    await p.waitPage(
      'the second push of every topic',
      (tps) => tps.every((tp) => window.T.of('push').some((x) => x.topic === tp && x.data?.n === 2)),
      topics,
      10000,
    );
    const refused = await p.page.evaluate(() => window.__ws.flatMap((w) => w.recv).filter((s) => s.includes('"rate_limited"')));
    assert.deepEqual(refused, [], 'the server refused nothing for the rate');
  });
  // `serve --dev` serves a demo page that uses the library (issue 13 item 2): it connects
  // as alice, shows its state and the pushes it gets, and publishes to a room.
  test('f. the --dev demo page connects, shows pushes, and publishes', { timeout: CASE_MS }, async (t) => {
    const dev = await startServer(['--dev', '--jwt-secret', SECRET, '--api-key', API_KEY]);
    t.after(() => dev.stop());
    const context = await browser.newContext();
    t.after(() => context.close());
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`http://${dev.ws}/demo`);
    const text = (sel) => page.evaluate((s) => document.querySelector(s).textContent, sel);
    await waitUntil('the demo connected', async () => (await text('#state')) === 'connected',
      { detail: async () => `state ${await text('#state')}; errors ${errors}; log ${await text('#log')}` });
    // It subscribed to room:1 on connecting; a push to alice shows.
    await waitUntil('subscribed', async () => (await text('#log')).includes('"subscribed"'));
    await pushApi(dev, API_KEY).push({ user: 'alice', data: { hello: 'demo' } });
    await waitUntil('the push shown', async () => (await text('#log')).includes('{"hello":"demo"}'));
    // Publishing from the page reaches the page itself (it is subscribed to room:1).
    await page.click('#publish button');
    await waitUntil('the published push shown', async () => {
      const log = await text('#log');
      return log.includes('"published"') && log.includes('room:1 #1 from alice');
    });
    assert.deepEqual(errors, []);
  });
  // Chromium always offers permessage-deflate; the server agrees and sends long pushes
  // compressed, which the browser inflates before the library sees them.
  test('g. a 20 KB push reaches the page intact, sent compressed (permessage-deflate)', { timeout: CASE_MS }, async (t) => {
    const user = uniq('gina');
    const p = await openPage(t);
    await createClient(p, { token: token({ sub: user }) });
    await connectAndSubscribe(p);
    const ext = await p.page.evaluate(() => window.__ws[0].extensions);
    assert.equal(ext, 'permessage-deflate; server_no_context_takeover; client_no_context_takeover', `the 101 agreed to ${JSON.stringify(ext)}`);

    const items = range(1, 320).map((i) => ({ id: `order-${i}`, status: ['filled', 'open', 'cancelled'][i % 3], qty: 100 + i, note: `ü€ line ${i}` }));
    const data = { orders: items };
    assert.ok(JSON.stringify(data).length > 20000, `${JSON.stringify(data).length} bytes`);
    const before = await api.counters();
    await api.push({ user, id: 'big-1', data });
    await p.waitPage('the 20 KB push', () => window.T.of('push').some((x) => x.id === 'big-1'));
    const got = (await p.events('push')).find((x) => x.id === 'big-1');
    assert.deepEqual(got.data, data, 'the push arrived altered');
    assert.equal(got.seq, 1);
    // Compressed once and sent compressed once: to this page.
    await waitUntil('the compressed send counted', async () => (await api.counters()).deflated_sends === before.deflated_sends + 1, {
      detail: async () => JSON.stringify({ before, after: await api.counters() }),
    });
    const after = await api.counters();
    assert.equal(after.deflate_compressions, before.deflate_compressions + 1);
    // Chromium compresses what it sends too: the automatic ack of the push was inflated.
    await waitUntil('the ack acked', async () => (await api.presence(user)).details?.some((d) => d.acked === 1));
    assert.ok((await api.counters()).inflated_messages > before.inflated_messages, 'the server inflated the page\'s messages');

    // A short push goes plain, and arrives as well.
    await api.push({ user, id: 'small-1', data: { n: 1 } });
    await p.waitPage('the short push', () => window.T.of('push').some((x) => x.id === 'small-1'));
    assert.equal((await api.counters()).deflated_sends, before.deflated_sends + 1, 'a short push goes plain');
    assert.deepEqual(await p.events('gap'), []);
    assert.deepEqual(p.pageErrors, []);
    await p.call('close');
  });
  // A connection whose path dies without a close (no FIN, no RST) looks open to the
  // browser for as long as TCP takes to notice, for ever when the page sends nothing; the
  // library's heartbeat (ping after a silence, nothing back within a timeout) ends it.
  test('h. a silently dead connection is noticed by the heartbeat: reconnected, resumed, every push once', { timeout: CASE_MS }, async (t) => {
    const user = uniq('hank');
    const p = await openPage(t);
    await createClient(p, { token: token({ sub: user }), options: { heartbeat: { intervalMs: 400, timeoutMs: 400 } } });
    await connectAndSubscribe(p);
    for (let i = 1; i <= 3; i++) await api.push({ user, data: { n: i } });
    await p.waitPage('3 pushes', () => window.T.of('push').length === 3);

    proxy.freeze();
    for (let i = 4; i <= 6; i++) await api.push({ user, data: { n: i } });
    await p.waitPage('all 6 pushes, after a reconnect', () => window.T.of('push').length >= 6, undefined, 15000);
    const got = await pushes(p);
    assert.deepEqual(got.direct.map((x) => x.seq), range(1, 6), 'each push once, in order');
    const resumed = await p.events('resumed');
    assert.ok(resumed.some((r) => r.stream === 'user'), `resumed: ${JSON.stringify(resumed)}`);
    assert.deepEqual(await p.events('gap'), []);
    const first = await p.page.evaluate(() => window.__ws[0].sent.map((s) => JSON.parse(s)));
    assert.ok(first.some((m) => m.type === 'ping'), 'the frozen connection was pinged');
    assert.deepEqual(p.pageErrors, []);
    await p.call('close');
  });
  // The server sends a WebSocket Ping after ping_interval_ms without a byte from the
  // client. The client's heartbeat pings after 0.8 x that (from the welcome) without
  // sending, so the server's Ping never falls due: one round trip per cycle, not two.
  test('j. an idle client with the heartbeat on never makes the server ping; with heartbeat:false it does', { timeout: CASE_MS }, async (t) => {
    const PING_MS = 2000;
    const IDLE_MS = 3 * PING_MS + 1000; // three ping intervals and some
    const srv = await startServer(['--jwt-secret', SECRET, '--api-key', API_KEY, '--shards', '1', '--ping-interval-ms', String(PING_MS)]);
    t.after(() => srv.stop());
    const srvApi = pushApi(srv, API_KEY);
    const idleRun = async (options) => {
      const p = await openPage(t, { srv });
      await createClient(p, { url: `ws://${srv.ws}/ws`, token: token({ sub: uniq('jill') }), options });
      const w = await connectAndSubscribe(p);
      assert.equal(w.ping_interval_ms, PING_MS);
      const before = await srvApi.metric('throng_pings_total');
      await sleep(IDLE_MS);
      const after = await srvApi.metric('throng_pings_total');
      const sent = await p.page.evaluate(() => window.__ws.map((s) => s.sent.map((m) => JSON.parse(m).type)));
      const close = await p.page.evaluate(() => window.__ws[0].close);
      assert.deepEqual(p.pageErrors, []);
      await p.call('close');
      // The next run's count is its own: this connection is gone.
      await waitUntil('the page\'s connection gone', async () => (await srvApi.call('GET', '/v1/stats')).json?.connections === 0);
      return { pings: after - before, sent, close };
    };

    const on = await idleRun({});
    assert.deepEqual(on.close, null, 'the connection stayed up');
    assert.equal(on.sent.length, 1, `one connection: ${JSON.stringify(on.sent)}`);
    assert.equal(on.pings, 0, `the server pinged an idle client whose heartbeat is on ${on.pings} times`);
    const clientPings = on.sent[0].filter((type) => type === 'ping').length;
    assert.ok(clientPings >= 3, `the client pinged ${clientPings} times in ${IDLE_MS} ms`);

    const off = await idleRun({ heartbeat: false });
    assert.deepEqual(off.sent, [[]], 'heartbeat:false sends nothing');
    assert.ok(off.pings >= 2, `the server pinged an idle client without a heartbeat only ${off.pings} times in ${IDLE_MS} ms`);
  });
  // 200 publishes at once against the server's client_rate (100): sent, the 11th refusal
  // in a row closed the connection with 1008 and the client stopped for good. The client
  // paces itself with the server's bucket, so the excess is refused before it is sent.
  test('i. a burst of publishes over client_rate is refused locally; the connection stays', { timeout: CASE_MS }, async (t) => {
    const user = uniq('ivy');
    const p = await openPage(t);
    await createClient(p, { token: token({ sub: user, publish: ['room:*'] }) });
    await connectAndSubscribe(p);
    const outcomes = await p.page.evaluate(async () => {
      const rs = await Promise.allSettled(Array.from({ length: 200 }, (_, i) => window.client.publish('room:burst', { i })));
      const count = { published: 0, local: 0, server: 0, other: [] };
      for (const r of rs) {
        if (r.status === 'fulfilled' && r.value.type === 'published') count.published++;
        else if (r.reason?.code === 'rate_limited' && r.reason.sent === false) count.local++;
        else if (r.reason?.code === 'rate_limited' && r.reason.sent === undefined) count.server++;
        else count.other.push(r.reason?.code ?? r.value?.type);
      }
      return count;
    });
    const seen = JSON.stringify(outcomes);
    // The bucket holds 100 tokens: about 87 go, with a ping after every 8 not yet answered
    // (a slow page may see a token, or an answer, come back).
    assert.ok(outcomes.published >= 80 && outcomes.published <= 100, seen);
    assert.ok(outcomes.server <= 2, `refused by the server: ${seen}`);
    assert.equal(outcomes.published + outcomes.local + outcomes.server, 200, seen);
    // Still the first connection; a second later publishing works again.
    await new Promise((r) => setTimeout(r, 1100));
    const again = await p.call('publish', 'room:burst', { after: true });
    assert.equal(again.ok, true, JSON.stringify(again.error));
    const state = await p.page.evaluate(() => ({ sockets: window.__ws.length, close: window.__ws[0].close }));
    assert.deepEqual(state, { sockets: 1, close: null });
    assert.deepEqual(await p.events('error'), []);
    await p.call('close');
  });
});
