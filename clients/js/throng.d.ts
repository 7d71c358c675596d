// Types for throng.js. Message shapes follow docs/protocol.md section 2; the server may add
// fields in later versions, so every message type allows unknown ones.

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** The `ref` the client puts on a request; the server copies it into the answer. */
export type Ref = Json;

// ---- server to client ----

/** The first message of every connection. */
export interface WelcomeMessage {
  type: "welcome";
  /** An opaque id of this connection. */
  session: string;
  /** The token's `sub`. */
  user: string;
  /** Names the current numbering of this user's direct pushes. */
  epoch: string;
  /** The last direct-push seq this user has had so far (0 if none). */
  seq: number;
  ping_interval_ms: number;
  idle_timeout_ms: number;
  /** Messages a second this connection may send (0: no limit); the client paces itself to it. */
  client_rate?: number;
  /** The longest message the server reads, in bytes (longer closes with 1009). */
  max_message_size?: number;
  /** The longest `data` of a publish or send, in bytes (longer is refused with too_large). */
  max_client_data_bytes?: number;
  /** Present only when the upgrade carried since/epoch (a reconnect). */
  resumed?: boolean;
  [field: string]: unknown;
}

/** A push: direct (seq, no topic), topic (topic and seq) or broadcast (neither). */
export interface PushMessage {
  type: "push";
  data: Json;
  /** When the server accepted the push, ms since the Unix epoch. */
  ts: number;
  /** Direct pushes: the user's seq; topic pushes: the topic's seq. Absent on broadcasts. */
  seq?: number;
  topic?: string;
  /** The upstream's id for the push, when it gave one. */
  id?: string;
  /** On topic pushes published by a client: the publishing user. */
  from?: string;
  /** On the first push of a topic stream's epoch (seq 1): the epoch it starts. */
  epoch?: string;
  [field: string]: unknown;
}

export interface SubscribedMessage {
  type: "subscribed";
  topic: string;
  /** The topic's current seq (0 when it has no numbered push). */
  seq: number;
  /** The topic's epoch, or the placeholder "0000000000000000". */
  epoch: string;
  /** Present when the subscribe carried since/epoch (a re-subscribe after a reconnect). */
  resumed?: boolean;
  ref?: Ref;
  [field: string]: unknown;
}

export interface UnsubscribedMessage {
  type: "unsubscribed";
  topic: string;
  ref?: Ref;
  /** Set when the server ended the subscription on its own (e.g. "forbidden"). */
  reason?: string;
  [field: string]: unknown;
}

export interface PublishedMessage {
  type: "published";
  topic: string;
  /** The push's number in the topic's stream. */
  seq: number;
  ref?: Ref;
  [field: string]: unknown;
}

export interface SentMessage {
  type: "sent";
  ref?: Ref;
  [field: string]: unknown;
}

export interface RefreshedMessage {
  type: "refreshed";
  /** The new token's exp (seconds since the Unix epoch), or null for a token without one. */
  exp: number | null;
  ref?: Ref;
  [field: string]: unknown;
}

export interface PongMessage {
  type: "pong";
  ref?: Ref;
  [field: string]: unknown;
}

/** The server is draining: reconnect after `after_ms` (the client adds its own jitter). */
export interface ReconnectMessage {
  type: "reconnect";
  after_ms: number;
  [field: string]: unknown;
}

/** The token runs out in `in_ms`; the client refreshes it through `getToken`. */
export interface TokenExpiringMessage {
  type: "token_expiring";
  in_ms: number;
  [field: string]: unknown;
}

/** A client message was refused; the connection stays open. */
export interface ErrorMessage {
  type: "error";
  /** E.g. "forbidden_topic", "rate_limited", "overloaded" (protocol.md section 2.2). */
  code: string;
  message: string;
  ref?: Ref;
  [field: string]: unknown;
}

export type ServerMessage =
  | WelcomeMessage
  | PushMessage
  | SubscribedMessage
  | UnsubscribedMessage
  | PublishedMessage
  | SentMessage
  | RefreshedMessage
  | PongMessage
  | ReconnectMessage
  | TokenExpiringMessage
  | ErrorMessage;

// ---- client options ----

/**
 * The part of the WebSocket API the client uses (browsers, `ws`, Node 22's global). The
 * client sets the handlers; it reads `data` of message events, `code` and `reason` of close
 * events and `message` of error events where there is one.
 */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}

export type WebSocketConstructor = new (url: string, ...rest: any[]) => WebSocketLike;

export interface BackoffOptions {
  /** The first reconnect waits up to this long (full jitter). Default 500. */
  minMs?: number;
  /** No reconnect waits longer. Default 30000. */
  maxMs?: number;
  /**
   * A connection that stayed up this long after its welcome starts the backoff over;
   * one closed sooner does not, so a server that accepts and closes at once is retried
   * ever more slowly. Default 10000.
   */
  resetAfterMs?: number;
}

