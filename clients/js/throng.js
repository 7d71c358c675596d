// Throng browser client: one WebSocket to a Throng server, kept open across drops, with the
// user stream and topic streams resumed (since/epoch) and deduplicated by seq.
// The wire contract is docs/protocol.md; section numbers below refer to it.
// Dependency-free ES module: runs in browsers as is, and in Node given a WebSocket constructor.

const CONNECTING = 0;
const OPEN = 1;

/** The epoch `subscribed` shows for a topic that has no numbered push yet (section 2.1). */
const PLACEHOLDER_EPOCH = "0000000000000000";

const EVENT_NAMES = new Set(["push", "state", "resumed", "gap", "error", "welcome"]);

// Codes below 3000 after which the server asks not to reconnect on our own (section 3.2):
// 1000 is a deliberate disconnect by the upstream (our own 1000 never gets here), the others
// mean this client has a bug that a new connection would only repeat.
const STOP_CODES = new Set([1000, 1002, 1003, 1007, 1008, 1009]);

// Subscribe errors worth trying again later; any other refusal (forbidden_topic, bad_topic,
// too_many_topics, ...) would be refused again, so the topic is forgotten.
/** After rate_limited, the least wait before trying again: the server's bucket refills
 * at client_rate per second, so a second brings a token back (a large message's text can
 * leave a debt of up to a bucket first: then two seconds). */
const RATE_LIMIT_PAUSE_MS = 1000;
/** The least retryAfterMs while the guard's ping is unanswered: no app polls faster than this. */
const MIN_GUARD_HINT_MS = 10;
const TRANSIENT_ERRORS = new Set(["rate_limited", "overloaded", "broker_unavailable", "draining"]);

/** How long a request waits for its answer by default (requestTimeoutMs). */
const DEFAULT_REQUEST_TIMEOUT_MS = 10000;
/** How long an attempt (getToken, upgrade, welcome) may take by default (connectTimeoutMs). */
const DEFAULT_CONNECT_TIMEOUT_MS = 15000;
/**
 * The client pings after this share of the server's ping_interval_ms without sending (or
 * without hearing): its message reaches the server before the server's own Ping falls due.
 */
const HEARTBEAT_SHARE = 0.8;
/** The server's default ping_interval_ms, for a welcome that does not say. */
const DEFAULT_SERVER_PING_MS = 25000;
/** How long the client waits for anything at all after its ping, at most (heartbeat.timeoutMs). */
const DEFAULT_HEARTBEAT_TIMEOUT_MS = 10000;
/** ... and at least, whatever the server's ping_interval_ms: a slow link's round trip. */
const MIN_HEARTBEAT_TIMEOUT_MS = 2000;
/** The server's default max_message_size: a longer message closes the connection with 1009. */
const DEFAULT_MAX_MESSAGE_BYTES = 65536;
/** The server's default max_client_data_bytes: a publish or send with longer data is refused. */
const DEFAULT_MAX_CLIENT_DATA_BYTES = 16384;
/** The longest topic name the server takes, in bytes (protocol.md 2.3). */
const MAX_TOPIC_BYTES = 200;
/**
 * The server closes a connection with 1008 at the 11th refused message in a row (protocol.md
 * 2.2). At most this many messages go out after the last one known (or taken) to have been
 * accepted; then the client sends a ping, whose acceptance resets the server's count. While
 * the bucket has room for it the ping is taken as accepted; when it is low, paced requests
 * are held until the ping is answered (see #guardWait).
 */
const REFUSAL_GUARD = 8;
/** The server refills its buckets once a tick (src/reactor.rs TICK_MS), in ms. */
const SERVER_TICK_MS = 10;
/** The server refuses client messages nested deeper than this, without their ref. */
const MAX_DEPTH = 32;
/** The server's default client_rate: messages per second, and the bucket's size. */
const DEFAULT_CLIENT_RATE = 100;
/** The server charges a token per this many bytes of message text, on top of the message's token. */
const BYTES_PER_TOKEN = 16 * 1024;
/** ... and at least this many bytes per message. */
const MIN_CHARGE_BYTES = 256;
/**
 * Requests that wait for a spare token in the rate bucket (see #spend): publish, send and
 * subscribe are refused locally without one; unsubscribes wait in a queue instead.
 */
const PACED_REQUESTS = new Set(["publish", "send", "subscribe", "unsubscribe"]);
/** A failed token refresh is tried again while at least twice this is left before the 4001 close. */
const MIN_REFRESH_RETRY_MS = 1000;
/** The close code the client uses to end a connection it gave up on (stalled, too slow to open). */
const CLIENT_GAVE_UP = 4000;

/**
 * Whether a close with `code` should be followed by a reconnect (section 3.2).
 * @param {number} code the close code
 * @param {boolean} canRenewToken whether a `getToken` can supply a fresh token
 * @returns {boolean}
 */
function shouldReconnect(code, canRenewToken) {
  if (code === 4001) return canRenewToken; // the same token would be refused again
  if (code === 4002 || code === 4008) return true; // heartbeat timeout, slow consumer
  // 4003, 4009 and any other code the upstream chose with /v1/disconnect are deliberate.
  if (code >= 3000) return false;
  // 1001 drain, 1005/1006 lost connection or failed upgrade, 1011-1015, unknown ones.
  return !STOP_CODES.has(code);
}

/**
 * Full jitter: a uniform delay in [0, min(maxMs, minMs * 2^attempt)).
 * @param {number} attempt reconnects since the last connection that lasted
 * @param {{minMs: number, maxMs: number}} backoff
 * @param {() => number} random
 * @returns {number} milliseconds
 */
function backoffDelay(attempt, { minMs, maxMs }, random) {
  return random() * Math.min(maxMs, minMs * 2 ** attempt);
}

/**
 * The heartbeat's timing for one connection; what the application set wins.
 * - intervalMs: 0.8 x the welcome's ping_interval_ms (25000 when it has none). The client's
 *   ping then reaches the server before the server's own Ping falls due, so a healthy idle
 *   connection costs the server one round trip per cycle, not two.
 * - timeoutMs: the welcome's ping_interval_ms, within 2000 ..= 10000 (10000 when it has
 *   none). A server that pings often asks for dead connections to be found quickly, and
 *   one ping interval is how long it lets a silent path go unnoticed; the 2 s floor keeps a
 *   slow link's round trip from passing for a stall. idle_timeout_ms plays no part: it
 *   counts the server's silence from the client, which the client's own pings keep
 *   resetting on a live connection, and on a dead one its 4002 never arrives anyway.
 * @param {{intervalMs?: number, timeoutMs?: number}} given
 * @param {object} welcome
 * @returns {{intervalMs: number, timeoutMs: number}}
 */
function heartbeatTiming(given, welcome) {
  const positive = (ms) => typeof ms === "number" && ms > 0 && Number.isFinite(ms);
  const ping = positive(welcome?.ping_interval_ms) ? welcome.ping_interval_ms : null;
  const intervalMs = given.intervalMs ?? Math.floor(HEARTBEAT_SHARE * (ping ?? DEFAULT_SERVER_PING_MS));
  const timeoutMs = given.timeoutMs ?? (ping === null
    ? DEFAULT_HEARTBEAT_TIMEOUT_MS
    : Math.min(DEFAULT_HEARTBEAT_TIMEOUT_MS, Math.max(MIN_HEARTBEAT_TIMEOUT_MS, ping)));
  return { intervalMs: Math.max(1, intervalMs), timeoutMs };
}

/**
 * An Error with the client's `code` (and any extra fields such as `closeCode` or `topic`).
 * @param {string} code
 * @param {string} message
 * @param {object} [extra]
 * @returns {Error & {code: string}}
 */
function throngError(code, message, extra = {}) {
  return Object.assign(new Error(message), { code }, extra);
}

/** Reports a listener's exception without letting it break message handling. */
function reportListenerError(err) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(err);
  else queueMicrotask(() => { throw err; });
}

/**
 * How a subscribe may resume a topic stream known from an earlier connection:
 * "resume" sends since/epoch; "unknown" means the stream had no push yet when we left (only
 * the placeholder epoch is known, which never resumes), so the answer's seq tells whether
 * pushes were missed; "fresh" is a first subscription.
 * @param {{seq: number|null, epoch: string|null}} entry
 * @returns {"resume"|"unknown"|"fresh"}
 */
function resumeMode(entry) {
  if (entry.seq === null || entry.epoch === null) return "fresh";
  return entry.epoch === PLACEHOLDER_EPOCH ? "unknown" : "resume";
}

/**
 * The `resumed`/`gap` outcome of a `subscribed` answer, or null when there is none to report.
 * @param {{resumed?: boolean, seq: number}} answer
 * @param {"resume"|"unknown"|"fresh"} mode how the subscribe was sent
 * @returns {"resumed"|"gap"|null}
 */
function subscribeOutcome(answer, mode) {
  if (answer.resumed === true) return "resumed";
  if (answer.resumed === false) return "gap";
  if (mode === "unknown") return answer.seq > 0 ? "gap" : "resumed";
  return null;
}

/**
 * A Throng client connection: connects, reconnects with backoff, resumes and deduplicates
 * streams, matches answers to requests and acknowledges user-stream pushes.
 */
