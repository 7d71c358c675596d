// Logic tests for throng.js with an in-process fake WebSocket, fake timers and a scripted
// random(): no network, no real clock, deterministic.
// Run: node --test clients/js/test/logic.test.mjs

import { test } from "node:test";
import assert from "node:assert/strict";
import { ThrongClient } from "../throng.js";

const URL_BASE = "ws://push.example/ws";

/** Lets pending promise callbacks and microtasks (acks, getToken) run. */
const flush = () => new Promise((resolve) => setImmediate(resolve));

/** A WebSocket stand-in; the test plays the server through open/receive/drop/fail. */
function fakeWebSocketClass() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = new URL(url);
      this.readyState = 0;
      this.sent = [];
      this.closeCalls = [];
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      sockets.push(this);
    }
    send(text) {
      if (this.readyState !== 1) throw new Error("send on a socket that is not open");
      this.sent.push(JSON.parse(text));
    }
    close(code) {
      this.closeCalls.push(code);
      this.readyState = 2;
    }
    // ---- the server's side ----
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    receive(msg) {
      this.onmessage?.({ data: JSON.stringify(msg) });
    }
    drop(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason, wasClean: code !== 1006 });
    }
    fail(message = "Unexpected server response: 503") {
      this.readyState = 3;
      this.onerror?.({ message });
      this.onclose?.({ code: 1006, reason: "", wasClean: false });
    }
    /** A failed open reported by `error` alone (Node 20's experimental WebSocket). */
    failWithoutClose(message = "Received network error or non-101 status code.") {
      this.readyState = 3;
      this.onerror?.({ message });
    }
    ofType(type) {
      return this.sent.filter((m) => m.type === type);
    }
  }
  return { FakeWebSocket, sockets };
}

/**
 * setTimeout/clearTimeout that only run when the test says so, and a clock (`clock.ms`,
 * the client's `now`) that a fired timer moves to its due time.
 */
function fakeTimers(clock = { ms: 0 }) {
  const timers = new Map();
  let nextId = 1;
  // A request's timeout and the heartbeat's give-up decide one macrotask later (a 0 ms
  // timer), so an answer already received goes first: run() runs such timers too, at
  // once, unless the test holds them (fireHeld) to put an answer in between.
  const run = (timer, chase = true) => {
    clock.ms = Math.max(clock.ms, timer.due);
    const before = nextId;
    timer.fn();
    if (!chase) return;
    for (let i = 0; i < 10; i++) {
      const zero = [...timers.entries()].find(([id, t]) => id >= before && t.ms === 0);
      if (!zero) return;
      timers.delete(zero[0]);
      run(zero[1], false);
    }
  };
  return {
    setTimeout: (fn, ms) => {
      timers.set(nextId, { fn, ms, due: clock.ms + ms });
      return nextId++;
    },
    clearTimeout: (id) => timers.delete(id),
    delays: () => [...timers.values()].map((t) => t.ms),
    count: () => timers.size,
    /** Runs the oldest timer of delay `ms`. */
    fire(ms) {
      const found = [...timers.entries()].find(([, t]) => t.ms === ms);
      if (!found) throw new Error(`no timer of ${ms} ms among ${[...timers.values()].map((t) => t.ms)}`);
      timers.delete(found[0]);
      run(found[1]);
    },
    /** Runs the oldest timer of delay `ms`, leaving the 0 ms timers it sets for the test. */
    fireHeld(ms) {
      const found = [...timers.entries()].find(([, t]) => t.ms === ms);
      if (!found) throw new Error(`no timer of ${ms} ms`);
      timers.delete(found[0]);
      run(found[1], false);
    },
    /** Runs the timer due first and returns its delay. */
    fireSoonest() {
      const [id, timer] = [...timers.entries()].reduce((a, b) => (b[1].due < a[1].due ? b : a));
      timers.delete(id);
      run(timer);
      return timer.ms;
    },
    /** Runs the oldest timer and returns its delay. */
    fireNext() {
      const [id, timer] = timers.entries().next().value;
      timers.delete(id);
      run(timer);
      return timer.ms;
    },
  };
}

/** A client wired to fakes, plus everything it emitted. */
function setup(options = {}) {
  const { FakeWebSocket, sockets } = fakeWebSocketClass();
  const clock = { ms: 1764559000000 };
  const timers = fakeTimers(clock);
  const randoms = options.randoms ?? [];
  const client = new ThrongClient(options.url ?? URL_BASE, {
    token: "tok",
    WebSocket: FakeWebSocket,
    random: () => (randoms.length ? randoms.shift() : 0.5),
    now: () => clock.ms,
    heartbeat: false, // its timer would be in every count below; its own tests turn it on
    setTimeout: timers.setTimeout,
    clearTimeout: timers.clearTimeout,
    ...options.client,
  });
  const events = { push: [], state: [], resumed: [], gap: [], error: [], welcome: [] };
  for (const name of Object.keys(events)) client.on(name, (v) => events[name].push(v));
  const last = () => sockets[sockets.length - 1];
  return { client, sockets, timers, events, last, randoms, clock };
}

function welcome(extra = {}) {
  return { type: "welcome", session: "s1", user: "alice", epoch: "e1", seq: 0,
    ping_interval_ms: 25000, idle_timeout_ms: 60000, ...extra };
}

/** connect() and play a server that accepts and welcomes. */
async function connectWith(env, welcomeMsg = welcome()) {
  const connected = env.client.connect();
  await flush();
  env.last().open();
  env.last().receive(welcomeMsg);
  return connected;
}

/** Drop the connection, fire the backoff timer and welcome the next socket. */
async function reconnectWith(env, welcomeMsg, code = 1006) {
  env.last().drop(code);
  env.timers.fireNext();
  await flush();
  env.last().open();
  env.last().receive(welcomeMsg);
}

function pushMsg(seq, extra = {}) {
  return { type: "push", seq, ts: 1764559023123, data: { n: seq }, ...extra };
}

test("backoff uses full jitter within [0, min(maxMs, minMs*2^n)) and resets after a lasting connection", async () => {
  const env = setup({ client: { backoff: { minMs: 100, maxMs: 3000 } } });
  const ceilings = [100, 200, 400, 800, 1600, 3000, 3000, 3000];
  const factors = [0.999999, 0, 0.5, 0.25, 0.75, 0.999999, 0.1, 0.9];
  env.randoms.push(...factors);
  env.client.connect();
  await flush();
  for (let n = 0; n < ceilings.length; n++) {
    env.last().fail();
    assert.equal(env.timers.count(), 1, "one retry timer at a time");
    const delay = env.timers.fireNext();
    assert.ok(delay >= 0 && delay < ceilings[n], `attempt ${n}: ${delay}`);
    assert.equal(delay, factors[n] * ceilings[n], "delay is random() times the ceiling");
    await flush();
  }
  assert.equal(env.sockets.length, ceilings.length + 1);
  assert.equal(env.events.error.length, ceilings.length);
  assert.equal(env.events.error[0].code, "connect_failed");
  assert.match(env.events.error[0].message, /503/);

  env.last().open();
  env.last().receive(welcome());
  env.clock.ms += 10000; // backoff.resetAfterMs
  env.randoms.push(0.999999);
  env.last().drop(1006);
  assert.deepEqual(env.timers.delays(), [0.999999 * 100], "back to the first step after a connection that lasted");
});

test("a connection closed soon after its welcome does not reset the backoff", async () => {
  const env = setup({ client: { backoff: { minMs: 100, maxMs: 3000, resetAfterMs: 5000 } } });
  env.randoms.push(...Array(20).fill(0.999999));
  await connectWith(env);
  // The server welcomes and closes at once, again and again (a 4008 on every replay, a
  // 1013 in a cluster): each retry waits longer, up to maxMs, instead of minMs forever.
  const delays = [];
  for (let n = 0; n < 7; n++) {
    env.clock.ms += 200;
    env.last().drop(n % 2 ? 4008 : 1013);
    delays.push(Math.round(env.timers.fireNext()));
    await flush();
    env.last().open();
    env.last().receive(welcome());
  }
  assert.deepEqual(delays, [100, 200, 400, 800, 1600, 3000, 3000]);
  env.clock.ms += 5000;
  env.last().drop(1006);
  assert.deepEqual(env.timers.delays().map(Math.round), [100], "reset once a connection lasted resetAfterMs");
});

test("a failed open without a close event still retries, and a late close is ignored", async () => {
  const env = setup();
  env.client.connect();
  await flush();
  const ws = env.last();
  ws.failWithoutClose();
  assert.equal(env.timers.count(), 1);
  assert.equal(env.events.error[0].code, "connect_failed");
  ws.onclose?.({ code: 1006, reason: "" });
  assert.equal(env.timers.count(), 1, "no second retry");
  assert.equal(env.events.error.length, 1);
  assert.deepEqual(env.events.state, ["connecting", "disconnected"]);
});

test("backoff delays stay within bounds for any random() in [0, 1)", async () => {
  const env = setup({ client: { backoff: { minMs: 500, maxMs: 30000 } } });
  let seed = 7;
  const lcg = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  env.randoms.push(...Array.from({ length: 40 }, lcg));
  env.client.connect();
  await flush();
  for (let n = 0; n < 40; n++) {
    env.last().fail();
    const delay = env.timers.fireNext();
    assert.ok(delay >= 0 && delay < Math.min(30000, 500 * 2 ** n), `attempt ${n}: ${delay}`);
    await flush();
  }
});

test("state events follow the connection", async () => {
  const env = setup();
  await connectWith(env);
  env.last().drop(1006);
  assert.deepEqual(env.events.state, ["connecting", "connected", "disconnected"]);
});

test("connect() resolves with the welcome after failed attempts", async () => {
  const env = setup();
  const connected = env.client.connect();
  await flush();
  env.last().fail();
  env.timers.fireNext();
  await flush();
  env.last().open();
  env.last().receive(welcome({ session: "s2" }));
  assert.equal((await connected).session, "s2");
  assert.equal((await env.client.connect()).session, "s2", "connected: the current welcome");
});

test("user stream: repeated seqs are dropped, broadcasts pass", async () => {
  const env = setup();
  await connectWith(env);
  const ws = env.last();
  for (const seq of [1, 2, 2, 1, 3]) ws.receive(pushMsg(seq));
  ws.receive({ type: "push", ts: 1, data: "b" });
  ws.receive({ type: "push", ts: 1, data: "b" });
  assert.deepEqual(env.events.push.map((p) => p.seq ?? "bc"), [1, 2, 3, "bc", "bc"]);
});

test("topic streams are deduplicated per topic", async () => {
  const env = setup();
  await connectWith(env);
  const ws = env.last();
  const a = env.client.subscribe("room:a");
  const b = env.client.subscribe("room:b");
  const [subA, subB] = ws.ofType("subscribe");
  assert.deepEqual(subA, { type: "subscribe", topic: "room:a", ref: subA.ref }, "a first subscribe has no since/epoch");
  ws.receive({ type: "subscribed", topic: "room:a", seq: 5, epoch: "ta", ref: subA.ref });
  ws.receive({ type: "subscribed", topic: "room:b", seq: 0, epoch: "tb", ref: subB.ref });
  await Promise.all([a, b]);
  for (const seq of [6, 6, 5, 7]) ws.receive(pushMsg(seq, { topic: "room:a" }));
  for (const seq of [1, 1, 2]) ws.receive(pushMsg(seq, { topic: "room:b" }));
  ws.receive(pushMsg(1)); // the user stream is separate from the topics
  assert.deepEqual(env.events.push.map((p) => `${p.topic ?? "user"}:${p.seq}`),
    ["room:a:6", "room:a:7", "room:b:1", "room:b:2", "user:1"]);
});

test("a push of a topic not subscribed (any more) is dropped", async () => {
  const env = setup();
  await connectWith(env);
  const ws = env.last();
  ws.receive(pushMsg(1, { topic: "stray" }));
  const sub = env.client.subscribe("room:1");
  ws.receive({ type: "subscribed", topic: "room:1", seq: 0, epoch: "t", ref: ws.ofType("subscribe")[0].ref });
  await sub;
  env.client.unsubscribe("room:1");
  ws.receive(pushMsg(1, { topic: "room:1" }));
  assert.equal(env.events.push.length, 0);
});