/**
 * The client heartbeat. Given values win; by default both are derived from each welcome.
 * The server sends its own WebSocket Ping after `ping_interval_ms` without a byte from the
 * client; the client's ping comes first, so an idle connection costs the server one round
 * trip (a `ping` parsed, a `pong` sent) per cycle, as its own Ping/Pong would: no extra work.
 */
export interface HeartbeatOptions {
  /**
   * When the client has sent nothing, or heard nothing, for this long it sends
   * `{"type":"ping"}`. Default 0.8 x the welcome's `ping_interval_ms` (25000 when the welcome
   * has none). A value above that lets the server's own Pings come back.
   */
  intervalMs?: number;
  /**
   * When nothing at all arrives this long after the ping, the connection is closed (4000),
   * a "stalled" error is emitted, and the connection is made again. Default: the welcome's
   * `ping_interval_ms`, at least 2000 and at most 10000 (10000 when the welcome has none).
   * The server's `idle_timeout_ms` plays no part: the client's pings keep resetting it.
   */
  timeoutMs?: number;
}

export interface ThrongClientOptions {
  /** A fixed JWT. Give this or `getToken`. */
  token?: string;
  /**
   * Called before each (re)connect and when the server sends `token_expiring`; preferred
   * over `token`. Without it the client stops after a 4001 (token expired) close.
   */
  getToken?: () => string | Promise<string>;
  /** The WebSocket constructor. Default `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  backoff?: BackoffOptions;
  /**
   * How long a request (publish, send, subscribe and unsubscribe while connected, a token
   * refresh) waits for its answer before it is rejected with "timeout". Default 10000.
   * The decision comes one event-loop turn after the timer, so an answer that arrived
   * while a long synchronous task ran is handled first (the heartbeat's give-up likewise).
   */
  requestTimeoutMs?: number;
  /**
   * How long a connection attempt (getToken, the upgrade, the welcome) may take before it
   * is given up and retried with backoff. Default 15000.
   */
  connectTimeoutMs?: number;
  /**
   * Where the browser's `online` events come from. When one fires while a reconnect waits
   * out its backoff (grown to maxMs while offline, say), the next attempt goes within
   * backoff.minMs instead (jittered). Default `globalThis` where it has addEventListener
   * (a browser's window); `false` turns it off.
   */
  onlineEvents?: EventTarget | false;
  /**
   * Detects a connection that died without a close (browsers cannot see it), timed from the
   * welcome unless given (see HeartbeatOptions). Default on; `false` turns it off.
   */
  heartbeat?: HeartbeatOptions | false;
  /**
   * The server's max_message_size, for a server whose welcome does not give it (Throng's
   * does, and that value is used): a longer request is refused locally ("too_large"),
   * since the server would close the connection with 1009 and the client would stop.
   * Default 65536 (the server's default).
   */
  maxMessageBytes?: number;
  /**
   * The server's max_client_data_bytes, for a server whose welcome does not give it (the
   * welcome's value is used when it does): a publish or send whose data, as JSON, is longer is
   * refused locally ("too_large", `sent: false`), since each server refusal counts toward
   * its 1008 close. The length is the server's: its compact re-encoding writes some numbers
   * shorter than JSON.stringify (`1e-6` for `0.000001`, `1e21` for `1e+21`), so nothing the
   * server would take is refused. Default 16384 (the server's default).
   */
  maxClientDataBytes?: number;
  /**
   * The server's client_rate (messages per second), for a server whose welcome does not
   * give it (the welcome's client_rate is used when it does). The client keeps its own copy of the
   * server's token bucket and refuses a publish, send or subscribe locally ("rate_limited",
   * `sent: false`, `retryAfterMs`) that the server would refuse: 11 refusals in a row close
   * the connection with 1008, after which the client stops. Unsubscribes are paced too but
   * never refused: they wait in a queue, and take the bucket's tokens first. When 8
   * requests are unanswered, a ping (with a ref) goes: taken as accepted while the bucket
   * has room for it even if all since the latest answer reached the server at once;
   * otherwise in place of the next paced request, and paced requests are held (refused
   * locally with "rate_limited", unsubscribes queued) until it is answered: see the
   * README's "Refusals in a row". Default 100
   * (the server's default); 0 turns pacing off. Must be 0 or at least 1 (RangeError
   * otherwise: a bucket under one token could never take a message).
   */
  clientRate?: number;
  /** Send `{"type":"ack","seq":N}` after user-stream pushes are delivered. Default true. */
  ackPushes?: boolean;
  /** Returns a number in [0, 1) for the jitter. Default `Math.random` (tests inject one). */
  random?: () => number;
  /**
   * The clock in milliseconds, used only for durations. Default `performance.now` (monotonic;
   * `Date.now` where there is none); tests inject one.
   */
  now?: () => number;
  /** Timer functions, for tests. Default the global ones. */
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (id: any) => void;
}