export class ThrongClient {
  #url;
  #token;
  #getToken;
  #WebSocket;
  #backoff;
  #ackPushes;
  #random;
  #now;
  #setTimeout;
  #clearTimeout;
  #requestTimeoutMs;
  /** The options clientRate, maxMessageBytes and maxClientDataBytes: for a server whose welcome does not say. */
  #configured;
  /** The server's max_message_size on this connection (its welcome's, or the option). */
  #maxMessageBytes;
  /** The server's max_client_data_bytes on this connection (its welcome's, or the option). */
  #maxClientDataBytes;
  /** client_rate as the client paces itself on this connection (its welcome's, or the option; 0: no pacing). */
  #clientRate;
  /** The server's token bucket for this connection as the client reckons it: thousandths of a token as of `at`. */
  #bucket = { milli: 0, at: 0 };
  #connectTimeoutMs;
  /** Where the browser's `online` events come from (its window), or null. */
  #onlineEvents;
  /** The `online` listener while the client runs (removed by close() and a stop). */
  #onOnline = null;
  /** The application's {intervalMs, timeoutMs} (either may be undefined: derived), or null when off. */
  #heartbeat;

  /** @type {Map<string, Set<Function>>} */
  #listeners = new Map();
  #state = "disconnected";
  /** Whether the client wants to be connected: between connect() and close() or a fatal close. */
  #running = false;
  /** Bumped by every attempt and by close(), so a late getToken() result is dropped. */
  #generation = 0;
  #ws = null;
  #opened = false;
  /** The current socket's error text, where the WebSocket gives one (the `ws` package does). */
  #socketError = "";
  /** The current connection's welcome; null until it arrives, so also "is connected". */
  #welcome = null;
  /** Reconnect attempts since the last connection that lasted backoff.resetAfterMs. */
  #attempt = 0;
  /** When the current connection's welcome came (now()). */
  #welcomeAt = 0;
  #retryTimer = null;
  /** Ends an attempt that has no welcome after connectTimeoutMs. */
  #attemptTimer = null;
  /** Whether the current attempt still waits for getToken. */
  #awaitingToken = false;
  /** The current connection's heartbeat timing {intervalMs, timeoutMs} (see heartbeatTiming). */
  #hb = null;
  /** When the client last sent something on the current socket (now()); the upgrade counts. */
  #sentAt = 0;
  /** When something last arrived on the current connection (now()). */
  #heardAt = 0;
  /** When the heartbeat's ping went out, while it waits for anything to arrive; else null. */
  #pingedAt = null;
  /** The heartbeat's give-up waits one more turn of the event loop (see #heartbeatTick). */
  #giveUpDeferred = false;
  #heartbeatTimer = null;
  /** Set while subscribe() sends: its request is the app's, not a re-subscribe. */
  #explicit = false;
  /** The server's drain hint: {timer, due}; due is set when the close came before its time. */
  #hint = null;

  /** The user stream's position; epoch null until the first welcome. */
  #user = { seq: 0, epoch: null };
  /** Wanted topics and their stream positions: topic -> {seq, epoch, live}. */
  #topics = new Map();
  /** subscribe() promises waiting for a connection: topic -> [{resolve, reject}]. */
  #waiters = new Map();
  /** Requests sent on the current connection: ref -> {resolve, reject, type, timer, topic, mode}. */
  #pending = new Map();
  /** Pauses between re-subscribe tries: {timer, resolve}; ended with their connection. */
  #pauses = new Set();
  #connectWaiters = [];
  #nextRef = 1;
  #ackSeq = 0;
  #ackQueued = false;
  /** Token refreshes on the current connection (see #onTokenExpiring). */
  #refresh = newRefreshState();
  /** Messages (acks aside) sent on the current connection. */
  #sentCount = 0;
  /**
   * The number (in #sentCount) of the last message known to have reset the server's count
   * of refusals in a row: one answered with anything but an error, or the heartbeat's ping
   * (taken as accepted: it goes after a quiet interval, when the bucket is full). Every
   * message after it may yet be refused.
   */
  #resetAt = 0;
  /**
   * The refusal guard's ping (see #guardWait): null, or {ref, sentAt, retryAt, refusals}
   * while it waits for its answer (ref set) or after it was refused or timed out (ref
   * null: another goes at retryAt).
   */
  #guard = null;
  /** Refs of guard pings that timed out: a late answer is dropped, not reported. */
  #guardLate = new Set();
  /** The last round trip of a request on this connection (ms): a hint for retryAfterMs. */
  #rtt = 50;
  /** The number (in #sentCount) of the last message answered as accepted. */
  #confirmedAt = 0;
  /**
   * The server refused a message for the rate on this connection: its bucket was emptier
   * than the copy, so the guard's ping is no longer taken as accepted on the copy's word,
   * until a ping sent as a guard (held for its answer) is answered with a pong.
   */
  #rateDoubt = false;
  /** Thousandths of a token charged to the bucket on this connection, all told (see #guardRoom). */
  #spent = 0;
  /**
   * The latest message whose answer came (see #guardRoom): its number, #guardRoom and
   * #spent right after it went, and when its answer came (at).
   */
  #anchor = { index: 0, milli: 0, spent: 0, at: 0 };
  /** The server answered a send with `unavailable` on this connection (no upstream for sends). */
  #sendUnavailable = false;
  /**
   * Unsubscribes waiting for the rate bucket on the current connection, in call order:
   * {topic, resolve, reject} (no-ops for the client's own). Never refused for the rate: the
   * topic is gone locally, and the server must hear of it.
   */
  #unsubscribes = [];
  /** Sends the queued unsubscribes when the bucket has a token again. */
  #unsubscribeTimer = null;
  /** After the server refused an unsubscribe for the rate, none goes before this (now()). */
  #unsubscribePauseUntil = 0;