test("reconnect resumes the user stream with since/epoch on the URL", async () => {
  const env = setup({ url: "ws://push.example/ws?app=1" });
  await connectWith(env, welcome({ epoch: "e1", seq: 3 }));
  const first = env.sockets[0].url.searchParams;
  assert.equal(first.get("token"), "tok");
  assert.equal(first.get("app"), "1", "the caller's own parameters are kept");
  assert.equal(first.has("since") || first.has("epoch"), false, "nothing to resume on the first connect");

  env.last().receive(pushMsg(4));
  env.last().receive(pushMsg(5));
  await reconnectWith(env, welcome({ epoch: "e1", seq: 6, resumed: true }));
  const second = env.last().url.searchParams;
  assert.equal(second.get("since"), "5");
  assert.equal(second.get("epoch"), "e1");
  assert.deepEqual(env.events.resumed, [{ stream: "user", resumed: true }]);
  env.last().receive(pushMsg(5)); // overlaps what we had
  env.last().receive(pushMsg(6));
  assert.deepEqual(env.events.push.map((p) => p.seq), [4, 5, 6]);

  // The server lost the stream: gap, and numbering continues from the welcome's seq.
  await reconnectWith(env, welcome({ epoch: "e2", seq: 2, resumed: false }));
  assert.equal(env.last().url.searchParams.get("since"), "6");
  assert.deepEqual(env.events.gap, [{ stream: "user" }]);
  env.last().receive(pushMsg(2));
  env.last().receive(pushMsg(3));
  assert.deepEqual(env.events.push.map((p) => p.seq), [4, 5, 6, 3]);
  await reconnectWith(env, welcome({ epoch: "e2", seq: 3, resumed: true }));
  assert.equal(env.last().url.searchParams.get("since"), "3");
  assert.equal(env.last().url.searchParams.get("epoch"), "e2");
});

test("topics are re-subscribed with since/epoch after a reconnect", async () => {
  const env = setup();
  await connectWith(env);
  const sub = env.client.subscribe("room:1");
  const ref = env.last().ofType("subscribe")[0].ref;
  env.last().receive({ type: "subscribed", topic: "room:1", seq: 12, epoch: "5be0c4d1a29f7e13", ref });
  await sub;
  env.last().receive(pushMsg(13, { topic: "room:1" }));

  await reconnectWith(env, welcome({ resumed: true }));
  const [again] = env.last().ofType("subscribe");
  assert.equal(again.topic, "room:1");
  assert.equal(again.since, 13);
  assert.equal(again.epoch, "5be0c4d1a29f7e13");
  env.last().receive({ type: "subscribed", topic: "room:1", seq: 15, epoch: "5be0c4d1a29f7e13",
    resumed: true, ref: again.ref });
  assert.deepEqual(env.events.resumed.at(-1), { stream: "topic", topic: "room:1", resumed: true });
  for (const seq of [13, 14, 15]) env.last().receive(pushMsg(seq, { topic: "room:1" }));
  assert.deepEqual(env.events.push.map((p) => p.seq), [13, 14, 15]);

  // History no longer held: gap, and the stream continues from the answer's seq.
  await reconnectWith(env, welcome({ resumed: true }));
  const [third] = env.last().ofType("subscribe");
  assert.equal(third.since, 15);
  env.last().receive({ type: "subscribed", topic: "room:1", seq: 40, epoch: "5be0c4d1a29f7e13",
    resumed: false, ref: third.ref });
  assert.deepEqual(env.events.gap, [{ stream: "topic", topic: "room:1" }]);
  env.last().receive(pushMsg(40, { topic: "room:1" }));
  env.last().receive(pushMsg(41, { topic: "room:1" }));
  assert.deepEqual(env.events.push.map((p) => p.seq), [13, 14, 15, 41]);
});

test("the epoch is learned from a topic's seq-1 push", async () => {
  const env = setup();
  await connectWith(env);
  const sub = env.client.subscribe("news");
  const ref = env.last().ofType("subscribe")[0].ref;
  env.last().receive({ type: "subscribed", topic: "news", seq: 0, epoch: "0000000000000000", ref });
  await sub;
  env.last().receive(pushMsg(1, { topic: "news", epoch: "a1a1a1a1a1a1a1a1" }));
  env.last().receive(pushMsg(2, { topic: "news" }));
  await reconnectWith(env, welcome({ resumed: true }));
  const [again] = env.last().ofType("subscribe");
  assert.equal(again.since, 2);
  assert.equal(again.epoch, "a1a1a1a1a1a1a1a1");
});

test("a topic renumbered in a new epoch starts again at seq 1", async () => {
  const env = setup();
  await connectWith(env);
  env.client.subscribe("room:1");
  const ref = env.last().ofType("subscribe")[0].ref;
  env.last().receive({ type: "subscribed", topic: "room:1", seq: 50, epoch: "old", ref });
  env.last().receive(pushMsg(1, { topic: "room:1", epoch: "new" }));
  env.last().receive(pushMsg(1, { topic: "room:1", epoch: "new" }));
  env.last().receive(pushMsg(2, { topic: "room:1" }));
  assert.deepEqual(env.events.push.map((p) => p.seq), [1, 2]);
});

test("a topic that only had the placeholder epoch is re-subscribed without since/epoch", async () => {
  const env = setup();
  await connectWith(env);
  env.client.subscribe("quiet");
  env.client.subscribe("busy");
  const refs = env.last().ofType("subscribe").map((m) => m.ref);
  env.last().receive({ type: "subscribed", topic: "quiet", seq: 0, epoch: "0000000000000000", ref: refs[0] });
  env.last().receive({ type: "subscribed", topic: "busy", seq: 0, epoch: "0000000000000000", ref: refs[1] });

  await reconnectWith(env, welcome({ resumed: true }));
  // Re-subscribes go one at a time (a burst could pass the server's client_rate).
  const [quiet] = env.last().ofType("subscribe");
  assert.equal(env.last().ofType("subscribe").length, 1);
  assert.deepEqual(Object.keys(quiet).sort(), ["ref", "topic", "type"]);
  // Still no push: nothing was missed. Pushes came while we were away: a gap.
  env.last().receive({ type: "subscribed", topic: "quiet", seq: 0, epoch: "0000000000000000", ref: quiet.ref });
  await flush();
  const busy = env.last().ofType("subscribe")[1];
  env.last().receive({ type: "subscribed", topic: "busy", seq: 3, epoch: "b0b0b0b0b0b0b0b0", ref: busy.ref });
  assert.deepEqual(env.events.resumed.filter((e) => e.stream === "topic"),
    [{ stream: "topic", topic: "quiet", resumed: true }]);
  assert.deepEqual(env.events.gap, [{ stream: "topic", topic: "busy" }]);
});

test("subscribe() before connecting is sent after the welcome", async () => {
  const env = setup();
  const sub = env.client.subscribe("room:1");
  await connectWith(env);
  const [msg] = env.last().ofType("subscribe");
  env.last().receive({ type: "subscribed", topic: "room:1", seq: 2, epoch: "t", ref: msg.ref });
  assert.equal((await sub).seq, 2);
});

test("the server's reconnect hint delays the reconnect by after_ms plus jitter", async () => {
  const env = setup();
  await connectWith(env);
  env.last().receive({ type: "reconnect", after_ms: 12850 });
  assert.deepEqual(env.timers.delays(), [12850]);
  env.last().drop(1001, "draining"); // closed a little early
  assert.equal(env.sockets.length, 1);
  assert.deepEqual(env.timers.delays(), [12850], "no retry before the hint's time");
  env.randoms.push(0.4);
  env.timers.fireNext();
  assert.deepEqual(env.timers.delays(), [0.4 * 500], "own jitter on top");
  env.timers.fireNext();
  await flush();
  assert.equal(env.sockets.length, 2);
  assert.equal(env.events.error.length, 0, "a drain is no error");
});

test("a hint whose time passed before the 1001 close adds only jitter", async () => {
  const env = setup();
  await connectWith(env);
  env.last().receive({ type: "reconnect", after_ms: 3000 });
  env.timers.fireNext();
  env.randoms.push(0.9);
  env.last().drop(1001);
  assert.deepEqual(env.timers.delays(), [0.9 * 500]);
});

test("token_expiring gets a new token from getToken and sends refresh", async () => {
  let calls = 0;
  const env = setup({ client: { token: undefined, getToken: async () => `jwt-${++calls}` } });
  await connectWith(env);
  assert.equal(env.sockets[0].url.searchParams.get("token"), "jwt-1");
  env.last().receive({ type: "token_expiring", in_ms: 59990 });
  await flush();
  const [refresh] = env.last().ofType("refresh");
  assert.equal(refresh.token, "jwt-2");
  env.last().receive({ type: "refreshed", exp: 1764562623, ref: refresh.ref });
  await flush();
  // A refused refresh is reported. (Later refreshes wait half of in_ms: see the next test.)
  env.last().receive({ type: "token_expiring", in_ms: 1000 });
  assert.deepEqual(env.timers.delays(), [500]);
  env.timers.fireNext();
  await flush();
  const [, second] = env.last().ofType("refresh");
  env.last().receive({ type: "error", code: "wrong_user", message: "no", ref: second.ref });
  await flush();
  assert.deepEqual(env.events.error.map((e) => e.code), ["wrong_user"]);
  // 4001: reconnect with a fresh token.
  await reconnectWith(env, welcome(), 4001);
  assert.equal(env.last().url.searchParams.get("token"), "jwt-4");
});

test("tokens shorter-lived than refresh_ahead_ms do not make a refresh loop", async () => {
  let calls = 0;
  const env = setup({ client: { token: undefined, getToken: async () => `jwt-${++calls}` } });
  await connectWith(env);
  // The server answers every accepted refresh with a new token_expiring at once.
  for (let round = 0; round < 3; round++) {
    env.last().receive({ type: "token_expiring", in_ms: 40000 });
    if (round > 0) {
      assert.deepEqual(env.timers.delays(), [20000], "waits half the time left");
      env.timers.fireNext();
    }
    await flush();
    const refresh = env.last().ofType("refresh").at(-1);
    assert.equal(refresh.token, `jwt-${round + 2}`);
    env.last().receive({ type: "refreshed", exp: 1764562623, ref: refresh.ref });
    await flush();
  }
  assert.equal(env.last().ofType("refresh").length, 3);
});

test("a token_expiring that arrives while a refresh runs is handled after it", async () => {
  let calls = 0;
  const env = setup({ client: { token: undefined, getToken: async () => `jwt-${++calls}` } });
  await connectWith(env);
  env.last().receive({ type: "token_expiring", in_ms: 40000 });
  await flush();
  const [first] = env.last().ofType("refresh");
  // The new token's token_expiring comes before the refreshed answer.
  env.last().receive({ type: "token_expiring", in_ms: 30000 });
  assert.deepEqual(env.timers.delays(), [10000], "nothing planned while the refresh runs (only its answer's timeout)");
  env.last().receive({ type: "refreshed", exp: 1764562623, ref: first.ref });
  await flush();
  assert.deepEqual(env.timers.delays(), [15000]);
  env.timers.fireNext();
  await flush();
  assert.equal(env.last().ofType("refresh").at(-1).token, "jwt-3");
  env.last().drop(1006);
  assert.equal(env.timers.count(), 1, "only the reconnect timer: a planned refresh ends with its connection");
});

test("4001 with a fixed token stops with an error instead of reconnecting", async () => {
  const env = setup();
  await connectWith(env);
  env.last().receive({ type: "token_expiring", in_ms: 1000 }); // nothing to refresh with
  env.last().drop(4001, "token expired");
  assert.equal(env.timers.count(), 0);
  assert.equal(env.events.error.at(-1).code, "closed");
  assert.equal(env.events.error.at(-1).closeCode, 4001);
});

test("a getToken failing during a refresh is a token_failed error, whatever it threw", async () => {
  let calls = 0;
  const getToken = async () => {
    if (++calls === 1) return "jwt-1";
    throw Object.assign(new Error("auth backend down"), { code: "ECONNREFUSED" });
  };
  const env = setup({ client: { token: undefined, getToken } });
  await connectWith(env);
  env.last().receive({ type: "token_expiring", in_ms: 50000 });
  await flush();
  assert.equal(env.last().ofType("refresh").length, 0);
  assert.equal(env.events.error.at(-1).code, "token_failed");
  assert.equal(env.events.error.at(-1).cause.code, "ECONNREFUSED");
});