// ---- events ----

export type ConnectionState = "connecting" | "connected" | "disconnected";

/** A stream the server resumed without loss after a reconnect. */
export interface ResumedEvent {
  stream: "user" | "topic";
  /** Set for topic streams. */
  topic?: string;
  resumed: true;
}

/** A stream whose missed pushes the server no longer holds: reload state from your backend. */
export interface GapEvent {
  stream: "user" | "topic";
  /** Set for topic streams. */
  topic?: string;
}

/**
 * What the client rejects promises with and emits as "error". `code` is the server's error
 * code (e.g. "forbidden_topic") or one of the client's own:
 * - "disconnected": the connection dropped (or close() was called) before the answer came
 *   (`sent: true`: it may or may not have been carried out), or a request was made while
 *   not connected (`sent: false`);
 * - "timeout": no answer within requestTimeoutMs (`sent: true`: it may or may not have
 *   been carried out);
 * - "bad_json": the data cannot be sent as JSON (a BigInt, a cycle), or the server would
 *   refuse it without its ref (nested deeper than 32 levels, an integer beyond 64 bits);
 *   nothing was sent;
 * - "too_large": the request is longer than maxMessageBytes, or its data than
 *   maxClientDataBytes; nothing was sent;
 * - "bad_topic" with `sent: false`: the topic name breaks the server's rule (1 to 200 bytes
 *   of '!' to '~', no '*'); nothing was sent;
 * - "unavailable" with `sent: false`: a send() after the server answered one with
 *   "unavailable" on this connection (no upstream for sends); nothing was sent;
 * - "closed": the server closed with a code the client does not reconnect after
 *   (`closeCode`, `reason`), or close() was called while connect()/subscribe() waited;
 * - "stalled": the heartbeat's ping got no answer within heartbeat.timeoutMs, so the
 *   connection was given up; the client reconnects;
 * - "connect_failed": an attempt failed before the connection opened (refused upgrade,
 *   network) or got no welcome within connectTimeoutMs; the client keeps retrying;
 * - "token_failed": getToken threw, gave no token, or did not answer in time;
 * - "unsubscribed": the server ended a subscription (`topic`, `reason`);
 * - "cancelled": unsubscribe() was called while a subscribe() waited for a connection.
 */
export interface ThrongError extends Error {
  code: string;
  /** The WebSocket close code, for "closed" and "connect_failed". */
  closeCode?: number;
  /** The close reason or the server's reason for ending a subscription. */
  reason?: string;
  /** The topic of a refused subscribe or of an ended subscription. */
  topic?: string;
  /** The ref of the server's error message, when it had one. */
  ref?: Ref;
  /**
   * On the rejection of a request: whether it went out. `false`: it was not sent, and
   * trying again cannot do it twice. `true` with "disconnected" or "timeout": the server
   * may have carried it out. Absent on errors the server answered: their code says what
   * happened (most mean it was not carried out; an `overloaded` publish whose message says
   * so may have gone out, see protocol.md 2.2).
   */
  sent?: boolean;
  /** For a "rate_limited" refused locally: when the client's bucket has room again. */
  retryAfterMs?: number;
}

export interface ThrongEvents {
  /** A push, after dedup. */
  push: PushMessage;
  state: ConnectionState;
  resumed: ResumedEvent;
  gap: GapEvent;
  error: ThrongError;
  welcome: WelcomeMessage;
}

// ---- the client ----

export declare class ThrongClient {
  /** @param url the client endpoint, e.g. "wss://push.example.com/ws" */
  constructor(url: string, options: ThrongClientOptions);

  /**
   * Starts connecting (if not already) and resolves with the next welcome, or the current
   * one when connected. Failed attempts are retried with backoff; rejected with "closed"
   * by close() or a close code after which the client stops.
   */
  connect(): Promise<WelcomeMessage>;

  /** Closes with 1000 and stops reconnecting. A later connect() resumes where it was. */
  close(): void;

  /** Subscribes now or once connected; kept (and resumed) across reconnects. */
  subscribe(topic: string): Promise<SubscribedMessage>;

  /**
   * Leaves a topic; answered locally when not connected. Never refused for the rate: a
   * burst waits and goes as the rate allows; a queued one resolves locally if the
   * connection ends, or once a subscribe(topic) called after it is sent (one refused
   * locally leaves it queued: the server must end what the client forgot).
   */
  unsubscribe(topic: string): Promise<UnsubscribedMessage>;

  /** Publishes to a topic's subscribers; needs a connection. */
  publish(topic: string, data: Json): Promise<PublishedMessage>;

  /** Sends data to the upstream; needs a connection. */
  send(data: Json): Promise<SentMessage>;

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof ThrongEvents>(name: K, fn: (value: ThrongEvents[K]) => void): () => void;
}