  /**
   * @param {string} url the client endpoint, e.g. "wss://push.example.com/ws"
   * @param {import("./throng.js").ThrongClientOptions} options see throng.d.ts
   */
  constructor(url, options = {}) {
    this.#url = new URL(url).toString(); // a bad URL is a programming error: fail now
    if (typeof options.getToken !== "function" && typeof options.token !== "string") {
      throw new TypeError("ThrongClient needs options.token or options.getToken");
    }
    this.#token = options.token;
    this.#getToken = typeof options.getToken === "function" ? options.getToken : null;
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError("no WebSocket constructor: pass options.WebSocket");
    }
    const { minMs = 500, maxMs = 30000, resetAfterMs = 10000 } = options.backoff ?? {};
    if (!(minMs > 0) || !(maxMs >= minMs) || !(resetAfterMs >= 0)) {
      throw new RangeError("backoff needs 0 < minMs <= maxMs and resetAfterMs >= 0");
    }
    this.#backoff = { minMs, maxMs, resetAfterMs };
    this.#ackPushes = options.ackPushes ?? true;
    this.#random = options.random ?? Math.random;
    // Monotonic where there is one: only durations are measured, and a wall clock set back
    // would hold the heartbeat (it times from timestamps) back by as much.
    this.#now = options.now ?? (typeof globalThis.performance?.now === "function"
      ? () => globalThis.performance.now()
      : () => Date.now());
    // Wrapped because browsers refuse a setTimeout called on another `this`.
    this.#setTimeout = options.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms));
    this.#clearTimeout = options.clearTimeout ?? ((id) => globalThis.clearTimeout(id));
    const { requestTimeoutMs = DEFAULT_REQUEST_TIMEOUT_MS } = options;
    if (!(requestTimeoutMs > 0) || !Number.isFinite(requestTimeoutMs)) {
      throw new RangeError("requestTimeoutMs must be a positive number of milliseconds");
    }
    this.#requestTimeoutMs = requestTimeoutMs;
    const { maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES } = options;
    if (!(maxMessageBytes > 0)) throw new RangeError("maxMessageBytes must be positive");
    this.#maxMessageBytes = maxMessageBytes;
    const { maxClientDataBytes = DEFAULT_MAX_CLIENT_DATA_BYTES } = options;
    if (!(maxClientDataBytes > 0)) throw new RangeError("maxClientDataBytes must be positive");
    this.#maxClientDataBytes = maxClientDataBytes;
    const { clientRate = DEFAULT_CLIENT_RATE } = options;
    // A bucket under one token could never take a message: everything would be refused.
    if (!(clientRate === 0 || clientRate >= 1) || !Number.isFinite(clientRate)) {
      throw new RangeError("clientRate must be 0 (no pacing) or at least 1 (messages a second)");
    }
    this.#clientRate = clientRate;
    this.#configured = { clientRate, maxMessageBytes, maxClientDataBytes };
    const { connectTimeoutMs = DEFAULT_CONNECT_TIMEOUT_MS } = options;
    if (!(connectTimeoutMs > 0) || !Number.isFinite(connectTimeoutMs)) {
      throw new RangeError("connectTimeoutMs must be a positive number of milliseconds");
    }
    this.#connectTimeoutMs = connectTimeoutMs;
    const onlineEvents = options.onlineEvents ?? globalThis;
    this.#onlineEvents = onlineEvents !== false && typeof onlineEvents?.addEventListener === "function" ? onlineEvents : null;
    if (options.heartbeat === false) {
      this.#heartbeat = null;
    } else {
      const { intervalMs, timeoutMs } = typeof options.heartbeat === "object" && options.heartbeat !== null
        ? options.heartbeat
        : {};
      const valid = (ms) => ms === undefined || (ms > 0 && Number.isFinite(ms));
      if (!valid(intervalMs) || !valid(timeoutMs)) {
        throw new RangeError("heartbeat needs intervalMs > 0 and timeoutMs > 0 where given (or heartbeat: false)");
      }
      this.#heartbeat = { intervalMs, timeoutMs };
    }
  }

  /**
   * Starts connecting (if not already) and resolves with the next `welcome`, or the current
   * one when connected. Failed attempts are retried with backoff, so the promise waits for
   * the first success; it is rejected (code "closed") by close() or a close code after which
   * the client stops.
   * @returns {Promise<object>} the welcome message
   */
  connect() {
    const welcome = new Promise((resolve, reject) => {
      if (this.#welcome) resolve(this.#welcome);
      else this.#connectWaiters.push({ resolve, reject });
    });
    if (!this.#running) {
      this.#running = true;
      this.#attempt = 0;
      this.#listenOnline(true);
      this.#open();
    }
    return welcome;
  }

  /**
   * Closes the connection with 1000 and stops reconnecting. Requests in flight are rejected
   * with code "disconnected"; waiting connect() and subscribe() promises with "closed".
   * Stream positions and subscriptions are kept, so a later connect() resumes them.
   */
  close() {
    this.#running = false;
    this.#listenOnline(false);
    this.#generation += 1;
    this.#cancelTimers();
    const ws = this.#ws;
    if (ws) {
      this.#forgetSocket();
      if (ws.readyState === CONNECTING || ws.readyState === OPEN) ws.close(1000);
    }
    this.#rejectWaiting(throngError("closed", "the client was closed"));
    this.#setState("disconnected");
  }

  /**
   * Subscribes to a topic, now or as soon as the client is connected, and keeps it
   * subscribed across reconnects (resuming it with since/epoch).
   * @param {string} topic
   * @returns {Promise<object>} the `subscribed` answer
   */
  subscribe(topic) {
    checkTopic(topic);
    const bad = badTopic(topic);
    if (bad) return Promise.reject(bad);
    const entry = this.#topics.get(topic);
    if (!entry) this.#topics.set(topic, { seq: null, epoch: null, live: false });
    if (this.#welcome) {
      this.#explicit = true;
      try {
        return this.#sendSubscribe(topic);
      } finally {
        this.#explicit = false;
      }
    }
    return new Promise((resolve, reject) => {
      const list = this.#waiters.get(topic) ?? [];
      list.push({ resolve, reject });
      this.#waiters.set(topic, list);
    });
  }

  /**
   * Leaves a topic; its pushes are dropped from now on. When not connected there is no
   * server subscription to end, so the answer is made up locally. Unsubscribes are paced
   * like other requests, but never refused for the rate: one the bucket has no token for
   * waits in a queue (as does one the server refuses for the rate), so a burst of them
   * neither ends in a 1008 close nor leaves subscriptions on the server.
   * @param {string} topic
   * @returns {Promise<object>} the `unsubscribed` answer
   */
  unsubscribe(topic) {
    checkTopic(topic);
    const bad = badTopic(topic);
    if (bad) return Promise.reject(bad); // never subscribed: subscribe() refuses it too
    this.#topics.delete(topic);
    this.#rejectWaiters(topic, throngError("cancelled", `unsubscribe(${topic}) was called`));
    if (!this.#welcome) return Promise.resolve({ type: "unsubscribed", topic });
    return new Promise((resolve, reject) => this.#queueUnsubscribe(topic, resolve, reject));
  }

  /**
   * Publishes `data` to a topic's subscribers (needs the token's `publish` grant).
   * @param {string} topic
   * @param {*} data any JSON value
   * @returns {Promise<object>} the `published` answer
   */
  publish(topic, data) {
    checkTopic(topic);
    const bad = badTopic(topic);
    if (bad) return Promise.reject(bad);
    return this.#request({ type: "publish", topic, data: data ?? null });
  }

  /**
   * Sends `data` to the upstream (not to clients).
   * @param {*} data any JSON value
   * @returns {Promise<object>} the `sent` answer
   */
  send(data) {
    if (this.#sendUnavailable && this.#welcome) {
      // This one would be refused like the last (the server has no upstream for sends):
      // answered here, without a round trip.
      return Promise.reject(throngError("unavailable",
        "the server takes no send on this connection (it answered unavailable: no events_url); not sent",
        { sent: false }));
    }
    return this.#request({ type: "send", data: data ?? null });
  }

  /**
   * Adds a listener for "push", "state", "resumed", "gap", "error" or "welcome".
   * @param {string} name
   * @param {Function} fn
   * @returns {() => void} removes the listener
   */
  on(name, fn) {
    if (!EVENT_NAMES.has(name)) throw new TypeError(`unknown event "${name}"`);
    if (typeof fn !== "function") throw new TypeError("listener must be a function");
    const set = this.#listeners.get(name) ?? new Set();
    set.add(fn);
    this.#listeners.set(name, set);
    return () => {
      set.delete(fn);
    };
  }

  // ---- connection life cycle ----

  async #open() {
    this.#retryTimer = null;
    const generation = ++this.#generation;
    this.#setState("connecting");
    this.#clearAttemptTimer();
    this.#attemptTimer = this.#setTimeout(() => this.#attemptTimedOut(generation), this.#connectTimeoutMs);
    let token;
    this.#awaitingToken = true;
    try {
      token = await this.#currentToken();
    } catch (err) {
      if (generation !== this.#generation) return;
      this.#awaitingToken = false;
      this.#emitError(err);
      this.#retry();
      return;
    }
    if (generation !== this.#generation) return; // close() or another attempt took over
    this.#awaitingToken = false;
    this.#startSocket(this.#buildUrl(token));
  }

  /**
   * An attempt without a welcome after connectTimeoutMs: a getToken that never settles, an
   * upgrade that hangs (a black-holed network, a proxy that accepts and forwards nothing),
   * or a server that never sends welcome. Browsers wait minutes, or for ever, on their own.
   */
  #attemptTimedOut(generation) {
    this.#attemptTimer = null;
    if (generation !== this.#generation || this.#welcome || !this.#running) return;
    this.#generation += 1; // a getToken that answers late is dropped
    const ws = this.#ws;
    const stage = this.#awaitingToken ? "getToken did not answer"
      : this.#opened ? "no welcome came" : "the connection did not open";
    const code = this.#awaitingToken ? "token_failed" : "connect_failed";
    this.#awaitingToken = false;
    this.#forgetSocket();
    if (ws) giveUpSocket(ws, "no welcome in time");
    this.#setState("disconnected");
    this.#emitError(throngError(code, `connection attempt timed out after ${this.#connectTimeoutMs} ms: ${stage}`));
    this.#retry();
  }

  #clearAttemptTimer() {
    if (this.#attemptTimer !== null) this.#clearTimeout(this.#attemptTimer);
    this.#attemptTimer = null;
  }

  /** The fixed token, or a fresh one from getToken; fails with code "token_failed". */
  async #currentToken() {
    if (!this.#getToken) return this.#token;
    let token;
    try {
      token = await this.#getToken();
    } catch (err) {
      throw throngError("token_failed", `getToken failed: ${err?.message ?? err}`, { cause: err });
    }
    if (typeof token !== "string" || token === "") throw throngError("token_failed", "getToken gave no token");
    return token;
  }

  #startSocket(url) {
    let ws;
    try {
      ws = new this.#WebSocket(url);
    } catch (err) {
      this.#emitError(throngError("connect_failed", String(err?.message ?? err), { cause: err }));
      this.#retry();
      return;
    }
    this.#ws = ws;
    this.#opened = false;
    this.#socketError = "";
    this.#sentAt = this.#now(); // the upgrade request: the server's silence clock starts there
    ws.onopen = () => { if (ws === this.#ws) this.#opened = true; };
    ws.onmessage = (event) => {
      if (ws !== this.#ws) return;
      this.#heardAt = this.#now();
      if (this.#pingedAt !== null) this.#pingAnswered();
      this.#onText(event.data);
    };
    ws.onerror = (event) => { if (ws === this.#ws) this.#onSocketError(event); };
    ws.onclose = (event) => { if (ws === this.#ws) this.#onClose(event.code, event.reason); };
  }

  /**
   * After an error, browsers and the `ws` package fire `close`, which carries what we act on.
   * Node 20's experimental WebSocket fires no `close` when the connection cannot be opened,
   * so an error before `open` ends the attempt here; the late `close`, if any, is ignored.
   */
  #onSocketError(event) {
    this.#socketError = event?.message ?? "";
    if (!this.#opened) this.#onClose(1006, "");
  }

  /** The upgrade URL: the token (browsers cannot set headers) and the user stream's position. */
  #buildUrl(token) {
    const url = new URL(this.#url);
    url.searchParams.set("token", token);
    if (this.#user.epoch !== null) {
      url.searchParams.set("since", String(this.#user.seq));
      url.searchParams.set("epoch", this.#user.epoch);
    } else {
      url.searchParams.delete("since");
      url.searchParams.delete("epoch");
    }
    return url.toString();
  }

  #onClose(code, reason) {
    const opened = this.#opened;
    const detail = this.#socketError;
    this.#forgetSocket();
    this.#setState("disconnected");
    if (!opened) {
      // A refused upgrade (401, 429, 503 ...) looks like this: browsers hide the status.
      const message = `the connection could not be opened${detail ? `: ${detail}` : ""}`;
      this.#emitError(throngError("connect_failed", message, { closeCode: code }));
    }
    if (!this.#running) return;
    if (!shouldReconnect(code, this.#getToken !== null)) {
      this.#stop(throngError("closed", `closed by the server: ${code} ${reason ?? ""}`.trim(), {
        closeCode: code,
        reason,
      }));
      return;
    }
    if (this.#hint) this.#hint.due = true; // reconnect when the drain hint says, not before
    else this.#retry();
  }

  /** Drops the current socket and everything that belonged to its connection. */
  #forgetSocket() {
    const ws = this.#ws;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.onerror = () => {}; // keep one: the `ws` package throws on an unheard error
    }
    // Only a connection that lasted ends the backoff: one the server accepts and then closes
    // at once (4008 on a replay, 1013, a crashing node) would otherwise be retried within
    // minMs forever, by every client at the same time.
    if (this.#welcome && this.#now() - this.#welcomeAt >= this.#backoff.resetAfterMs) this.#attempt = 0;
    this.#ws = null;
    this.#opened = false;
    this.#welcome = null;
    this.#ackSeq = 0;
    this.#sendUnavailable = false; // the next connection may reach a server that has one
    this.#guard = null;
    this.#guardLate.clear();
    this.#clearAttemptTimer();
    if (this.#heartbeatTimer !== null) this.#clearTimeout(this.#heartbeatTimer);
    this.#heartbeatTimer = null;
    this.#pingedAt = null;
    this.#hb = null;
    if (this.#refresh.timer !== null) this.#clearTimeout(this.#refresh.timer);
    this.#refresh.cancel?.(); // a getToken still running: its timer goes too
    this.#refresh = newRefreshState();
    // Queued unsubscribes are done: the subscriptions ended with the connection.
    if (this.#unsubscribeTimer !== null) this.#clearTimeout(this.#unsubscribeTimer);
    this.#unsubscribeTimer = null;
    this.#unsubscribePauseUntil = 0;
    const unsubscribes = this.#unsubscribes;
    this.#unsubscribes = [];
    for (const item of unsubscribes) item.resolve({ type: "unsubscribed", topic: item.topic });
    for (const entry of this.#topics.values()) entry.live = false;
    const pauses = [...this.#pauses];
    this.#pauses.clear();
    for (const pause of pauses) {
      this.#clearTimeout(pause.timer);
      pause.resolve();
    }
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    // Never sent again on the next connection: a publish or send has no id the server
    // could drop a repeat by, so the app decides (`sent` says it may have been carried out).
    const err = throngError("disconnected",
      "the connection dropped before the answer came; the request may or may not have been carried out",
      { sent: true });
    for (const request of pending) {
      this.#clearTimeout(request.timer);
      request.reject(err);
    }
  }

  /** Stops for good after a close code that forbids reconnecting blindly. */
  #stop(err) {
    this.#running = false;
    this.#listenOnline(false);
    this.#cancelTimers();
    this.#rejectWaiting(err);
    this.#emitError(err);
  }

  #retry() {
    this.#clearAttemptTimer();
    if (!this.#running) return;
    const delay = backoffDelay(this.#attempt, this.#backoff, this.#random);
    this.#attempt += 1;
    this.#retryTimer = this.#setTimeout(() => this.#open(), delay);
  }

  /** Starts (on) or stops listening for the browser's `online` event. */
  #listenOnline(on) {
    const target = this.#onlineEvents;
    if (target === null || on === (this.#onOnline !== null)) return;
    if (on) {
      this.#onOnline = () => this.#networkBack();
      target.addEventListener("online", this.#onOnline);
    } else {
      target.removeEventListener?.("online", this.#onOnline);
      this.#onOnline = null;
    }
  }

  /**
   * The browser has a network again: a reconnect waiting out its backoff (which may have
   * grown to maxMs while offline) goes within the first backoff step instead, jittered, so
   * that the clients of a whole office coming back do not arrive at once. A drain hint's
   * wait (the server asked for it) is kept.
   */
  #networkBack() {
    if (!this.#running || this.#retryTimer === null) return;
    this.#clearTimeout(this.#retryTimer);
    // This attempt only: should it fail too (a server that accepts and closes, say), the
    // backoff goes on from where it was.
    this.#retryTimer = this.#setTimeout(() => this.#open(), backoffDelay(0, this.#backoff, this.#random));
  }

  #cancelTimers() {
    this.#clearAttemptTimer();
    if (this.#retryTimer !== null) this.#clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    if (this.#hint) this.#clearTimeout(this.#hint.timer);
    this.#hint = null;
  }

  #rejectWaiting(err) {
    const waiters = this.#connectWaiters;
    this.#connectWaiters = [];
    for (const waiter of waiters) waiter.reject(err);
    for (const topic of [...this.#waiters.keys()]) this.#rejectWaiters(topic, err);
  }

  #rejectWaiters(topic, err) {
    const list = this.#waiters.get(topic) ?? [];
    this.#waiters.delete(topic);
    for (const waiter of list) waiter.reject(err);
  }

  // ---- incoming messages ----

  #onText(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return; // the server sends only JSON text; anything else is not ours to act on
    }
    if (msg === null || typeof msg !== "object" || typeof msg.type !== "string") return;
    switch (msg.type) {
      case "welcome": return this.#onWelcome(msg);
      case "push": return this.#onPush(msg);
      case "subscribed": return this.#onSubscribed(msg);
      case "unsubscribed": return this.#onUnsubscribed(msg);
      case "reconnect": return this.#onReconnectHint(msg);
      case "token_expiring": return this.#onTokenExpiring(msg);
      case "error": return this.#onServerError(msg);
      default: return this.#settle(msg); // published, sent, refreshed, pong; unknown ones are ignored
    }
  }

  #onWelcome(msg) {
    this.#welcome = msg;
    this.#welcomeAt = this.#now();
    // The server says its own limits (protocol.md 2.1); the options stand in for one that does not.
    const said = (value, valid) => (Number.isSafeInteger(value) && valid(value) ? value : undefined);
    this.#clientRate = said(msg.client_rate, (v) => v >= 0) ?? this.#configured.clientRate;
    this.#maxMessageBytes = said(msg.max_message_size, (v) => v > 0) ?? this.#configured.maxMessageBytes;
    this.#maxClientDataBytes = said(msg.max_client_data_bytes, (v) => v > 0) ?? this.#configured.maxClientDataBytes;
    this.#rateDoubt = false;
    this.#bucket = { milli: this.#clientRate * 1000, at: this.#welcomeAt }; // a new connection's is full
    this.#sentCount = 0; // and its count of refusals in a row is 0
    this.#resetAt = 0;
    this.#confirmedAt = 0;
    this.#spent = 0;
    this.#anchor = { index: 0, milli: this.#bucket.milli, spent: 0, at: this.#welcomeAt };
    this.#guard = null;
    this.#guardLate.clear();
    this.#clearAttemptTimer();
    this.#startHeartbeat();
    // On resumed:true the replay follows, so our position stays; otherwise start from welcome.
    if (msg.resumed !== true) this.#user = { seq: msg.seq ?? 0, epoch: msg.epoch ?? null };
    this.#setState("connected");
    this.#resubscribeAll();
    this.#emit("welcome", msg);
    if (msg.resumed === true) this.#emit("resumed", { stream: "user", resumed: true });
    if (msg.resumed === false) this.#emit("gap", { stream: "user" });
    const waiters = this.#connectWaiters;
    this.#connectWaiters = [];
    for (const waiter of waiters) waiter.resolve(msg);
  }

  /**
   * Subscribes every wanted topic on a new connection, resuming where each stream was.
   * One at a time: a burst of re-subscribes could pass the server's client_rate, and
   * eleven refusals in a row close the connection with 1008.
   */
  async #resubscribeAll() {
    const ws = this.#ws;
    for (const topic of [...this.#topics.keys()]) {
      if (ws !== this.#ws || !this.#welcome) return;
      if (!this.#topics.has(topic)) continue;
      await this.#resubscribe(topic, ws);
    }
  }

  /**
   * Re-subscribes one topic on connection `ws`, settling what waits for it. A transient
   * refusal (rate_limited, overloaded, ...) is retried on the same connection after a
   * backoff (at least a second after rate_limited, when the server's bucket has a token
   * again) before the next topic goes, so the topic's pushes do not stop in silence and
   * refusals never pile up into the server's 1008 close; a lasting refusal forgets it.
   */
  async #resubscribe(topic, ws) {
    const waiters = this.#waiters.get(topic) ?? [];
    this.#waiters.delete(topic);
    for (let attempt = 0; ; attempt++) {
      try {
        const answer = await this.#sendSubscribe(topic);
        for (const waiter of waiters) waiter.resolve(answer);
        return;
      } catch (err) {
        // A timeout is tried again too: the answer may only be late, and a re-subscribe
        // is harmless to repeat (a connection that stalled is ended by the heartbeat).
        const transient = TRANSIENT_ERRORS.has(err.code) || err.code === "timeout";
        if (!transient || ws !== this.#ws || !this.#topics.has(topic)) {
          if (err.code === "disconnected" && this.#topics.has(topic)) {
            // The next connection subscribes it again; whoever waits, waits for that.
            this.#requeueWaiters(topic, waiters);
            return;
          }
          for (const waiter of waiters) waiter.reject(err);
          if (!waiters.length && err.code !== "disconnected") this.#emitError(err);
          return;
        }
        const backoff = backoffDelay(attempt, this.#backoff, this.#random);
        const delay = err.code === "rate_limited" ? Math.max(RATE_LIMIT_PAUSE_MS, backoff) : backoff;
        await this.#pause(delay);
        if (ws !== this.#ws || !this.#topics.has(topic)) {
          if (this.#topics.has(topic)) this.#requeueWaiters(topic, waiters);
          return;
        }
      }
    }
  }

  /** Puts subscribe() promises back to wait for the next connection; after close(), rejects them. */
  #requeueWaiters(topic, waiters) {
    if (!waiters.length) return;
    if (!this.#running) {
      const err = throngError("closed", "the client was closed");
      for (const waiter of waiters) waiter.reject(err);
      return;
    }
    this.#waiters.set(topic, [...waiters, ...(this.#waiters.get(topic) ?? [])]);
  }

  /** A timer the end of the connection cuts short (and clears). */
  #pause(ms) {
    return new Promise((resolve) => {
      const pause = { timer: null, resolve };
      pause.timer = this.#setTimeout(() => {
        this.#pauses.delete(pause);
        resolve();
      }, ms);
      this.#pauses.add(pause);
    });
  }

  #sendSubscribe(topic) {
    const entry = this.#topics.get(topic);
    // A live subscription needs no resume: the server just confirms it again.
    const mode = entry.live ? "fresh" : resumeMode(entry);
    const msg = { type: "subscribe", topic };
    if (mode === "resume") Object.assign(msg, { since: entry.seq, epoch: entry.epoch });
    return this.#request(msg, { topic, mode, internal: !this.#explicit });
  }

  // ---- heartbeat ----

  /**
   * A browser sees neither the server's WebSocket pings nor a peer that vanished: a
   * connection whose path died (a laptop that slept, a NAT or proxy that dropped it) stays
   * "connected" with no pushes for as long as TCP needs to notice, which is for ever when
   * the client sends nothing. So when the client has sent nothing, or heard nothing, for
   * the heartbeat's interval, it sends {"type":"ping"}; when nothing at all (the pong, a
   * push) arrives within the timeout, it closes the connection and reconnects.
   * The interval (0.8 x the server's ping_interval_ms by default) keeps the server's own
   * Ping from falling due: any byte from the client resets the server's ping timer, so a
   * healthy idle connection costs the server one round trip per cycle (parse a ping, send
   * a pong) instead of that plus a Ping/Pong. Messages only update timestamps; the one
   * timer is armed at the next due time and re-armed when it fires (or a ping is answered).
   */
  #startHeartbeat() {
    if (!this.#heartbeat) return;
    this.#hb = heartbeatTiming(this.#heartbeat, this.#welcome);
    this.#pingedAt = null;
    this.#giveUpDeferred = false;
    this.#armHeartbeat();
  }

  /** Arms the heartbeat timer at its next due time. */
  #armHeartbeat() {
    const due = this.#pingedAt !== null
      ? this.#pingedAt + this.#hb.timeoutMs
      : Math.min(this.#sentAt, this.#heardAt) + this.#hb.intervalMs;
    this.#heartbeatTimer = this.#setTimeout(() => this.#heartbeatTick(), Math.max(0, due - this.#now()));
  }

  /** Something arrived after the heartbeat's ping: the next one is due an interval from now. */
  #pingAnswered() {
    this.#pingedAt = null;
    this.#giveUpDeferred = false;
    if (this.#heartbeatTimer === null) return;
    this.#clearTimeout(this.#heartbeatTimer);
    this.#armHeartbeat();
  }

  #heartbeatTick() {
    this.#heartbeatTimer = null;
    if (!this.#welcome || !this.#hb) return;
    const now = this.#now();
    if (this.#pingedAt === null) {
      if (now >= Math.min(this.#sentAt, this.#heardAt) + this.#hb.intervalMs) {
        this.#pingedAt = now;
        this.#sendJson({ type: "ping" });
      }
    } else if (now >= this.#pingedAt + this.#hb.timeoutMs) {
      if (!this.#giveUpDeferred) {
        // As for a request's timeout: an answer that arrived while a long task held the
        // event loop gets one turn to be handled (it clears #pingedAt and this timer).
        this.#giveUpDeferred = true;
        this.#heartbeatTimer = this.#setTimeout(() => this.#heartbeatTick(), 0);
        return;
      }
      // Silent through a ping and its timeout: handled like a connection lost (1006), and
      // reported, so an application can tell why it reconnects.
      const ws = this.#ws;
      const { timeoutMs } = this.#hb;
      this.#onClose(1006, "");
      if (ws) giveUpSocket(ws, "no answer to ping");
      this.#emitError(throngError("stalled", `nothing arrived within ${timeoutMs} ms of the heartbeat's ping: the connection was given up${this.#running ? "; reconnecting" : ""}`));
      return;
    }
    this.#armHeartbeat();
  }

  #onPush(msg) {
    const fresh = typeof msg.topic === "string" ? this.#advanceTopic(msg) : this.#advanceUser(msg);
    if (!fresh) return;
    this.#emit("push", msg);
    if (typeof msg.topic !== "string" && typeof msg.seq === "number") this.#queueAck(msg.seq);
  }

  /** Dedup for the user stream; broadcasts (no seq) always pass. */
  #advanceUser(msg) {
    if (typeof msg.seq !== "number") return true;
    if (msg.seq <= this.#user.seq) return false;
    this.#user.seq = msg.seq;
    return true;
  }

  /** Dedup for a topic stream; a push of a topic we do not want (any more) is dropped. */
  #advanceTopic(msg) {
    const entry = this.#topics.get(msg.topic);
    if (!entry) return false;
    if (typeof msg.seq !== "number") return true;
    // seq 1 carries the epoch it starts: a new numbering (or the first one after the
    // placeholder) begins, and it is the epoch to resume with.
    if (typeof msg.epoch === "string" && msg.epoch !== entry.epoch) {
      entry.epoch = msg.epoch;
      entry.seq = 0;
    }
    if (entry.seq !== null && msg.seq <= entry.seq) return false;
    entry.seq = msg.seq;
    return true;
  }

  /** Acks once per microtask with the highest seq, on the connection the pushes came from. */
  #queueAck(seq) {
    if (!this.#ackPushes) return;
    this.#ackSeq = Math.max(this.#ackSeq, seq);
    if (this.#ackQueued) return;
    this.#ackQueued = true;
    const ws = this.#ws;
    queueMicrotask(() => {
      this.#ackQueued = false;
      const ackSeq = this.#ackSeq;
      this.#ackSeq = 0;
      // An ack on another connection could name a seq of an older epoch: refused, and
      // refusals in a row end in a 1008 close (section 2.2).
      if (ws === this.#ws && ackSeq > 0) this.#sendJson({ type: "ack", seq: ackSeq });
    });
  }

  #onSubscribed(msg) {
    const request = this.#takePending(msg);
    const entry = this.#topics.get(msg.topic);
    if (entry) this.#applySubscribed(entry, msg, request?.mode ?? "fresh");
    request?.resolve(msg);
  }

  #applySubscribed(entry, msg, mode) {
    entry.live = true;
    if (msg.resumed !== true) {
      const sameStream = entry.epoch === msg.epoch && msg.resumed !== false;
      entry.seq = sameStream ? Math.max(entry.seq ?? 0, msg.seq) : msg.seq;
      entry.epoch = msg.epoch;
    }
    const outcome = subscribeOutcome(msg, mode);
    if (outcome === "resumed") this.#emit("resumed", { stream: "topic", topic: msg.topic, resumed: true });
    if (outcome === "gap") this.#emit("gap", { stream: "topic", topic: msg.topic });
  }

  #onUnsubscribed(msg) {
    if (this.#settle(msg)) return;
    // A late answer to a request that timed out: nothing to do.
    if (msg.ref !== undefined) return;
    // Without a ref the server ended it: a refresh took the grant away (section 2.1).
    this.#topics.delete(msg.topic);
    this.#emitError(throngError("unsubscribed", `the server ended the subscription to ${msg.topic}`, {
      topic: msg.topic,
      reason: msg.reason,
    }));
  }

  #onReconnectHint(msg) {
    const afterMs = Number.isFinite(msg.after_ms) && msg.after_ms > 0 ? msg.after_ms : 0;
    if (this.#hint) this.#clearTimeout(this.#hint.timer);
    const hint = { due: false, timer: null };
    hint.timer = this.#setTimeout(() => {
      this.#hint = null;
      if (hint.due) this.#retry(); // the close came first: now add our own jitter
    }, afterMs);
    this.#hint = hint;
  }

  /**
   * Refreshes at once the first time on a connection. Later `token_expiring`s wait half of
   * `in_ms`: when tokens live shorter than the server's refresh_ahead_ms, every accepted
   * refresh is answered by another `token_expiring` at once, and refreshing at once would
   * loop (getToken, refresh, token_expiring, ...) until the rate limit stops it.
   */
  #onTokenExpiring(msg) {
    if (!this.#getToken) return; // a fixed token cannot be renewed: the 4001 close stops us
    const refresh = this.#refresh;
    // A planned refresh (a retry, say) is planned again from what the server says now.
    if (refresh.timer !== null) this.#clearTimeout(refresh.timer);
    refresh.timer = null;
    refresh.wanted = true;
    refresh.inMs = Number.isFinite(msg.in_ms) && msg.in_ms > 0 ? msg.in_ms : 0;
    refresh.closeAt = this.#now() + refresh.inMs;
    this.#planRefresh();
  }

  /** Starts or schedules the wanted refresh; one that came during a refresh waits for it. */
  #planRefresh() {
    const refresh = this.#refresh;
    if (!refresh.wanted || refresh.busy || refresh.timer !== null) return;
    refresh.wanted = false;
    if (refresh.count === 0) {
      this.#refreshToken();
      return;
    }
    refresh.timer = this.#setTimeout(() => {
      refresh.timer = null;
      this.#refreshToken();
    }, refresh.inMs / 2);
  }

  async #refreshToken() {
    const ws = this.#ws;
    const refresh = this.#refresh;
    refresh.busy = true;
    refresh.count += 1;
    try {
      const token = await this.#tokenForRefresh(refresh);
      // On another connection: it got a fresh token when it connected.
      if (ws !== this.#ws || !this.#welcome) return;
      await this.#request({ type: "refresh", token });
    } catch (err) {
      // token_failed, or the server refused the refresh: the old token stays. A dropped
      // connection needs no report: the next one gets a fresh token. Nor does a failure
      // that comes after its connection was replaced: the new one is not concerned.
      if (refresh !== this.#refresh) return;
      if (err.code !== "disconnected") {
        this.#emitError(err);
        // Tried again at half the time left to the 4001 close, while a second or more is
        // left (a few tries at most): a getToken that failed once need not cost a reconnect.
        const left = refresh.closeAt - this.#now();
        if (refresh === this.#refresh && left >= 2 * MIN_REFRESH_RETRY_MS && !refresh.wanted) {
          refresh.wanted = true;
          refresh.inMs = left;
        }
      }
    } finally {
      refresh.busy = false;
      if (refresh === this.#refresh) this.#planRefresh();
    }
  }

  #onServerError(msg) {
    // The server's bucket is emptier than ours (another client_rate, or messages that
    // arrived bunched): start again from empty.
    if (msg.code === "rate_limited") {
      this.#rateDoubt = true;
      this.#bucket = { milli: Math.min(0, this.#bucket.milli), at: this.#now() };
      this.#anchor = { index: this.#sentCount, milli: this.#bucket.milli, spent: this.#spent, at: this.#now() };
    }
    const request = this.#takePending(msg);
    const topic = request?.type === "subscribe" ? request.topic : undefined;
    const err = throngError(msg.code ?? "error", msg.message ?? String(msg.code), { ref: msg.ref, topic });
    if (!request && this.#guardLate.delete(msg.ref)) return; // the guard's ping, answered late
    if (!request) {
      this.#emitError(err);
      return;
    }
    // A refused subscribe forgets the topic unless it is subscribed already (a repeat) or
    // the client itself re-subscribes it after a reconnect and retries transient refusals:
    // an app whose subscribe() failed must not get the topic's pushes later.
    if (request.type === "send" && err.code === "unavailable") this.#sendUnavailable = true;
    const entry = topic === undefined ? undefined : this.#topics.get(topic);
    const retried = request.internal && TRANSIENT_ERRORS.has(err.code);
    if (entry && !entry.live && !retried) this.#topics.delete(topic);
    request.reject(err);
  }

  // ---- requests ----

  /**
   * Sends `msg` with a fresh ref; resolves with the answer carrying that ref. Rejected with
   * "timeout" when no answer comes within requestTimeoutMs (some refusals carry no ref: a
   * message refused unread for the rate, one nested too deeply), with "disconnected" when
   * the connection ends first.
   */
  #request(msg, meta = {}) {
    if (!this.#welcome || this.#ws?.readyState !== OPEN) {
      return Promise.reject(throngError("disconnected", "not connected", { sent: false }));
    }
    const ref = this.#nextRef++;
    let text;
    try {
      text = JSON.stringify({ ...msg, ref });
    } catch (err) {
      // A BigInt, a cycle, a throwing toJSON: nothing was sent, nothing waits.
      return this.#refuseLocally(msg, meta, "bad_json", `cannot send this as JSON: ${err?.message ?? err}`, { cause: err });
    }
    const problem = checkOutgoing(text, this.#maxMessageBytes);
    if (problem) return this.#refuseLocally(msg, meta, problem.code, problem.message);
    // The data's own text is no longer than the message's: most need no count.
    if ((msg.type === "publish" || msg.type === "send") && text.length * 3 > this.#maxClientDataBytes) {
      const bytes = serverDataLength(JSON.stringify(msg.data));
      if (bytes > this.#maxClientDataBytes) {
        return this.#refuseLocally(msg, meta, "too_large",
          `data is ${bytes} bytes as the server writes it; the server takes at most ${this.#maxClientDataBytes} (max_client_data_bytes)`);
      }
    }
    // Queued unsubscribes take the bucket's tokens first; a subscribe takes the place of a
    // queued unsubscribe of its own topic (dropped below, once the subscribe goes).
    const queued = msg.type === "subscribe"
      ? this.#unsubscribes.filter((item) => item.topic !== msg.topic).length
      : this.#unsubscribes.length;
    if (msg.type !== "unsubscribe" && PACED_REQUESTS.has(msg.type) && queued > 0) {
      const first = Math.max(this.#paceWait(), this.#guardHoldMs(), this.#unsubscribePauseUntil - this.#now());
      const waitMs = Math.max(1, Math.ceil(first + (this.#clientRate ? (queued * 1000) / this.#clientRate : 0)));
      return this.#refuseLocally(msg, meta, "rate_limited",
        `over client_rate (${this.#clientRate} messages a second), ${queued} unsubscribes queued: not sent; try again in ${waitMs} ms`,
        { retryAfterMs: waitMs });
    }
    if (PACED_REQUESTS.has(msg.type)) {
      const hold = this.#guardWait();
      if (hold > 0) {
        const waitMs = Math.max(1, Math.ceil(hold === Infinity ? this.#guardHoldMs() : hold));
        return this.#refuseLocally(msg, meta, "rate_limited",
          `${REFUSAL_GUARD} messages are unanswered and the ping that guards against the server's 1008 close is ${this.#guard?.ref != null ? "unanswered" : "refused"}: not sent; try again in ${waitMs} ms`,
          { retryAfterMs: waitMs });
      }
    }
    const waitMs = this.#spend(text, msg.type, PACED_REQUESTS.has(msg.type));
    if (waitMs > 0) {
      // Sent, it would be refused with rate_limited, and the 11th refusal in a row closes
      // the connection with 1008, after which the client stops: refused here instead.
      return this.#refuseLocally(msg, meta, "rate_limited",
        `over client_rate (${this.#clientRate} messages a second): not sent; try again in ${Math.ceil(waitMs)} ms`,
        { retryAfterMs: Math.ceil(waitMs) });
    }
    // An unsubscribe of the topic still queued is dropped only now that the subscribe goes:
    // the server keeps the subscription, which the client wants again. Had the subscribe
    // been refused above, the unsubscribe would stay queued, since the topic is forgotten.
    if (msg.type === "subscribe") this.#dropQueuedUnsubscribes(msg.topic);
    return new Promise((resolve, reject) => {
      const timer = this.#setTimeout(() => this.#timeOut(ref), this.#requestTimeoutMs);
      const index = this.#noteSent(msg.type);
      const anchor = { index, milli: this.#guardRoom(), spent: this.#spent };
      this.#pending.set(ref, { resolve, reject, type: msg.type, timer, index, sentAt: this.#now(), anchor, ...meta });
      this.#ws.send(text);
      this.#sentAt = this.#now();
    });
  }

  /**
   * Charges a message to the connection's rate bucket the way the server does (protocol.md
   * 2.2: a token per message but acks, plus a token per 16 KiB of text, at least 256 bytes;
   * debt down to one bucket) and returns 0; or, for a paced request when the bucket has no
   * token to spare, charges nothing and returns how long until it has.
   */
  #spend(text, type, paced) {
    const rate = this.#clientRate;
    if (rate === 0) return 0;
    const capacity = rate * 1000;
    const now = this.#now();
    let milli = this.#bucketNow(now);
    if (type !== "ack") {
      const needed = this.#pacedNeed();
      if (paced && milli < needed) return (needed - milli) / rate;
    }
    const bytes = text.length * 3 <= MIN_CHARGE_BYTES ? MIN_CHARGE_BYTES : Math.max(MIN_CHARGE_BYTES, utf8Length(text));
    const cost = (type !== "ack" ? 1000 : 0) + (bytes * 1000) / BYTES_PER_TOKEN;
    this.#spent += cost;
    milli = Math.max(-capacity, milli - cost);
    this.#bucket = { milli, at: now };
    return 0;
  }

  /** The bucket's thousandths of a token at `now`, refilled. */
  #bucketNow(now) {
    const rate = this.#clientRate;
    return Math.min(rate * 1000, this.#bucket.milli + Math.max(0, now - this.#bucket.at) * rate);
  }

  /**
   * What a paced request needs in the bucket: it leaves a token for the client's own
   * messages (ping, refresh), which also covers the refill the server does not see when
   * messages sent over a few milliseconds reach it together.
   */
  #pacedNeed() {
    return 1000 + Math.max(0, Math.min(1000, this.#clientRate * 1000 - 1000));
  }

  /** How long until a paced request fits the bucket (ms); 0 when it fits now or pacing is off. */
  #paceWait() {
    if (this.#clientRate === 0) return 0;
    const milli = this.#bucketNow(this.#now());
    const needed = this.#pacedNeed();
    return milli >= needed ? 0 : (needed - milli) / this.#clientRate;
  }

  // ---- paced unsubscribes ----

  #queueUnsubscribe(topic, resolve, reject) {
    this.#unsubscribes.push({ topic, resolve, reject });
    this.#drainUnsubscribes();
  }

  /** Sends queued unsubscribes while the bucket has tokens; re-arms its timer for the rest. */
  #drainUnsubscribes() {
    if (this.#unsubscribeTimer !== null) return; // its turn comes with the timer
    while (this.#unsubscribes.length > 0 && this.#welcome) {
      let wait = Math.max(this.#paceWait(), this.#unsubscribePauseUntil - this.#now());
      if (wait <= 0) wait = this.#guardWait();
      if (wait === Infinity) return; // the guard's ping is unanswered: its answer drains
      if (wait > 0) {
        this.#unsubscribeTimer = this.#setTimeout(() => {
          this.#unsubscribeTimer = null;
          this.#drainUnsubscribes();
        }, Math.ceil(wait));
        return;
      }
      const item = this.#unsubscribes.shift();
      const ws = this.#ws;
      this.#request({ type: "unsubscribe", topic: item.topic }, { topic: item.topic }).then(item.resolve, (err) => {
        if (err.code === "rate_limited" && ws === this.#ws && this.#welcome) {
          if (this.#topics.has(item.topic)) {
            // Subscribed again meanwhile: the server's subscription is the one wanted.
            item.resolve({ type: "unsubscribed", topic: item.topic });
            return;
          }
          // Refused for the rate (the server saw messages bunched, or a lower client_rate):
          // tried again after a pause, first in line.
          this.#unsubscribes.unshift(item);
          this.#unsubscribePauseUntil = this.#now() + RATE_LIMIT_PAUSE_MS;
          this.#drainUnsubscribes();
          return;
        }
        item.reject(err);
      });
    }
  }

  /** A subscribe of `topic` goes while an unsubscribe of it waits: that unsubscribe is settled, unsent. */
  #dropQueuedUnsubscribes(topic) {
    if (!this.#unsubscribes.some((item) => item.topic === topic)) return;
    const keep = [];
    for (const item of this.#unsubscribes) {
      if (item.topic === topic) item.resolve({ type: "unsubscribed", topic });
      else keep.push(item);
    }
    this.#unsubscribes = keep;
  }

  /**
   * A request refused before it was sent. A refused subscribe() forgets its topic, like one
   * the server refuses; a re-subscribe is kept only when the refusal is for the rate (it is
   * tried again after a pause).
   */
  #refuseLocally(msg, meta, code, message, extra = {}) {
    if (msg.type === "subscribe" && !(meta.internal && code === "rate_limited")) this.#forgetUnlessLive(msg.topic);
    const topic = msg.type === "subscribe" ? msg.topic : undefined;
    return Promise.reject(throngError(code, message, { ...extra, sent: false, topic }));
  }

  /** A subscribe() that did not go through is forgotten unless the topic is subscribed already. */
  #forgetUnlessLive(topic) {
    const entry = this.#topics.get(topic);
    if (entry && !entry.live) this.#topics.delete(topic);
  }

  /** A request whose answer did not come in time. */
  #timeOut(ref) {
    const request = this.#pending.get(ref);
    if (!request) return;
    if (!request.deferred) {
      // The timer may have come due during a long synchronous task while the answer sat
      // received but not yet handled (Node runs due timers before I/O): one more turn of
      // the event loop lets it through first.
      request.deferred = true;
      request.timer = this.#setTimeout(() => this.#timeOut(ref), 0);
      return;
    }
    this.#pending.delete(ref);
    const topic = request.type === "subscribe" || request.type === "unsubscribe" ? request.topic : undefined;
    if (request.type === "subscribe" && !request.internal) {
      // Like a refused subscribe(), a timed-out one is forgotten, and the server is asked to
      // end the subscription in case it was made: its pushes must not start later.
      const entry = this.#topics.get(topic);
      if (entry && !entry.live) {
        this.#topics.delete(topic);
        this.#queueUnsubscribe(topic, () => {}, () => {});
      }
    }
    request.reject(throngError("timeout",
      `no answer to ${request.type} within ${this.#requestTimeoutMs} ms; it may or may not have been carried out`,
      { sent: true, topic }));
  }

  /**
   * getToken for a refresh: given up with token_failed after requestTimeoutMs, or with
   * "disconnected" when its connection ends (#forgetSocket calls refresh.cancel), so no
   * timer outlives the connection or close().
   */
  #tokenForRefresh(refresh) {
    return new Promise((resolve, reject) => {
      const settle = (fn, value) => {
        if (refresh.cancel === null) return;
        refresh.cancel = null;
        this.#clearTimeout(timer);
        fn(value);
      };
      const timer = this.#setTimeout(() => settle(reject,
        throngError("token_failed", `getToken did not answer within ${this.#requestTimeoutMs} ms`)), this.#requestTimeoutMs);
      refresh.cancel = () => settle(reject, throngError("disconnected", "the connection ended during the token refresh"));
      this.#currentToken().then((token) => settle(resolve, token), (err) => settle(reject, err));
    });
  }

  #takePending(msg) {
    if (msg.ref === undefined || !this.#pending.has(msg.ref)) return null;
    const request = this.#pending.get(msg.ref);
    this.#pending.delete(msg.ref);
    this.#clearTimeout(request.timer);
    // Accepted: the server's count of refusals in a row started over at it.
    if (msg.type !== "error") {
      this.#resetAt = Math.max(this.#resetAt, request.index);
      this.#confirmedAt = Math.max(this.#confirmedAt, request.index);
    }
    // The server has taken it (a rate_limited answer has set the anchor itself).
    if (request.anchor && request.anchor.index > this.#anchor.index && msg.code !== "rate_limited") {
      this.#anchor = { ...request.anchor, at: this.#now() };
    }
    if (request.sentAt !== undefined) this.#rtt = Math.max(1, this.#now() - request.sentAt);
    return request;
  }

  /**
   * Numbers a message about to go out (acks aside: an accepted ack does not reset the
   * server's count, and the client sends none the server would refuse). A request of the
   * client's own (a token refresh) that finds REFUSAL_GUARD messages unconfirmed is not
   * held: the guard's ping goes before it, unpaced, unless one is out already.
   * @returns {number} the message's number
   */
  #noteSent(type) {
    if (type === "ping") {
      this.#resetAt = ++this.#sentCount; // the heartbeat's
      return this.#sentCount;
    }
    if (!PACED_REQUESTS.has(type) && this.#guard === null && this.#sentCount - this.#resetAt >= REFUSAL_GUARD) {
      this.#sendGuardPing(this.#guardPingFree());
    }
    return ++this.#sentCount;
  }

  /**
   * The refusal guard, for a paced request: how long it must wait (ms; Infinity: until the
   * guard's ping is answered), or 0 when it may go. The server closes with 1008 at the
   * 11th refused message in a row, and counts refusals the client cannot always foresee
   * (forbidden_topic, a refresh's invalid_token, rate_limited for messages that reached it
   * bunched, ...), some before their answers arrive (a burst). So once REFUSAL_GUARD
   * messages have gone out since the last one known (or taken) to have been accepted, a
   * ping with a ref goes. While the bucket has room for it and the next REFUSAL_GUARD
   * request behind it even if all since the last answer reached the server at once (see
   * #guardRoom, #guardRoomNeeded), the server cannot refuse it: it goes before the request and is taken as
   * accepted, nothing is held (a burst at a full bucket goes as the bucket allows); should
   * it be refused after all, the guard holds as below. When the bucket is low, rate
   * refusals may come in a run, and a ping could be refused with them: it goes in place of
   * the request (paced like one: it leaves a token in the bucket), and nothing paced goes
   * until its answer: a pong resets the server's count; a refusal
   * (or no answer) means another ping after a pause (RATE_LIMIT_PAUSE_MS, then twice
   * that, which lets even a bucket in debt refill). The answers to the messages before
   * the ping arrive before its own, so a refused ping leaves a run of at most
   * REFUSAL_GUARD + 1 known refusals, and one refused retry at most one more.
   */
  #guardWait() {
    const guard = this.#guard;
    if (guard !== null && guard.ref !== null) return Infinity;
    if (this.#sentCount - this.#resetAt < REFUSAL_GUARD) {
      this.#guard = null;
      return 0;
    }
    const now = this.#now();
    if (guard !== null && guard.retryAt > now) return guard.retryAt - now;
    if (guard === null && this.#guardPingFree()) {
      this.#sendGuardPing(true);
      return 0;
    }
    const pace = this.#paceWait();
    if (pace > 0) return pace;
    this.#sendGuardPing(false);
    return this.#guard === null ? 0 : Infinity;
  }

  /**
   * The bucket's thousandths of a token as the server would at least find them should all
   * that went since the latest answer reach it at once, now (a link whose latency drops
   * delivers them bunched). The server refills by arrival time (src/shard/rate.rs), so the
   * refill the copy counted between the sends of messages in flight may not be there; what
   * is: this same reckoning as of when that answered message went (by induction from the
   * welcome's full bucket: a message arrives no sooner than it went), the refill since its
   * answer came (the server had taken it by then), capped at the bucket's size, less what
   * went since. Never more than the copy itself. Infinity without pacing.
   */
  #guardRoom() {
    const rate = this.#clientRate;
    if (rate === 0) return Infinity;
    const now = this.#now();
    const anchor = this.#anchor;
    const refilled = Math.min(rate * 1000, anchor.milli + Math.max(0, now - anchor.at) * rate);
    return Math.min(this.#bucketNow(now), refilled - (this.#spent - anchor.spent));
  }

  /** Whether the guard's ping can be taken as accepted as it goes (nothing held): see #guardWait, #rateDoubt. */
  #guardPingFree() {
    return !this.#rateDoubt && this.#guardRoom() >= this.#guardRoomNeeded();
  }

  /**
   * What #guardRoom must hold for the guard's ping to be taken as accepted (thousandths).
   * The server refuses a message for the rate only when it finds less than one token
   * (src/shard/rate.rs), and closes at the 11th refusal in a row; an accepted ping ends any
   * run. So the hold only matters when the ping itself could be refused: it needs its token
   * (1), a tick's refill the server may not have added yet (rate x 10 ms, at least 1), and
   * the paced request that goes behind it its token (1). With less, the next messages, the
   * ping among them, could all find the server's bucket empty, and the guard holds.
   */
  #guardRoomNeeded() {
    return 2000 + Math.max(1000, this.#clientRate * SERVER_TICK_MS);
  }

  /** How long the guard holds paced requests, as a hint (ms): its ping's answer is expected a round trip after it went. */
  #guardHoldMs() {
    const guard = this.#guard;
    if (guard === null) return 0;
    // Its answer is late when the link has slowed since the last one: another round trip then.
    if (guard.ref !== null) {
      const left = guard.sentAt + this.#rtt - this.#now();
      return Math.max(MIN_GUARD_HINT_MS, left > 0 ? left : this.#rtt);
    }
    return Math.max(0, guard.retryAt - this.#now());
  }

  /**
   * Sends the refusal guard's ping, with a ref, charged to the bucket like any message.
   * `free`: taken as accepted at once, nothing held (the bucket has room, see #guardWait).
   */
  #sendGuardPing(free) {
    const ref = this.#nextRef++;
    const text = JSON.stringify({ type: "ping", ref });
    this.#spend(text, "ping", false);
    const now = this.#now();
    // Without pacing (clientRate 0: a server without client_rate) a ping is never refused,
    // so it is taken as accepted at once and nothing is held.
    free = free || this.#clientRate === 0;
    const guard = { ref, sentAt: now, retryAt: 0, refusals: this.#guard?.refusals ?? 0, free };
    this.#guard = free ? null : guard;
    const timer = this.#setTimeout(() => this.#timeOut(ref), this.#requestTimeoutMs);
    const index = ++this.#sentCount;
    this.#pending.set(ref, {
      type: "ping",
      index,
      timer,
      sentAt: now,
      anchor: { index, milli: this.#guardRoom(), spent: this.#spent },
      resolve: () => this.#guardAnswered(guard, null),
      reject: (err) => this.#guardAnswered(guard, err),
    });
    if (this.#guard === null) this.#resetAt = this.#sentCount;
    this.#ws.send(text);
    this.#sentAt = now;
  }

  /** The guard's ping was answered (err null: pong), refused or timed out; never reported. */
  #guardAnswered(guard, err) {
    if (guard.free) {
      if (err === null || err.code === "disconnected" || this.#clientRate === 0) return;
      // Taken as accepted, it was refused (or unanswered): the server's bucket was emptier
      // than the copy. The run goes on from the last message known to have been accepted,
      // and the guard holds: another ping after a pause, as for a refused one.
      if (err.code === "timeout") this.#guardLate.add(guard.ref);
      this.#resetAt = Math.min(this.#resetAt, this.#confirmedAt);
      if (this.#guard === null) this.#guard = { ref: null, sentAt: guard.sentAt, retryAt: this.#now() + RATE_LIMIT_PAUSE_MS, refusals: 1 };
      this.#drainUnsubscribes();
      return;
    }
    if (guard !== this.#guard || err?.code === "disconnected") return;
    if (err === null) {
      this.#guard = null;
      this.#rateDoubt = false; // a ping the server took while the copy was in doubt: its count is reset
    } else {
      if (err.code === "timeout") this.#guardLate.add(guard.ref);
      guard.ref = null;
      guard.refusals += 1;
      guard.retryAt = this.#now() + RATE_LIMIT_PAUSE_MS * Math.min(2, guard.refusals);
    }
    this.#drainUnsubscribes();
  }

  /** Resolves the request `msg` answers; false when it answers none of ours. */
  #settle(msg) {
    const request = this.#takePending(msg);
    request?.resolve(msg);
    return request !== null;
  }

  #sendJson(msg) {
    if (this.#ws?.readyState !== OPEN) return;
    const text = JSON.stringify(msg);
    this.#spend(text, msg.type, false);
    if (msg.type !== "ack") this.#noteSent(msg.type);
    this.#ws.send(text);
    this.#sentAt = this.#now();
  }

  // ---- events ----

  #setState(state) {
    if (state === this.#state) return;
    this.#state = state;
    this.#emit("state", state);
  }

  #emitError(err) {
    this.#emit("error", err);
  }

  #emit(name, value) {
    for (const fn of [...(this.#listeners.get(name) ?? [])]) {
      try {
        fn(value);
      } catch (err) {
        reportListenerError(err);
      }
    }
  }
}

/**
 * What the server would refuse in a way that hurts more than an answer: a message over
 * its max_message_size closes the connection with 1009 (after which the client stops for
 * good), and one nested deeper than 32 levels or with an integer beyond the 64-bit range
 * (JSON.stringify writes 2**64 as 18446744073709552000) is refused without its ref.
 * @param {string} text the message as it would be sent
 * @param {number} maxBytes
 * @returns {{code: string, message: string}|null}
 */
function checkOutgoing(text, maxBytes) {
  // Three UTF-8 bytes per UTF-16 unit at most, so most messages need no count.
  if (text.length * 3 > maxBytes) {
    const bytes = utf8Length(text);
    if (bytes > maxBytes) {
      return { code: "too_large", message: `the message is ${bytes} bytes; the server takes at most ${maxBytes} (max_message_size)` };
    }
  }
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
      continue;
    }
    if (c === 0x22) {
      inString = true;
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > MAX_DEPTH) {
        return { code: "bad_json", message: `the data is nested deeper than the server takes (${MAX_DEPTH} levels, the message included)` };
      }
    } else if (c === 0x5d || c === 0x7d) {
      depth--;
    } else if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
      let end = i + 1;
      while (end < text.length && isNumberChar(text.charCodeAt(end))) end++;
      const number = text.slice(i, end);
      if (!integerInRange(number)) {
        return { code: "bad_json", message: `the integer ${number} is beyond the 64-bit range the server takes` };
      }
      i = end - 1;
    }
  }
  return null;
}