test("a subscribe in flight when the connection drops is rejected, and the topic resubscribed", async () => {
  const env = setup();
  await connectWith(env);
  const sub = env.client.subscribe("room:1");
  env.last().drop(1006);
  await assert.rejects(sub, (err) => err.code === "disconnected");
  env.timers.fireNext();
  await flush();
  env.last().open();
  env.last().receive(welcome({ resumed: true }));
  assert.deepEqual(env.last().ofType("subscribe").map((m) => m.topic), ["room:1"]);
});

test("a failing getToken counts as a failed attempt", async () => {
  const env = setup({ client: { token: undefined, getToken: async () => { throw new Error("offline"); } } });
  env.client.connect();
  await flush();
  assert.equal(env.sockets.length, 0);
  assert.equal(env.events.error[0].code, "token_failed");
  assert.equal(env.timers.count(), 1);
});

test("answers are matched to requests by ref; error rejects with its code", async () => {
  const env = setup();
  await connectWith(env);
  const ws = env.last();
  const published = env.client.publish("room:1", { text: "hi" });
  const sent = env.client.send({ action: "typing" });
  const refused = env.client.subscribe("admin");
  const [pub] = ws.ofType("publish");
  const [snd] = ws.ofType("send");
  const [sub] = ws.ofType("subscribe");
  assert.deepEqual(pub.data, { text: "hi" });
  assert.equal(new Set([pub.ref, snd.ref, sub.ref]).size, 3, "refs are distinct");
  ws.receive({ type: "error", code: "forbidden_topic", message: "not allowed", ref: sub.ref });
  ws.receive({ type: "sent", ref: snd.ref });
  ws.receive({ type: "published", topic: "room:1", seq: 13, ref: pub.ref });
  assert.deepEqual(await sent, { type: "sent", ref: snd.ref });
  assert.equal((await published).seq, 13);
  await assert.rejects(refused, (err) => err.code === "forbidden_topic" && err.topic === "admin");

  await reconnectWith(env, welcome({ resumed: true }));
  assert.equal(env.last().ofType("subscribe").length, 0, "a refused topic is not retried");

  env.last().receive({ type: "error", code: "rate_limited", message: "slow down" });
  assert.equal(env.events.error.at(-1).code, "rate_limited", "an error without our ref is an event");
});

test("requests in flight are rejected with 'disconnected' when the connection drops", async () => {
  const env = setup();
  await connectWith(env);
  const published = env.client.publish("room:1", 1);
  env.last().drop(1006);
  await assert.rejects(published, (err) => err.code === "disconnected");
  await assert.rejects(env.client.send(1), (err) => err.code === "disconnected");
});

test("user-stream pushes are acked once per turn with the highest seq", async () => {
  const env = setup();
  await connectWith(env);
  const ws = env.last();
  const order = [];
  env.client.on("push", (p) => order.push(`push ${p.seq}`));
  for (const seq of [1, 2, 3]) ws.receive(pushMsg(seq));
  ws.receive({ type: "push", ts: 1, data: "broadcast" });
  assert.equal(ws.ofType("ack").length, 0, "not before the listeners ran");
  await flush();
  assert.deepEqual(ws.ofType("ack"), [{ type: "ack", seq: 3 }]);
  assert.deepEqual(order, ["push 1", "push 2", "push 3", "push undefined"]);
  ws.receive(pushMsg(3)); // a duplicate is not acked again
  ws.receive(pushMsg(4));
  await flush();
  assert.deepEqual(ws.ofType("ack").map((a) => a.seq), [3, 4]);
});

test("topic pushes are not acked, and ackPushes:false turns acks off", async () => {
  const env = setup({ client: { ackPushes: false } });
  await connectWith(env);
  env.last().receive(pushMsg(1));
  await flush();
  assert.equal(env.last().ofType("ack").length, 0);

  const env2 = setup();
  await connectWith(env2);
  env2.client.subscribe("t");
  env2.last().receive({ type: "subscribed", topic: "t", seq: 0, epoch: "x", ref: env2.last().ofType("subscribe")[0].ref });
  env2.last().receive(pushMsg(1, { topic: "t" }));
  await flush();
  assert.equal(env2.last().ofType("ack").length, 0);
});

test("an ack is never sent on a connection other than the one the push came on", async () => {
  const env = setup();
  await connectWith(env);
  const first = env.last();
  first.receive(pushMsg(1));
  first.drop(1006);
  await flush();
  assert.equal(first.ofType("ack").length, 0);
});

test("close() closes with 1000 and never reconnects", async () => {
  const env = setup();
  await connectWith(env);
  const ws = env.last();
  const inFlight = env.client.publish("room:1", 1);
  env.client.close();
  assert.deepEqual(ws.closeCalls, [1000]);
  await assert.rejects(inFlight, (err) => err.code === "disconnected");
  ws.drop(1000); // the server's echo
  assert.equal(env.timers.count(), 0);
  assert.equal(env.sockets.length, 1);
  assert.equal(env.events.state.at(-1), "disconnected");
  assert.equal(env.events.error.length, 0);
});

test("close() during backoff cancels the retry and rejects a waiting connect()", async () => {
  const env = setup();
  const connected = env.client.connect();
  await flush();
  env.last().fail();
  assert.equal(env.timers.count(), 1);
  env.client.close();
  assert.equal(env.timers.count(), 0);
  await assert.rejects(connected, (err) => err.code === "closed");
});

test("close() while getToken runs drops the late token", async () => {
  let release;
  const env = setup({ client: { token: undefined, getToken: () => new Promise((r) => { release = r; }) } });
  env.client.connect().catch(() => {});
  await flush();
  env.client.close();
  release("jwt");
  await flush();
  assert.equal(env.sockets.length, 0);
});

test("close codes: reconnect after transient ones, stop after deliberate ones and bugs", async () => {
  const reconnects = [1001, 1005, 1006, 1011, 1012, 1013, 4002, 4008];
  const stops = [1000, 1002, 1003, 1007, 1008, 1009, 4003, 4009, 4100];
  for (const code of reconnects) {
    const env = setup();
    await connectWith(env);
    env.last().drop(code);
    assert.equal(env.timers.count(), 1, `${code} reconnects`);
    assert.equal(env.events.error.length, 0, `${code} is no error`);
  }
  for (const code of stops) {
    const env = setup();
    await connectWith(env);
    env.last().drop(code, "why");
    assert.equal(env.timers.count(), 0, `${code} stops`);
    const err = env.events.error.at(-1);
    assert.equal(err.code, "closed");
    assert.equal(err.closeCode, code);
    // connect() starts again after a stop.
    env.client.connect();
    await flush();
    assert.equal(env.sockets.length, 2, `connect() after ${code}`);
  }
});

test("a subscription the server ends is reported and not resumed", async () => {
  const env = setup();
  await connectWith(env);
  env.client.subscribe("room:2");
  env.last().receive({ type: "subscribed", topic: "room:2", seq: 1, epoch: "t", ref: env.last().ofType("subscribe")[0].ref });
  env.last().receive({ type: "unsubscribed", topic: "room:2", reason: "forbidden" });
  const err = env.events.error.at(-1);
  assert.equal(err.code, "unsubscribed");
  assert.equal(err.topic, "room:2");
  assert.equal(err.reason, "forbidden");
  await reconnectWith(env, welcome({ resumed: true }));
  assert.equal(env.last().ofType("subscribe").length, 0);
});

test("unsubscribe() answers by ref when connected, locally when not", async () => {
  const env = setup();
  assert.deepEqual(await env.client.unsubscribe("x"), { type: "unsubscribed", topic: "x" });
  const waiting = env.client.subscribe("y");
  env.client.unsubscribe("y");
  await assert.rejects(waiting, (err) => err.code === "cancelled");
  await connectWith(env);
  const answer = env.client.unsubscribe("z");
  const [msg] = env.last().ofType("unsubscribe");
  env.last().receive({ type: "unsubscribed", topic: "z", ref: msg.ref });
  assert.equal((await answer).ref, msg.ref);
  assert.equal(env.last().ofType("subscribe").length, 0, "y was not subscribed");
});

test("unknown message types and fields are ignored", async () => {
  const env = setup();
  await connectWith(env);
  env.last().receive({ type: "future_thing", x: 1 });
  env.last().onmessage({ data: "not json" });
  env.last().receive(pushMsg(1, { future_field: true }));
  assert.equal(env.events.push.length, 1);
  assert.equal(env.events.error.length, 0);
});

test("options are checked", () => {
  const { FakeWebSocket } = fakeWebSocketClass();
  assert.throws(() => new ThrongClient(URL_BASE, { WebSocket: FakeWebSocket }), TypeError);
  assert.throws(() => new ThrongClient("not a url", { token: "t", WebSocket: FakeWebSocket }), TypeError);
  assert.throws(() => new ThrongClient(URL_BASE, { token: "t", WebSocket: FakeWebSocket,
    backoff: { minMs: 10, maxMs: 5 } }), RangeError);
  const client = new ThrongClient(URL_BASE, { token: "t", WebSocket: FakeWebSocket });
  assert.throws(() => client.on("nope", () => {}), TypeError);
});

test("a re-subscribe refused with a transient error is retried with backoff on the same connection", async () => {
  const env = setup();
  await connectWith(env);
  const sub = env.client.subscribe("room:1");
  const first = env.last().ofType("subscribe")[0];
  env.last().receive({ type: "subscribed", topic: "room:1", seq: 2, epoch: "t1", ref: first.ref });
  await sub;
  await reconnectWith(env, welcome({ resumed: true }));
  const again = env.last().ofType("subscribe")[0];
  assert.deepEqual({ since: again.since, epoch: again.epoch }, { since: 2, epoch: "t1" });
  env.last().receive({ type: "error", code: "rate_limited", message: "slow down", ref: again.ref });
  await flush();
  // Not forgotten and not reported as lost: a retry is planned, a second later at the
  // earliest after rate_limited (the server's bucket has a token again by then).
  assert.equal(env.timers.count(), 1);
  assert.ok(env.timers.delays()[0] >= 1000, `${env.timers.delays()}`);
  assert.deepEqual(env.events.gap, []);
  env.timers.fireNext();
  await flush();
  const retry = env.last().ofType("subscribe")[1];
  assert.deepEqual({ since: retry.since, epoch: retry.epoch }, { since: 2, epoch: "t1" });
  env.last().receive({ type: "subscribed", topic: "room:1", seq: 3, epoch: "t1", resumed: true, ref: retry.ref });
  env.last().receive(pushMsg(3, { topic: "room:1" }));
  assert.deepEqual(env.events.push.map((p) => p.seq), [3]);
  assert.deepEqual(env.events.resumed.filter((e) => e.stream === "topic").length, 1);
});

test("a subscribe() the server refuses, even for a transient reason, is forgotten", async () => {
  const env = setup();
  await connectWith(env);
  const sub = env.client.subscribe("room:1");
  const msg = env.last().ofType("subscribe")[0];
  env.last().receive({ type: "error", code: "rate_limited", message: "slow down", ref: msg.ref });
  await assert.rejects(sub, (e) => e.code === "rate_limited");
  // Its pushes are not delivered, and a reconnect does not subscribe it again.
  env.last().receive(pushMsg(1, { topic: "room:1" }));
  assert.deepEqual(env.events.push, []);
  await reconnectWith(env, welcome({ resumed: true }));
  await flush();
  assert.deepEqual(env.last().ofType("subscribe"), []);
});

test("re-subscribes wait for a refused one's retry, so refusals do not pile up into a 1008", async () => {
  const env = setup();
  await connectWith(env);
  for (const topic of ["a", "b"]) {
    const sub = env.client.subscribe(topic);
    const m = env.last().ofType("subscribe").at(-1);
    env.last().receive({ type: "subscribed", topic, seq: 1, epoch: "e", ref: m.ref });
    await sub;
  }
  await reconnectWith(env, welcome({ resumed: true }));
  const first = env.last().ofType("subscribe")[0];
  assert.equal(first.topic, "a");
  env.last().receive({ type: "error", code: "overloaded", message: "busy", ref: first.ref });
  await flush();
  assert.equal(env.last().ofType("subscribe").length, 1, "b waits for a's retry");
  env.timers.fireNext();
  await flush();
  const retry = env.last().ofType("subscribe")[1];
  assert.equal(retry.topic, "a");
  env.last().receive({ type: "subscribed", topic: "a", seq: 1, epoch: "e", resumed: true, ref: retry.ref });
  await flush();
  assert.equal(env.last().ofType("subscribe")[2].topic, "b");
});