function isNumberChar(c) {
  return (c >= 0x30 && c <= 0x39) || c === 0x2e || c === 0x65 || c === 0x45 || c === 0x2b || c === 0x2d;
}

/** Whether a JSON number is a float, or an integer in -2^63 ..= 2^64-1 (what the server parses). */
function integerInRange(number) {
  if (/[.eE]/.test(number)) return true;
  const negative = number[0] === "-";
  const digits = negative ? number.slice(1) : number;
  const limit = negative ? "9223372036854775808" : "18446744073709551615";
  return digits.length < limit.length || (digits.length === limit.length && digits <= limit);
}

/**
 * The length in bytes of JSON text `text` (JSON.stringify's) as the server measures it: it
 * re-encodes the data compactly (simd-json, numbers written by ryu) and counts that. The two
 * differ only in how some numbers are written (strings, objects and other numbers come out
 * alike): an exponent's sign (JS `1e+21`, the server `1e21`) and numbers in the 1e-6
 * decade, which JS writes out (`0.0000012`) and the server as an exponent (`1.2e-6`). So
 * never stricter than the server: a local refusal is one the server would make too.
 * @param {string} text
 * @returns {number}
 */
function serverDataLength(text) {
  let bytes = utf8Length(text);
  if (!text.includes("e+") && !text.includes("0.00000")) return bytes;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inString = false;
      continue;
    }
    if (c === 0x22) {
      inString = true;
    } else if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
      let end = i + 1;
      while (end < text.length && isNumberChar(text.charCodeAt(end))) end++;
      const number = text.slice(i, end);
      if (number.includes("e+")) {
        bytes -= 1;
      } else {
        // 0.00000d...: n significant digits; the server writes de-6 (n = 1) or d.d...e-6.
        const m = /^-?0\.00000([1-9][0-9]*)$/.exec(number);
        if (m) bytes -= m[1].length === 1 ? 4 : 3;
      }
      i = end - 1;
    }
  }
  return bytes;
}

function utf8Length(text) {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      bytes += 4;
      i++;
    } else bytes += 3;
  }
  return bytes;
}

/** Closes a socket the client gave up on; its handlers are detached already. */
function giveUpSocket(ws, reason) {
  try {
    if (ws.readyState === OPEN) ws.close(CLIENT_GAVE_UP, reason);
    else if (ws.readyState === CONNECTING) ws.close();
  } catch {
    // Closing is a courtesy: the socket is forgotten either way.
  }
}

/**
 * Per connection: refreshes done, one running, one wanted (and its in_ms), one scheduled,
 * when the server would close with 4001 (now() + the last in_ms), and how to give up the
 * running refresh's getToken (null when none runs).
 */
function newRefreshState() {
  return { count: 0, busy: false, wanted: false, inMs: 0, timer: null, closeAt: 0, cancel: null };
}

function checkTopic(topic) {
  if (typeof topic !== "string" || topic === "") throw new TypeError("topic must be a non-empty string");
}

/**
 * The server's rule for topic names (protocol.md 2.3: 1 to 200 bytes of printable ASCII,
 * `!` to `~`, no `*`), checked locally: each refusal counts toward the server's 1008 close,
 * and names often come from users. A `bad_topic` error (sent: false), or null when valid.
 */
function badTopic(topic) {
  let problem = null;
  if (topic.length > MAX_TOPIC_BYTES) problem = `is ${topic.length} characters; at most ${MAX_TOPIC_BYTES} bytes are allowed`;
  else {
    for (let i = 0; i < topic.length; i++) {
      const c = topic.charCodeAt(i);
      if (c < 0x21 || c > 0x7e || c === 0x2a) {
        problem = c === 0x2a
          ? "contains '*' (reserved for patterns)"
          : `contains ${JSON.stringify(topic[i])} at ${i}: only printable ASCII ('!' to '~') is allowed`;
        break;
      }
    }
  }
  if (problem === null) return null;
  return throngError("bad_topic", `the topic name ${JSON.stringify(topic.slice(0, 60))} ${problem}; not sent`, { sent: false, topic });
}