// ---- request timeouts ----

test("a request without an answer is rejected with 'timeout' after requestTimeoutMs", async () => {
  const env = setup({ client: { requestTimeoutMs: 2500 } });
  await connectWith(env);
  const ws = env.last();
  const published = env.client.publish("room:1", { big: "x".repeat(5000) });
  const [pub] = ws.ofType("publish");
  // A large message refused unread (the bucket in debt) is answered without its ref.
  ws.receive({ type: "error", code: "rate_limited", message: "slow down" });
  assert.equal(env.events.error.at(-1).code, "rate_limited");
  assert.deepEqual(env.timers.delays(), [2500]);
  env.timers.fireNext();
  await assert.rejects(published, (err) => err.code === "timeout" && err.sent === true &&
    /publish/.test(err.message) && /may or may not/.test(err.message));
  // A late answer is ignored; nothing is left waiting.
  ws.receive({ type: "published", topic: "room:1", seq: 1, ref: pub.ref });
  assert.equal(env.timers.count(), 0);
  // The connection is still usable.
  const sent = env.client.send(1);
  ws.receive({ type: "sent", ref: ws.ofType("send")[0].ref });
  assert.equal((await sent).type, "sent");
  assert.equal(env.timers.count(), 0, "an answered request's timer is cleared");
});

test("every request has a timeout by default", async () => {
  const env = setup();
  await connectWith(env);
  const answers = [env.client.publish("t", 1), env.client.send(1), env.client.unsubscribe("t")];
  assert.deepEqual(env.timers.delays(), [10000, 10000, 10000]);
  for (let i = 0; i < 3; i++) env.timers.fireNext();
  for (const answer of answers) await assert.rejects(answer, (err) => err.code === "timeout");
});

test("requests in flight at a drop are rejected with sent:true, and their timers cleared", async () => {
  const env = setup();
  await connectWith(env);
  const published = env.client.publish("room:1", 1);
  env.last().drop(1006);
  await assert.rejects(published, (err) => err.code === "disconnected" && err.sent === true);
  assert.equal(env.timers.count(), 1, "only the reconnect timer");
  await assert.rejects(env.client.publish("room:1", 1), (err) => err.code === "disconnected" && err.sent === false);
});

test("a subscribe() that times out is forgotten and the server asked to end it", async () => {
  const env = setup();
  await connectWith(env);
  const ws = env.last();
  const sub = env.client.subscribe("room:1");
  const [msg] = ws.ofType("subscribe");
  env.timers.fireNext();
  await assert.rejects(sub, (err) => err.code === "timeout" && err.topic === "room:1");
  const [unsub] = ws.ofType("unsubscribe");
  assert.equal(unsub.topic, "room:1");
  // The late answers change nothing: no pushes of the topic, no error event.
  ws.receive({ type: "subscribed", topic: "room:1", seq: 0, epoch: "t", ref: msg.ref });
  ws.receive(pushMsg(1, { topic: "room:1" }));
  ws.receive({ type: "unsubscribed", topic: "room:1", ref: unsub.ref });
  assert.deepEqual(env.events.push, []);
  assert.deepEqual(env.events.error, []);
  await reconnectWith(env, welcome({ resumed: true }));
  assert.deepEqual(env.last().ofType("subscribe"), [], "not subscribed again after a reconnect");
});

test("a late unsubscribed answer does not end a topic subscribed again", async () => {
  const env = setup();
  await connectWith(env);
  const ws = env.last();
  const gone = env.client.unsubscribe("room:1");
  const [unsub] = ws.ofType("unsubscribe");
  env.timers.fireNext();
  await assert.rejects(gone, (err) => err.code === "timeout");
  const sub = env.client.subscribe("room:1");
  ws.receive({ type: "subscribed", topic: "room:1", seq: 0, epoch: "t", ref: ws.ofType("subscribe")[0].ref });
  await sub;
  ws.receive({ type: "unsubscribed", topic: "room:1", ref: unsub.ref }); // the late one
  assert.deepEqual(env.events.error, [], "not reported as ended by the server");
  ws.receive(pushMsg(1, { topic: "room:1" }));
  assert.deepEqual(env.events.push.map((p) => p.topic), ["room:1"]);
});

test("a re-subscribe that times out is tried again on the same connection", async () => {
  const env = setup();
  await connectWith(env);
  const sub = env.client.subscribe("room:1");
  env.last().receive({ type: "subscribed", topic: "room:1", seq: 2, epoch: "t1", ref: env.last().ofType("subscribe")[0].ref });
  await sub;
  await reconnectWith(env, welcome({ resumed: true }));
  assert.equal(env.last().ofType("subscribe").length, 1);
  env.timers.fireNext(); // its answer's timeout
  await flush();
  assert.equal(env.timers.count(), 1, "a pause before the retry");
  env.timers.fireNext();
  await flush();
  const [, retry] = env.last().ofType("subscribe");
  assert.deepEqual({ topic: retry.topic, since: retry.since, epoch: retry.epoch }, { topic: "room:1", since: 2, epoch: "t1" });
  assert.deepEqual(env.events.error, []);
});

test("data that cannot be JSON is refused before sending, leaving nothing pending", async () => {
  const env = setup();
  await connectWith(env);
  await assert.rejects(env.client.publish("t", { n: 1n }), (err) => err.code === "bad_json" && err.sent === false);
  const cycle = {};
  cycle.self = cycle;
  await assert.rejects(env.client.send(cycle), (err) => err.code === "bad_json" && err.sent === false);
  assert.deepEqual(env.last().sent, []);
  assert.equal(env.timers.count(), 0);
});

test("close() clears every timer and settles what waits, re-subscribes pausing included", async () => {
  const env = setup();
  const waiting = env.client.subscribe("room:1");
  await connectWith(env);
  const [first] = env.last().ofType("subscribe");
  env.last().receive({ type: "error", code: "overloaded", message: "busy", ref: first.ref });
  await flush();
  const published = env.client.publish("room:2", 1);
  assert.equal(env.timers.count(), 2, "the re-subscribe's pause and the publish's timeout");
  env.client.close();
  assert.equal(env.timers.count(), 0);
  await assert.rejects(published, (err) => err.code === "disconnected");
  await assert.rejects(waiting, (err) => err.code === "closed");
});

// ---- stalls: heartbeat and connect timeout ----

test("a connection silent through a ping and its timeout is closed and reconnected", async () => {
  const env = setup({ client: { heartbeat: { intervalMs: 3000, timeoutMs: 1000 } } });
  await connectWith(env);
  const ws = env.last();
  assert.deepEqual(env.timers.delays(), [3000]);
  const published = env.client.publish("room:1", 1);
  env.timers.fire(3000); // the request's timeout is later (10 s)
  assert.deepEqual(ws.ofType("ping"), [{ type: "ping" }]);
  env.timers.fire(1000);
  assert.deepEqual(ws.closeCalls, [4000], "the stalled socket is closed by the client");
  await assert.rejects(published, (err) => err.code === "disconnected" && err.sent === true);
  assert.equal(env.events.state.at(-1), "disconnected");
  assert.equal(env.events.error.length, 1);
  assert.equal(env.events.error[0].code, "stalled");
  assert.match(env.events.error[0].message, /1000 ms.*reconnecting/);
  assert.equal(env.timers.count(), 1, "only the reconnect timer");
  env.timers.fireNext();
  await flush();
  assert.equal(env.sockets.length, 2, "reconnected");
  // The old socket's late events change nothing.
  ws.drop(1006);
  ws.receive(pushMsg(1));
  assert.equal(env.events.push.length, 0);
});

test("traffic both ways keeps the heartbeat quiet; a pong answers its ping", async () => {
  const env = setup({ client: { heartbeat: { intervalMs: 3000, timeoutMs: 1000 } } });
  await connectWith(env);
  const ws = env.last();
  const t0 = env.clock.ms;
  for (let i = 1; i <= 5; i++) {
    env.clock.ms = t0 + 2000 * i;
    ws.receive(pushMsg(i)); // heard, and its ack is sent
    await flush();
    env.timers.fireNext(); // due an interval after the older of the two: nothing to do yet
  }
  assert.equal(ws.ofType("ack").length, 5);
  assert.equal(ws.ofType("ping").length, 0, "a busy connection is never pinged");
  assert.deepEqual(env.timers.delays(), [2000], "re-armed at the next due time: 3000 ms after the last push");
  env.timers.fireNext(); // silent both ways for an interval: ping
  assert.equal(ws.ofType("ping").length, 1);
  assert.equal(env.clock.ms, t0 + 10000 + 3000);
  assert.deepEqual(env.timers.delays(), [1000]);
  env.clock.ms += 200;
  ws.receive({ type: "pong" });
  assert.deepEqual(env.timers.delays(), [2800], "answered: the next ping is an interval after the ping went");
  env.timers.fireNext();
  assert.equal(ws.ofType("ping").length, 2);
  assert.deepEqual(ws.closeCalls, []);
  assert.equal(env.events.state.at(-1), "connected");
});

// The server sends its own WebSocket Ping after ping_interval_ms without a byte from the
// client; a client ping sent at 0.8 x that keeps it from falling due (one round trip per
// cycle, not two).
test("the heartbeat interval is derived from the welcome: a ping after 0.8 x ping_interval_ms without sending, not before", async () => {
  const env = setup({ client: { heartbeat: undefined } });
  await connectWith(env, welcome({ ping_interval_ms: 1000, idle_timeout_ms: 60000 }));
  const ws = env.last();
  const t0 = env.clock.ms;
  assert.deepEqual(env.timers.delays(), [800]);
  env.clock.ms = t0 + 500;
  ws.receive(pushMsg(1)); // heard, and the ack sent, at +500
  await flush();
  assert.equal(ws.ofType("ack").length, 1);
  env.timers.fireNext(); // +800: only 300 ms since the client last sent
  assert.equal(env.clock.ms, t0 + 800);
  assert.equal(ws.ofType("ping").length, 0, "no ping before 800 ms without sending");
  assert.deepEqual(env.timers.delays(), [500]);
  env.clock.ms = t0 + 1299;
  env.timers.fireNext(); // +1300: 800 ms since the ack
  assert.equal(env.clock.ms, t0 + 1300);
  assert.deepEqual(ws.ofType("ping"), [{ type: "ping" }]);
  assert.deepEqual(env.timers.delays(), [2000], "timeout: ping_interval_ms (1 s), raised to the 2 s floor");
  ws.receive({ type: "pong" });
  assert.deepEqual(env.timers.delays(), [800]);
});

test("a connection that hears pushes but sends nothing is still pinged (the server must hear from it)", async () => {
  const env = setup({ client: { heartbeat: undefined, ackPushes: false } });
  await connectWith(env, welcome({ ping_interval_ms: 1000, idle_timeout_ms: 60000 }));
  const ws = env.last();
  const t0 = env.clock.ms;
  for (const at of [300, 600]) {
    env.clock.ms = t0 + at;
    ws.receive(pushMsg(at));
  }
  env.timers.fireNext();
  assert.equal(env.clock.ms, t0 + 800);
  assert.equal(ws.ofType("ping").length, 1, "nothing sent for 800 ms: ping, though pushes came");
});

test("a connection that sends but hears nothing is pinged, and closed when the ping is not answered", async () => {
  const env = setup({ client: { heartbeat: undefined } });
  await connectWith(env, welcome({ ping_interval_ms: 1000, idle_timeout_ms: 1500 }));
  const ws = env.last();
  const t0 = env.clock.ms;
  env.clock.ms = t0 + 400;
  const sent = env.client.send({ action: "typing" }); // sent 400 ms before the ping is due
  env.timers.fire(800); // the heartbeat (due at +800), not the request's 10 s timer
  assert.equal(env.clock.ms, t0 + 800);
  assert.deepEqual(ws.ofType("ping"), [{ type: "ping" }], "heard nothing for 800 ms: ping, though it sent 400 ms ago");
  assert.ok(env.timers.delays().includes(2000), "timeout: ping_interval_ms, at least 2 s");
  env.timers.fire(2000);
  assert.deepEqual(ws.closeCalls, [4000]);
  await assert.rejects(sent, (err) => err.code === "disconnected");
  assert.equal(env.events.state.at(-1), "disconnected");
  assert.deepEqual(env.events.error.map((e) => e.code), ["stalled"], "the app is told why it reconnects");
});

test("an explicit heartbeat.intervalMs (and timeoutMs) wins over the welcome's", async () => {
  let env = setup({ client: { heartbeat: { intervalMs: 5000 } } });
  await connectWith(env, welcome({ ping_interval_ms: 1000, idle_timeout_ms: 3000 }));
  assert.deepEqual(env.timers.delays(), [5000]);
  env.timers.fireNext();
  assert.equal(env.last().ofType("ping").length, 1);
  assert.deepEqual(env.timers.delays(), [2000], "the timeout is still derived: idle - ping = 2000");

  env = setup({ client: { heartbeat: { intervalMs: 5000, timeoutMs: 3000 } } });
  await connectWith(env, welcome({ ping_interval_ms: 1000, idle_timeout_ms: 3000 }));
  env.timers.fireNext();
  assert.deepEqual(env.timers.delays(), [3000]);

  env = setup({ client: { heartbeat: { timeoutMs: 700 } } });
  await connectWith(env, welcome({ ping_interval_ms: 1000, idle_timeout_ms: 3000 }));
  assert.deepEqual(env.timers.delays(), [800], "the interval is still derived");
  env.timers.fireNext();
  assert.deepEqual(env.timers.delays(), [700]);
});

test("the heartbeat is on by default (0.8 x ping_interval_ms, then 10 s) and heartbeat:false turns it off", async () => {
  let env = setup({ client: { heartbeat: undefined } });
  await connectWith(env); // ping_interval_ms 25000, idle_timeout_ms 60000
  assert.deepEqual(env.timers.delays(), [20000]);
  env.timers.fireNext();
  assert.deepEqual(env.timers.delays(), [10000]);
  env.last().drop(1006);
  assert.equal(env.timers.count(), 1, "the heartbeat ends with its connection");
  // A welcome that does not say: the server's defaults.
  env = setup({ client: { heartbeat: undefined } });
  const bare = welcome();
  delete bare.ping_interval_ms;
  delete bare.idle_timeout_ms;
  await connectWith(env, bare);
  assert.deepEqual(env.timers.delays(), [20000]);
  env.timers.fireNext();
  assert.deepEqual(env.timers.delays(), [10000]);
  env = setup({ client: { heartbeat: false } });
  await connectWith(env);
  assert.equal(env.timers.count(), 0);
  assert.throws(() => setup({ client: { heartbeat: { intervalMs: 0 } } }), RangeError);
  assert.throws(() => setup({ client: { heartbeat: { timeoutMs: -1 } } }), RangeError);
});

test("an attempt that does not open in connectTimeoutMs is given up and retried", async () => {
  const env = setup({ client: { connectTimeoutMs: 4000 } });
  const connected = env.client.connect();
  await flush();
  const stuck = env.last();
  assert.deepEqual(env.timers.delays(), [4000]);
  env.timers.fireNext();
  assert.equal(env.events.error.at(-1).code, "connect_failed");
  assert.match(env.events.error.at(-1).message, /timed out after 4000 ms: the connection did not open/);
  assert.deepEqual(stuck.closeCalls, [undefined], "the hanging attempt is closed");
  assert.equal(env.events.state.at(-1), "disconnected");
  assert.equal(env.timers.count(), 1, "a backoff retry");
  stuck.open(); // too late: ignored
  stuck.receive(welcome());
  assert.equal(env.events.welcome.length, 0);
  env.timers.fireNext();
  await flush();
  env.last().open();
  assert.deepEqual(env.timers.delays(), [4000], "the next attempt has its own deadline");
  env.timers.fireNext(); // opened, but no welcome
  assert.match(env.events.error.at(-1).message, /no welcome came/);
  assert.deepEqual(env.sockets[1].closeCalls, [4000]);
  env.timers.fireNext();
  await flush();
  env.last().open();
  env.last().receive(welcome({ session: "s3" }));
  assert.equal((await connected).session, "s3");
  assert.equal(env.timers.count(), 0, "the deadline ends with the welcome");
});

test("a getToken that never settles is given up after connectTimeoutMs", async () => {
  let calls = 0;
  const releases = [];
  const getToken = () => {
    calls++;
    return calls === 1 ? new Promise((r) => releases.push(r)) : Promise.resolve(`jwt-${calls}`);
  };
  const env = setup({ client: { token: undefined, getToken, connectTimeoutMs: 4000 } });
  env.client.connect();
  await flush();
  assert.equal(env.sockets.length, 0);
  env.timers.fireNext();
  assert.equal(env.events.error.at(-1).code, "token_failed");
  assert.match(env.events.error.at(-1).message, /getToken did not answer/);
  env.timers.fireNext(); // the retry
  await flush();
  assert.equal(env.sockets.length, 1);
  assert.equal(env.last().url.searchParams.get("token"), "jwt-2");
  releases[0]("late-token");
  await flush();
  assert.equal(env.sockets.length, 1, "the late token is dropped");
});

test("a getToken that never settles during a refresh is reported, and a later refresh still runs", async () => {
  let calls = 0;
  const getToken = () => (++calls === 2 ? new Promise(() => {}) : Promise.resolve(`jwt-${calls}`));
  const env = setup({ client: { token: undefined, getToken, requestTimeoutMs: 2000 } });
  await connectWith(env);
  env.last().receive({ type: "token_expiring", in_ms: 50000 });
  await flush();
  assert.deepEqual(env.timers.delays(), [2000]);
  env.timers.fireNext();
  await flush();
  assert.equal(env.events.error.at(-1).code, "token_failed");
  env.last().receive({ type: "token_expiring", in_ms: 8000 });
  assert.deepEqual(env.timers.delays(), [4000], "not stuck behind the hung getToken");
  env.timers.fireNext();
  await flush();
  assert.equal(env.last().ofType("refresh").at(-1).token, "jwt-3");
});

// ---- what the server would refuse badly is refused before sending ----

test("a message over maxMessageBytes is refused locally instead of getting the connection closed (1009)", async () => {
  // Data over maxClientDataBytes is refused too (its own test): raised here.
  const env = setup({ client: { maxClientDataBytes: 1 << 20 } });
  await connectWith(env);
  // 65536 bytes is the server's default max_message_size; over it the server closes with
  // 1009, after which the client stops for good.
  await assert.rejects(env.client.publish("room:1", "x".repeat(70000)),
    (err) => err.code === "too_large" && err.sent === false && /65536/.test(err.message));
  // Counted in UTF-8 bytes: 22,000 three-byte characters are 66,000 bytes.
  await assert.rejects(env.client.send("€".repeat(22000)), (err) => err.code === "too_large");
  assert.deepEqual(env.last().sent, []);
  // Just under the limit goes; a larger limit can be configured.
  env.client.publish("room:1", "x".repeat(65400));
  assert.equal(env.last().ofType("publish").length, 1);
  const env2 = setup({ client: { maxMessageBytes: 1 << 20, maxClientDataBytes: 1 << 20 } });
  await connectWith(env2);
  env2.client.publish("room:1", "x".repeat(70000));
  assert.equal(env2.last().ofType("publish").length, 1);
});

test("data nested too deeply or with integers beyond 64 bits is refused locally (the server's refusal has no ref)", async () => {
  const env = setup();
  await connectWith(env);
  const nest = (levels) => {
    let d = 1;
    for (let i = 0; i < levels; i++) d = [d];
    return d;
  };
  // The message is level 1, so data may nest 31 levels.
  await assert.rejects(env.client.publish("t", nest(32)), (err) => err.code === "bad_json" && err.sent === false);
  env.client.publish("t", nest(31));
  await assert.rejects(env.client.send({ n: 2 ** 64 }), (err) => err.code === "bad_json" && /18446744073709552000/.test(err.message));
  await assert.rejects(env.client.send({ n: -(2 ** 63) - 4096 }), (err) => err.code === "bad_json");
  // In range, floats, exponents, and brackets or digits inside strings all go.
  // (-(2 ** 63) is written -9223372036854776000: out of range, like the server says.)
  env.client.send({ a: 2 ** 63, b: -(2 ** 62), c: 1e21, d: 1.5e300, e: -0.5, s: "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ 18446744073709551616", q: "\"[" });
  env.client.send(Number.MAX_SAFE_INTEGER);
  assert.equal(env.last().sent.length, 3);
});

// ---- pacing to the server's client_rate ----

test("a burst over clientRate is refused locally, so the server never closes with 1008", async () => {
  const env = setup();
  await connectWith(env);
  const ws = env.last();
  const refused = [];
  // Answered as they go (pongs included), so the refusal guard never holds: the bucket decides.
  for (let i = 0; i < 150; i++) {
    env.client.publish("room:1", { i }).catch((err) => refused.push(err));
    for (const m of ws.sent) {
      if (m.answered || m.type === "ack") continue;
      m.answered = true;
      ws.receive(m.type === "ping" ? { type: "pong", ref: m.ref } : { type: "published", topic: "room:1", seq: 1, ref: m.ref });
    }
  }
  await flush();
  const sent = ws.ofType("publish").length;
  // The server's bucket: 100 tokens, a token a message plus 256 bytes' worth (1/64 token),
  // less one token kept for the client's own messages.
  assert.equal(ws.ofType("ping").length, 0);
  assert.equal(sent, 97);
  assert.equal(refused.length, 150 - 97);
  assert.ok(refused.every((e) => e.code === "rate_limited" && e.sent === false && e.retryAfterMs > 0 && e.retryAfterMs <= 10),
    JSON.stringify(refused[0]));
  // Acks are never refused and take no token; a second later the bucket is full again.
  ws.receive(pushMsg(1));
  await flush();
  assert.equal(ws.ofType("ack").length, 1);
  env.clock.ms += 1000;
  for (let i = 0; i < 97; i++) {
    env.client.send(1);
    const m = ws.ofType("send").at(-1);
    ws.receive({ type: "sent", ref: m.ref });
  }
  assert.equal(ws.ofType("send").length, 97);
  await assert.rejects(env.client.send(1), (err) => err.code === "rate_limited");
  // Before any answer, a burst goes as the bucket allows, with the guard's pings (see
  // "a burst at a full bucket..." and the guard's tests).
  const env2 = setup();
  await connectWith(env2);
  const refused2 = [];
  for (let i = 0; i < 150; i++) env2.client.publish("room:1", { i }).catch((err) => refused2.push(err));
  await flush();
  assert.equal(env2.last().ofType("publish").length, 87);
  assert.ok(refused2.length === 63 && refused2.every((e) => e.code === "rate_limited" && e.sent === false && e.retryAfterMs >= 1));
});

test("a burst at a full bucket goes as the bucket allows: the guard holds only once the bucket is low (fix-js4)", async () => {
  const env = setup();
  await connectWith(env);
  const ws = env.last();
  const refused = [];
  for (let i = 0; i < 150; i++) env.client.publish("room:1", { i }).catch((err) => refused.push(err));
  await flush();
  // 100 tokens, 2 kept in reserve: 87 publishes and 10 pings (a token and 1/64 each).
  const sent = ws.ofType("publish").length;
  assert.ok(sent > 80, `only ${sent} publishes went`);
  assert.equal(sent, 87);
  assert.equal(ws.ofType("ping").length, 10);
  assert.ok(ws.ofType("ping").every((m) => typeof m.ref === "number"));
  // A ping after every 8 messages not yet answered: never 9 in a row without one.
  let run = 0;
  for (const m of ws.sent) {
    run = m.type === "ping" ? 0 : run + 1;
    assert.ok(run <= 8, "9 messages without a ping");
  }
  assert.ok(refused.every((e) => e.code === "rate_limited" && e.sent === false));
  // The bucket refills, but nothing has been answered: had all that went reached the
  // server at once, it would have refilled nothing. The next guard ping holds.
  env.clock.ms += 2000;
  const held = [];
  for (let i = 0; i < 10; i++) env.client.publish("room:1", i).catch((e) => held.push(e));
  await flush();
  assert.equal(ws.ofType("ping").length, 11);
  assert.equal(ws.sent.at(-1).type, "ping", "in place of a request: nothing after it");
  const total = ws.ofType("publish").length;
  assert.ok(total > 87 && total <= 95, String(total));
  assert.ok(held.length >= 2 && held.every((e) => e.code === "rate_limited" && e.sent === false));
  for (const m of ws.sent) {
    ws.receive(m.type === "ping" ? { type: "pong", ref: m.ref } : { type: "published", topic: "room:1", seq: 1, ref: m.ref });
  }
  await flush();
  env.client.publish("room:1", "after").catch(() => {});
  assert.equal(ws.ofType("publish").length, total + 1);
  assert.deepEqual(env.events.error, []);
});

test("the guard also holds when what went since the last answer could reach the server at once with too little refill (fix-js4)", async () => {
  // Sent slowly over a link that answers nothing (a stalled uplink): the copy refills to
  // full, but the server, given them all at once, would refill nothing between them.
  const env = setup();
  await connectWith(env);
  const ws = env.last();
  let held = null;
  for (let i = 0; i < 120 && !held; i++) {
    env.client.publish("room:1", i).catch((e) => { held = e; });
    await flush();
    if (!held) env.clock.ms += 20; // 50 a second: the copy stays full
  }
  // Nothing answered since the welcome (100 tokens): the guard holds before they run out.
  assert.ok(held && held.code === "rate_limited" && held.sent === false, JSON.stringify(held));
  // It went in place of the request: the server, given all at once, would have had a token
  // for every ping taken as accepted; after the last of those, 8 messages and this ping.
  assert.equal(ws.sent.at(-1).type, "ping");
  assert.equal(ws.sent.at(-10).type, "ping");
  assert.ok(ws.ofType("publish").length >= 80, String(ws.ofType("publish").length));
  // A pong for a ping that was taken as accepted does not release it; only the holding one's does.
  const pings = ws.ofType("ping");
  for (const m of ws.sent.filter((x) => x.type === "publish")) ws.receive({ type: "published", topic: "room:1", seq: 1, ref: m.ref });
  for (const m of pings) ws.receive({ type: "pong", ref: m.ref });
  await flush();
  const before = ws.ofType("publish").length;
  env.client.publish("room:1", "after").catch(() => {});
  assert.equal(ws.ofType("publish").length, before + 1);
});

test("a guard ping taken as accepted that the server refuses makes the guard hold (fix-js4)", async () => {
  const env = setup();
  await connectWith(env);
  const ws = env.last();
  for (let i = 0; i < 9; i++) env.client.publish("room:1", i).catch(() => {});
  const [ping] = ws.ofType("ping");
  assert.equal(ws.ofType("publish").length, 9, "the bucket is full: the ping goes before the 9th, which goes too");
  assert.equal(ws.sent.at(-2), ping);
  // The server refused all of them, the ping too (its bucket was emptier than the copy).
  for (const m of ws.sent) ws.receive({ type: "error", code: "rate_limited", message: "slow down", ref: m.ref });
  await flush();
  assert.deepEqual(env.events.error, [], "the ping's refusal is not reported");
  // The run is 10; nothing paced goes until another ping, a second later, is answered.
  env.clock.ms += 200;
  await assert.rejects(env.client.publish("room:1", "x"), (e) => e.code === "rate_limited" && e.retryAfterMs >= 500);
  assert.equal(ws.sent.length, 10);
  env.clock.ms += 1000;
  await assert.rejects(env.client.publish("room:1", "y"), (e) => e.code === "rate_limited" && e.sent === false);
  const second = ws.ofType("ping")[1];
  assert.ok(second, "another ping, in place of the request");
  assert.equal(ws.sent.length, 11);
  ws.receive({ type: "pong", ref: second.ref });
  await flush();
  env.client.publish("room:1", "z").catch(() => {});
  assert.equal(ws.ofType("publish").length, 10);
});

test("large messages cost a token per 16 KiB more, like on the server", async () => {
  const env = setup({ client: { clientRate: 10, maxClientDataBytes: 1 << 20 } });
  await connectWith(env);
  // 10 tokens: each 40 KB message takes 1 + ~2.4.
  const big = "x".repeat(40000);
  for (let i = 0; i < 5; i++) env.client.publish("t", big).catch(() => {});
  assert.equal(env.last().ofType("publish").length, 3);
});

test("a server rate_limited empties the client's bucket; clientRate 0 turns pacing off", async () => {
  const env = setup();
  await connectWith(env);
  const first = env.client.publish("t", 1);
  const [pub] = env.last().ofType("publish");
  // The server's client_rate is lower than the client's, say.
  env.last().receive({ type: "error", code: "rate_limited", message: "slow down", ref: pub.ref });
  await assert.rejects(first, (err) => err.code === "rate_limited" && err.sent === undefined);
  await assert.rejects(env.client.publish("t", 2), (err) => err.code === "rate_limited" && err.sent === false);
  env.clock.ms += 20; // two tokens back (one is kept for the client's own messages)
  env.client.publish("t", 3);
  assert.equal(env.last().ofType("publish").length, 2);

  const off = setup({ client: { clientRate: 0 } });
  await connectWith(off);
  for (let i = 0; i < 300; i++) off.client.publish("t", i);
  assert.equal(off.last().ofType("publish").length, 300);
});

test("a subscribe() refused for the rate is forgotten; re-subscribes wait for the bucket", async () => {
  // A bucket of 4: each message takes a token and 256 bytes' worth (1/64 token) more, and
  // one token is kept for the client's own messages.
  const env = setup({ client: { clientRate: 4 } });
  await connectWith(env);
  env.client.publish("t", 1).catch(() => {});
  env.client.publish("t", 2).catch(() => {});
  await assert.rejects(env.client.subscribe("room:1"), (err) => err.code === "rate_limited" && err.topic === "room:1");
  env.last().receive(pushMsg(1, { topic: "room:1" }));
  assert.deepEqual(env.events.push, []);
  env.clock.ms += 2000; // full again: room for two
  for (const topic of ["a", "b", "c"]) {
    const sub = env.client.subscribe(topic);
    const m = env.last().ofType("subscribe").at(-1);
    if (m?.topic !== topic) {
      await assert.rejects(sub, (err) => err.code === "rate_limited");
      continue;
    }
    env.last().receive({ type: "subscribed", topic, seq: 1, epoch: "e", ref: m.ref });
    await sub;
  }
  assert.deepEqual(env.last().ofType("subscribe").map((m) => m.topic), ["a", "b"]);
  // After a reconnect the re-subscribes are paced by the bucket, not refused by the server.
  env.clock.ms += 20000;
  await reconnectWith(env, welcome({ resumed: true }));
  env.client.publish("t", 3).catch(() => {}); // leaves room for one: the other waits a second
  for (const topic of ["a", "b"]) {
    if (topic === "b") {
      assert.equal(env.last().ofType("subscribe").length, 1);
      env.timers.fire(1000);
      await flush();
    }
    const m = env.last().ofType("subscribe").at(-1);
    assert.equal(m.topic, topic);
    env.last().receive({ type: "subscribed", topic, seq: 1, epoch: "e", resumed: true, ref: m.ref });
    await flush();
  }
  assert.deepEqual(env.events.error, []);
});

test("a failed token refresh is tried again before the 4001 close, at half the time left", async () => {
  let calls = 0;
  const getToken = async () => {
    calls++;
    if (calls === 2 || calls === 3) throw new Error("auth backend down");
    return `jwt-${calls}`;
  };
  const env = setup({ client: { token: undefined, getToken } });
  await connectWith(env);
  env.last().receive({ type: "token_expiring", in_ms: 40000 });
  await flush();
  assert.equal(env.events.error.at(-1).code, "token_failed");
  assert.deepEqual(env.timers.delays(), [20000]);
  env.timers.fireNext();
  await flush();
  assert.equal(env.events.error.length, 2);
  assert.deepEqual(env.timers.delays(), [10000], "half of what is left");
  env.timers.fireNext();
  await flush();
  const [refresh] = env.last().ofType("refresh");
  assert.equal(refresh.token, "jwt-4");
  env.last().receive({ type: "refreshed", exp: 1764562623, ref: refresh.ref });
  await flush();
  assert.equal(env.timers.count(), 0);

  // A refusal is tried again too, but not once less than 2 s are left.
  env.last().receive({ type: "token_expiring", in_ms: 3000 });
  env.timers.fireNext(); // a later refresh waits half of in_ms
  await flush();
  const second = env.last().ofType("refresh").at(-1);
  env.last().receive({ type: "error", code: "invalid_token", message: "bad", ref: second.ref });
  await flush();
  assert.equal(env.timers.count(), 0, "1.5 s left: the 4001 close and a reconnect will do");
});

test("a subscribe() refused before sending (a bad name) is forgotten, not retried at every reconnect", async () => {
  const env = setup();
  await connectWith(env);
  const huge = "t".repeat(70000);
  await assert.rejects(env.client.subscribe(huge), (err) => err.code === "bad_topic" && err.sent === false);
  await reconnectWith(env, welcome({ resumed: true }));
  await flush();
  assert.deepEqual(env.last().ofType("subscribe"), []);
  assert.deepEqual(env.events.error, []);
});

test("a burst of unsubscribes is paced, not refused: queued ones go as the bucket refills", async () => {
  // A bucket of 4: a paced message needs two tokens (one is kept for ping and refresh).
  const env = setup({ client: { clientRate: 4 } });
  await connectWith(env);
  const topics = Array.from({ length: 8 }, (_, i) => `room:${i}`);
  const results = [];
  const answers = topics.map((t) => env.client.unsubscribe(t).then((a) => results.push(a), (e) => results.push(e)));
  await flush();
  assert.equal(env.last().ofType("unsubscribe").length, 2, "two fit the bucket now");
  assert.equal(results.length, 0, "nothing refused");
  // While unsubscribes wait, they take the tokens first.
  await assert.rejects(env.client.publish("room:x", 1), (e) => e.code === "rate_limited" && e.sent === false && e.retryAfterMs > 0);
  const answer = (m) => env.last().receive({ type: "unsubscribed", topic: m.topic, ref: m.ref });
  for (const m of env.last().ofType("unsubscribe")) answer(m);
  // The server refuses one for the rate (messages reached it bunched): it goes again.
  for (let i = 0; i < 20 && env.last().ofType("unsubscribe").length < 3; i++) env.timers.fireSoonest();
  const third = env.last().ofType("unsubscribe")[2];
  env.last().receive({ type: "error", code: "rate_limited", message: "slow down", ref: third.ref });
  await flush();
  assert.equal(results.filter((r) => r instanceof Error).length, 0, "a rate_limited unsubscribe is retried, not rejected");
  const answered = new Set([third.ref]);
  for (let i = 0; i < 40 && env.last().ofType("unsubscribe").length < 9; i++) {
    env.timers.fireSoonest();
    for (const m of env.last().ofType("unsubscribe").slice(3)) {
      if (!answered.has(m.ref)) answer(m);
      answered.add(m.ref);
    }
  }
  const sent = env.last().ofType("unsubscribe");
  assert.equal(sent.length, 9, "8 unsubscribes, one of them twice");
  assert.deepEqual([...new Set(sent.map((m) => m.topic))].sort(), [...topics].sort());
  await Promise.all(answers);
  assert.equal(results.length, 8);
  assert.ok(results.every((r) => r.type === "unsubscribed"), JSON.stringify(results));
});

test("a subscribe that goes drops a queued unsubscribe of the topic; one refused leaves it queued (review s16h F2)", async () => {
  const env = setup({ client: { clientRate: 2 } });
  await connectWith(env);
  const a = env.client.unsubscribe("a");
  const b = env.client.unsubscribe("b");
  const c = env.client.unsubscribe("c");
  assert.deepEqual(env.last().ofType("unsubscribe").map((m) => m.topic), ["a"]);
  // subscribe(b) is refused (c's unsubscribe waits before it): b's stays queued, so the
  // server ends the subscription the client has forgotten.
  await assert.rejects(env.client.subscribe("b"), (e) => e.code === "rate_limited" && e.sent === false);
  let bSettled = false;
  b.then(() => { bSettled = true; });
  await flush();
  assert.equal(bSettled, false, "b's unsubscribe still waits");
  env.last().drop(1006);
  assert.deepEqual(await b, { type: "unsubscribed", topic: "b" }, "the subscription ended with the connection");
  assert.deepEqual(await c, { type: "unsubscribed", topic: "c" });
  await assert.rejects(a, (e) => e.code === "disconnected");
  assert.equal(env.timers.delays().filter((ms) => ms < 5000).length, 1, "only the reconnect's timer is left");

  // Once the bucket has room, subscribe(b) goes in place of b's queued unsubscribe.
  const env2 = setup({ client: { clientRate: 2 } });
  await connectWith(env2);
  env2.client.unsubscribe("a");
  const b2 = env2.client.unsubscribe("b");
  env2.clock.ms += 1000;
  env2.client.subscribe("b").catch(() => {});
  assert.deepEqual(await b2, { type: "unsubscribed", topic: "b" });
  assert.deepEqual(env2.last().sent.map((m) => `${m.type} ${m.topic}`), ["unsubscribe a", "subscribe b"]);
});

test("subscribe/unsubscribe/subscribe while the bucket is low leaves no server subscription the client forgot (review s16h F2)", async () => {
  for (const onlyA of [false, true]) {
    const env = setup({ client: { clientRate: 10 } });
    await connectWith(env);
    const ws = env.last();
    for (const topic of onlyA ? ["room:a"] : ["room:a", "room:b"]) {
      const sub = env.client.subscribe(topic);
      ws.receive({ type: "subscribed", topic, seq: 0, epoch: "e", ref: ws.ofType("subscribe").at(-1).ref });
      await sub;
      env.clock.ms += 1000;
    }
    // A burst empties the bucket (answers come: no refusal guard in play).
    for (let i = 0; i < 20; i++) {
      const p = env.client.publish("room:z", i).catch(() => {});
      const pub = ws.ofType("publish").at(-1);
      if (pub && !pub.answered) {
        pub.answered = true;
        ws.receive({ type: "published", topic: "room:z", seq: i + 1, ref: pub.ref });
      }
      await p;
    }
    const ua = env.client.unsubscribe("room:a");
    if (!onlyA) env.client.unsubscribe("room:b").catch(() => {});
    await assert.rejects(env.client.subscribe("room:a"), (e) => e.code === "rate_limited" && e.sent === false, `onlyA ${onlyA}`);
    // The unsubscribe of room:a still goes as the bucket refills.
    for (let i = 0; i < 10 && !ws.ofType("unsubscribe").some((m) => m.topic === "room:a"); i++) env.timers.fireSoonest();
    const unsub = ws.ofType("unsubscribe").find((m) => m.topic === "room:a");
    assert.ok(unsub, `onlyA ${onlyA}: the server is asked to end room:a`);
    ws.receive({ type: "unsubscribed", topic: "room:a", ref: unsub.ref });
    assert.equal((await ua).type, "unsubscribed");
    ws.receive(pushMsg(1, { topic: "room:a" }));
    assert.deepEqual(env.events.push, []);
  }
});

test("the derived heartbeat timeout is the server's ping interval within 2-10 s, whatever idle_timeout_ms", async () => {
  const timeoutFor = async (pingMs, idleMs) => {
    const env = setup({ client: { heartbeat: undefined } });
    await connectWith(env, welcome({ ping_interval_ms: pingMs, idle_timeout_ms: idleMs }));
    env.timers.fireNext(); // the ping
    assert.equal(env.last().ofType("ping").length, 1);
    return env.timers.delays()[0];
  };
  // idle barely above ping (valid: the server only needs idle > ping): the client's pings
  // keep the server's idle clock reset, so the gap between the two is no limit.
  assert.equal(await timeoutFor(25000, 26000), 10000);
  assert.equal(await timeoutFor(2500, 3000), 2500);
  assert.equal(await timeoutFor(500, 600), 2000);
  assert.equal(await timeoutFor(60000, 120000), 10000);
});

test("topic names the server would refuse are refused locally with bad_topic (protocol.md 2.3)", async () => {
  const env = setup();
  await connectWith(env);
  const bad = ["room:my room", "news*", "caf\u00e9", "tab\there", "x".repeat(201), "\u007f"];
  for (const topic of bad) {
    for (const call of [() => env.client.publish(topic, 1), () => env.client.subscribe(topic), () => env.client.unsubscribe(topic)]) {
      await assert.rejects(call(), (err) => err.code === "bad_topic" && err.sent === false && err.topic === topic);
    }
  }
  assert.deepEqual(env.last().sent, []);
  // 1 to 200 bytes of '!' to '~' but '*' are fine.
  const good = ["!", "~", "x".repeat(200), "user/7/feed", "room:42"];
  for (const topic of good) env.client.publish(topic, 1);
  assert.deepEqual(env.last().ofType("publish").map((m) => m.topic), good);
});

test("after an unavailable send, sends are refused locally until the next connection", async () => {
  const env = setup();
  await connectWith(env);
  const first = env.client.send({ typing: true });
  const [msg] = env.last().ofType("send");
  env.last().receive({ type: "error", code: "unavailable", message: "no events_url", ref: msg.ref });
  await assert.rejects(first, (err) => err.code === "unavailable" && err.sent === undefined);
  for (let i = 0; i < 12; i++) {
    await assert.rejects(env.client.send(i), (err) => err.code === "unavailable" && err.sent === false);
  }
  assert.equal(env.last().ofType("send").length, 1, "the server saw one refusal, not twelve");
  env.client.publish("room:1", 1).catch(() => {}); // other requests are not affected
  assert.equal(env.last().ofType("publish").length, 1);
  await reconnectWith(env, welcome());
  env.client.send(1);
  assert.equal(env.last().ofType("send").length, 1, "a new connection tries again");
});

test("data over maxClientDataBytes (16 KiB by default) is refused locally with too_large", async () => {
  const env = setup();
  await connectWith(env);
  // JSON text of the data: a string of n characters is n + 2 bytes.
  await assert.rejects(env.client.publish("room:1", "x".repeat(16383)), (err) => err.code === "too_large" && err.sent === false && /16384/.test(err.message));
  await assert.rejects(env.client.send({ s: "\u20ac".repeat(5500) }), (err) => err.code === "too_large", "UTF-8 bytes are counted");
  assert.deepEqual(env.last().sent, []);
  env.client.publish("room:1", "x".repeat(16382));
  assert.equal(env.last().ofType("publish").length, 1);
  const env2 = setup({ client: { maxClientDataBytes: 32768 } });
  await connectWith(env2);
  env2.client.send("x".repeat(30000));
  assert.equal(env2.last().ofType("send").length, 1);
  assert.throws(() => setup({ client: { maxClientDataBytes: 0 } }), RangeError);
});

test("data size is counted as the server writes the data: 1e-6 and 1e21 are shorter there than in JS (never stricter than the server)", async () => {
  const env = setup({ client: { clientRate: 0 } });
  await connectWith(env);
  // The server's own counts (from its too_large messages) for these arrays: it writes
  // 0.000001 as 1e-6, 0.0000012345 as 1.2345e-6, 1e+21 as 1e21, 1.5e+300 as 1.5e300.
  const cases = [[0.000001, 4445, 22226], [0.0000012345, 3077, 30771], [1e21, 6667, 33336], [1.5e300, 4445, 35561],
    [-1e-7, 6667, 40003], [123.456, 5000, 40001]];
  for (const [value, copies, serverBytes] of cases) {
    await assert.rejects(env.client.publish("room:1", Array(copies).fill(value)),
      (err) => err.code === "too_large" && err.message.includes(`data is ${serverBytes} bytes`), String(value));
  }
  // Negative ones too; strings that look like numbers are strings.
  const tiny = setup({ client: { clientRate: 0, maxClientDataBytes: 100 } });
  await connectWith(tiny);
  for (const [value, copies, serverBytes] of [[-0.000001, 100, 601], [-2.5e-6, 100, 801], ["0.000001 e+", 10, 141]]) {
    await assert.rejects(tiny.client.publish("room:1", Array(copies).fill(value)),
      (err) => err.code === "too_large" && err.message.includes(`data is ${serverBytes} bytes`), String(value));
  }
  // What the server takes goes out, though JSON.stringify's text is longer than 16384.
  const small = Array(3276).fill(0.000001);
  assert.ok(JSON.stringify(small).length > 16384);
  env.client.publish("room:1", small);
  env.client.send({ v: Array(3270).fill(1e21) });
  assert.equal(env.last().ofType("publish").length, 1);
  assert.equal(env.last().ofType("send").length, 1);
});

test("refusals the client cannot foresee never reach the server's 11 in a row: a ping goes after 8 unconfirmed messages", async () => {
  const env = setup();
  await connectWith(env);
  const ws = env.last();
  /** The longest run of messages (acks aside) since the last accepted one (pongs accept pings). */
  const longestRun = (accepted) => {
    let run = 0;
    let longest = 0;
    for (const m of ws.sent) {
      if (m.type === "ack") continue;
      run = accepted.has(m.ref) ? 0 : run + 1;
      longest = Math.max(longest, run);
    }
    return longest;
  };
  const accepted = new Set();
  // One at a time, each refused (a topic the token may not publish to) before the next goes.
  // The bucket stays full: the guard's ping goes before the 9th (which goes too) and is taken
  // as accepted (the low-bucket case, where it goes in the request's place and holds, is the
  // next test's).
  for (let i = 0; i < 30; i++) {
    const before = ws.sent.length;
    const p = env.client.publish("room:secret", i);
    if (ws.sent.length === before) assert.fail("nothing went");
    for (const m of ws.sent.slice(before)) {
      if (m.type === "ping") {
        ws.receive({ type: "pong", ref: m.ref });
        accepted.add(m.ref);
      } else {
        ws.receive({ type: "error", code: "forbidden_topic", message: "no", ref: m.ref });
      }
    }
    await assert.rejects(p, (err) => err.code === "forbidden_topic");
    env.clock.ms += 20;
  }
  assert.equal(ws.ofType("ping").length, 3, "a ping before the 9th, 17th and 25th");
  assert.equal(ws.ofType("publish").length, 30);
  assert.ok(longestRun(accepted) <= 8);
  // A burst, before any answer: a ping after every 8 (answered with pongs, as the server does).
  const from = ws.sent.length;
  for (let i = 0; i < 20; i++) env.client.subscribe(`room:${i}`).catch(() => {});
  for (const m of ws.sent.slice(from)) if (m.type === "ping") accepted.add(m.ref);
  assert.ok(longestRun(accepted) <= 8, String(longestRun(accepted)));
  assert.equal(env.events.error.length, 0);
  // Accepted messages reset the count: no pings while answers come back as accepted.
  const env2 = setup();
  await connectWith(env2);
  for (let i = 0; i < 30; i++) {
    const p = env2.client.publish("room:1", i);
    const pub = env2.last().ofType("publish").at(-1);
    env2.last().receive({ type: "published", topic: "room:1", seq: i + 1, ref: pub.ref });
    await p;
    env2.clock.ms += 20;
  }
  assert.equal(env2.last().ofType("ping").length, 0);
});

test("the guard's ping has a ref and costs a token; paced requests wait for its answer, and a refused one is tried again (review s16h F1)", async () => {
  const env = setup({ client: { clientRate: 10 } });
  await connectWith(env);
  const ws = env.last();
  // 8 publishes take 8 tokens and a bit: 1.875 left, under the 2 a paced message needs.
  for (let i = 0; i < 8; i++) env.client.publish("room:1", i).catch(() => {});
  assert.equal(ws.ofType("publish").length, 8);
  await assert.rejects(env.client.publish("room:1", 8), (e) => e.code === "rate_limited");
  assert.equal(ws.ofType("ping").length, 0, "the ping waits for the bucket like a paced request");
  env.clock.ms += 20;
  await assert.rejects(env.client.publish("room:1", 9), (e) => e.code === "rate_limited" && e.sent === false);
  const [ping] = ws.ofType("ping");
  assert.equal(typeof ping?.ref, "number", "the guard's ping has a ref");
  assert.equal(ws.ofType("publish").length, 8, "the ping goes in place of the request: the reserved token stays");
  // Held while the ping is unanswered, however full the bucket: publishes refused, unsubscribes queued.
  env.clock.ms += 2000;
  await assert.rejects(env.client.publish("room:1", 10), (e) => e.code === "rate_limited" && e.retryAfterMs >= 1);
  const unsub = env.client.unsubscribe("room:x");
  assert.equal(ws.ofType("unsubscribe").length, 0);
  // The server saw them bunched: all refused for the rate, the ping too. No error event.
  for (const m of ws.ofType("publish")) ws.receive({ type: "error", code: "rate_limited", message: "slow down", ref: m.ref });
  ws.receive({ type: "error", code: "rate_limited", message: "slow down", ref: ping.ref });
  await flush();
  assert.deepEqual(env.events.error, [], "a refused guard ping is not reported");
  assert.equal(ws.sent.length, 9, "nothing more went: the run is 9");
  // Another ping only after a second's pause; then the held requests go again.
  env.clock.ms += 500;
  await assert.rejects(env.client.publish("room:1", 11), (e) => e.code === "rate_limited" && e.retryAfterMs >= 500);
  assert.equal(ws.sent.length, 9);
  const pausedAt = env.clock.ms;
  for (let i = 0; i < 5 && ws.ofType("ping").length < 2; i++) env.timers.fireSoonest();
  assert.equal(env.clock.ms, pausedAt + 500, "a second after the refusal");
  const second = ws.ofType("ping")[1];
  assert.ok(second, "the queued unsubscribe's turn sent the next ping");
  assert.equal(ws.ofType("unsubscribe").length, 0);
  ws.receive({ type: "pong", ref: second.ref });
  const [u] = ws.ofType("unsubscribe");
  assert.equal(u?.topic, "room:x", "the pong lets the queue go");
  ws.receive({ type: "unsubscribed", topic: "room:x", ref: u.ref });
  await unsub;
  env.client.publish("room:1", 12);
  assert.equal(ws.ofType("publish").length, 9);
  assert.deepEqual(env.events.error, []);
});

test("without pacing (clientRate 0) the guard's ping is taken as accepted: nothing is held", async () => {
  const env = setup({ client: { clientRate: 0 } });
  await connectWith(env);
  for (let i = 0; i < 90; i++) env.client.publish("t", i);
  assert.equal(env.last().ofType("publish").length, 90);
  assert.equal(env.last().ofType("ping").length, 11);
  const [ping] = env.last().ofType("ping");
  env.last().receive({ type: "error", code: "rate_limited", message: "slow down", ref: ping.ref });
  assert.deepEqual(env.events.error, []);
});

test("clientRate must be 0 or at least 1: a smaller bucket could never take a message", async () => {
  for (const clientRate of [0.5, 0.001, -1, NaN, Infinity]) {
    assert.throws(() => setup({ client: { clientRate } }), RangeError, String(clientRate));
  }
  const env = setup({ client: { clientRate: 1 } });
  await connectWith(env);
  env.client.publish("room:1", 1);
  assert.equal(env.last().ofType("publish").length, 1, "a bucket of one token takes a message");
  setup({ client: { clientRate: 0 } });
});

test("a refresh that fails after its connection was replaced is not reported on the new one", async () => {
  let calls = 0;
  let failRefresh;
  const getToken = () => (++calls === 2
    ? new Promise((_, reject) => { failRefresh = reject; })
    : Promise.resolve(`jwt-${calls}`));
  const env = setup({ client: { token: undefined, getToken } });
  await connectWith(env);
  env.last().receive({ type: "token_expiring", in_ms: 50000 });
  await flush(); // the refresh's getToken runs
  env.last().drop(1006);
  env.timers.fire(250); // the backoff (minMs 500, random 0.5)
  await flush();
  env.last().open();
  env.last().receive(welcome());
  assert.equal(env.events.welcome.length, 2);
  failRefresh(new Error("auth backend down"));
  await flush();
  assert.deepEqual(env.events.error.map((e) => e.code), [], "the healthy new connection reports nothing");
});

test("close() during a refresh's getToken leaves no timer behind", async () => {
  let calls = 0;
  const getToken = () => (++calls === 2 ? new Promise(() => {}) : Promise.resolve(`jwt-${calls}`));
  const env = setup({ client: { token: undefined, getToken } });
  await connectWith(env);
  env.last().receive({ type: "token_expiring", in_ms: 50000 });
  await flush();
  assert.deepEqual(env.timers.delays(), [10000], "the refresh's getToken timer");
  env.client.close();
  assert.equal(env.timers.count(), 0, "a Node process can exit at once");
  await flush();
  assert.deepEqual(env.events.error, []);
});

test("an answer that arrived while the event loop was blocked beats its request's timeout and the heartbeat's give-up", async () => {
  // Node runs due timers before the I/O that came meanwhile: the timer fires first, then
  // (one macrotask later) its decision; the answer comes in between.
  const env = setup({ client: { heartbeat: { intervalMs: 3000, timeoutMs: 1000 } } });
  await connectWith(env);
  const ws = env.last();
  const published = env.client.publish("room:1", 1);
  const [pub] = ws.ofType("publish");
  env.clock.ms += 10000;
  env.timers.fireHeld(10000);
  ws.receive({ type: "published", topic: "room:1", seq: 1, ref: pub.ref });
  assert.equal((await published).seq, 1, "answered, not timed out");
  // Without an answer the timeout still comes, one turn later.
  const lost = env.client.publish("room:1", 2);
  env.timers.fire(10000);
  await assert.rejects(lost, (err) => err.code === "timeout" && err.sent === true);
  // The heartbeat: its ping, then the timeout's tick, then the pong that was waiting.
  env.timers.fire(3000);
  assert.equal(ws.ofType("ping").length, 1);
  env.timers.fireHeld(1000);
  ws.receive({ type: "pong" });
  assert.deepEqual(env.timers.delays().filter((ms) => ms === 0), [], "the give-up was called off");
  assert.deepEqual(ws.closeCalls, []);
  assert.deepEqual(env.events.error, []);
  assert.equal(env.events.state.at(-1), "connected");
});

test("the welcome's client_rate, max_message_size and max_client_data_bytes win over the options; without them the options stand", async () => {
  const env = setup();
  await connectWith(env, welcome({ client_rate: 2, max_message_size: 200, max_client_data_bytes: 50 }));
  const ws = env.last();
  env.client.publish("t", 1).catch(() => {});
  await assert.rejects(env.client.publish("t", 2),
    (err) => err.code === "rate_limited" && err.sent === false && err.message.includes("client_rate (2 messages a second)"));
  env.clock.ms += 5000;
  await assert.rejects(env.client.publish("t", "x".repeat(60)),
    (err) => err.code === "too_large" && err.message.includes("at most 50 (max_client_data_bytes)"));
  await assert.rejects(env.client.subscribe("t".repeat(190)),
    (err) => err.code === "too_large" && err.message.includes("at most 200 (max_message_size)"));
  assert.equal(ws.ofType("publish").length, 1);

  // A welcome that does not say (an older server), or says nonsense: the options.
  for (const said of [{}, { client_rate: -1, max_message_size: 0, max_client_data_bytes: "9" }, { client_rate: 1.5 }]) {
    env.clock.ms += 20000;
    await reconnectWith(env, welcome(said));
    for (let i = 0; i < 5; i++) env.client.publish("t", "x".repeat(1000)).catch(() => {});
    assert.equal(env.last().ofType("publish").length, 5, JSON.stringify(said));
  }
  // client_rate 0: the server does not limit, so the client does not pace.
  env.clock.ms += 20000;
  await reconnectWith(env, welcome({ client_rate: 0 }));
  for (let i = 0; i < 300; i++) env.client.publish("t", i).catch(() => {});
  assert.equal(env.last().ofType("publish").length, 300);
  // The welcome wins over clientRate: 0 too (the server would refuse the excess).
  const off = setup({ client: { clientRate: 0 } });
  await connectWith(off, welcome({ client_rate: 4 })); // 4 tokens, 2 kept: two go
  for (let i = 0; i < 5; i++) off.client.publish("t", i).catch(() => {});
  assert.equal(off.last().ofType("publish").length, 2);
});

test("after a server rate_limited the guard's ping is held for its answer, not taken as accepted, until a pong (review s16j F1)", async () => {
  const env = setup();
  await connectWith(env);
  const ws = env.last();
  const burst = async (n) => {
    const results = [];
    for (let i = 0; i < n; i++) results.push(env.client.publish("t", i).then(() => "ok", (err) => err.code));
    return results;
  };
  // Before any refusal: 8 unanswered, then a ping taken as accepted goes with the 9th.
  await burst(9);
  assert.equal(ws.ofType("publish").length, 9);
  assert.equal(ws.ofType("ping").length, 1);
  for (const m of ws.sent.filter((m) => m.ref !== undefined && !m.answered)) {
    m.answered = true;
    ws.receive(m.type === "ping" ? { type: "pong", ref: m.ref } : { type: "published", topic: "t", seq: 1, ref: m.ref });
  }
  await flush();
  // One message reached the server bunched and was refused for the rate.
  env.client.publish("t", "r").catch(() => {});
  const refusedOne = ws.ofType("publish").at(-1);
  ws.receive({ type: "error", code: "rate_limited", message: "slow down", ref: refusedOne.ref });
  await flush();
  env.clock.ms += 2000; // the copy's bucket is full again
  const results = await burst(9);
  // 8 go (the refused one and 7 more are unconfirmed), then the ping goes in place of the
  // 9th and holds: the copy's word is no longer enough.
  assert.equal(ws.ofType("publish").length, 10 + 8 - 1);
  assert.equal(ws.ofType("ping").length, 2);
  await flush();
  const held = await Promise.race([results.at(-1), flush().then(() => "pending")]);
  assert.equal(held, "rate_limited");
  const ping = ws.ofType("ping")[1];
  // Its hint: a round trip (the last one took 0 ms here: at least MIN_GUARD_HINT_MS), and
  // once that has passed, another round trip, never 1 ms.
  env.clock.ms += 500;
  await assert.rejects(env.client.publish("t", "h"), (err) => err.code === "rate_limited" && err.retryAfterMs >= 10);
  ws.receive({ type: "pong", ref: ping.ref });
  await flush();
  // The pong: the server's count was reset; pings are taken as accepted again.
  for (const m of ws.sent.filter((m) => m.ref !== undefined && !m.answered && m.type === "publish")) {
    m.answered = true;
    ws.receive({ type: "published", topic: "t", seq: 1, ref: m.ref });
  }
  env.clock.ms += 2000;
  const before = ws.ofType("publish").length;
  await burst(9);
  assert.equal(ws.ofType("publish").length, before + 9);
  assert.equal(ws.ofType("ping").length, 3);
});

test("the browser's online event ends a grown backoff: the next attempt goes within minMs; not after close()", async () => {
  const online = new EventTarget();
  const env = setup({ client: { onlineEvents: online, backoff: { minMs: 100, maxMs: 30000 } } });
  env.randoms.push(...Array(8).fill(0.999999));
  env.client.connect().catch(() => {});
  await flush();
  for (let n = 0; n < 8; n++) {
    env.last().fail();
    if (n < 7) env.timers.fireNext();
    await flush();
  }
  assert.deepEqual(env.timers.delays().map(Math.round), [12800], "offline a while: the backoff has grown");
  env.randoms.push(0.5);
  online.dispatchEvent(new Event("online"));
  assert.deepEqual(env.timers.delays(), [50], "within the first step, jittered");
  env.timers.fireNext();
  await flush();
  // That attempt fails too: the backoff goes on from where it was, not from the start.
  env.randoms.push(0.999999);
  env.last().fail();
  await flush();
  assert.deepEqual(env.timers.delays().map(Math.round), [25600]);
  env.randoms.push(0.5);
  online.dispatchEvent(new Event("online"));
  env.timers.fireNext();
  await flush();
  env.last().open();
  env.last().receive(welcome());
  assert.equal(env.events.state.at(-1), "connected");
  // Connected: nothing waits, so the event does nothing.
  online.dispatchEvent(new Event("online"));
  assert.equal(env.timers.count(), 0);
  const sockets = env.sockets.length;
  env.client.close();
  online.dispatchEvent(new Event("online"));
  await flush();
  assert.equal(env.sockets.length, sockets);
  assert.equal(env.timers.count(), 0);
  // Off: the backoff stands.
  const off = setup({ client: { onlineEvents: false, backoff: { minMs: 100, maxMs: 30000 } } });
  off.randoms.push(0.999999, 0.999999);
  off.client.connect().catch(() => {});
  await flush();
  off.last().fail();
  off.timers.fireNext();
  await flush();
  off.last().fail();
  globalThis.dispatchEvent?.(new Event("online"));
  assert.deepEqual(off.timers.delays().map(Math.round), [200]);
});
