//! One member's connection to a chat room: connect with a token, subscribe to the room,
//! publish lines, and turn what Throng sends into chat events.
//!
//! It keeps its place in the room's stream (the last `seq` it processed and the stream's
//! `epoch`), so when the connection drops it reconnects with backoff and subscribes with
//! `since`/`epoch`: what it missed comes back as history (docs/protocol.md 2.1,
//! `subscribed`), or Throng says `resumed:false` when it no longer holds all of it.
//!
//! Single-threaded by design: the owner calls [`Chat::next`] in a loop, and connecting,
//! reading and reconnecting all happen inside it. The selftest drives two members from
//! one thread this way, and a member that is not polled does not reconnect, which makes
//! the scripted disconnect deterministic.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use crate::upstream::ROOM_PREFIX;

/// Connecting, the upgrade and the welcome must each finish within this.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Lifetime of a token minted here; refreshed when Throng says it is expiring.
const TOKEN_TTL_SECS: u64 = 3600;
/// Lines typed while disconnected wait for the next connection, up to this many.
const OUTBOX_MAX: usize = 100;
/// `subscribed` shows this epoch for a topic that has no numbered push yet; it is never a
/// stream's epoch, so resuming with it always answers `resumed:false`.
const NO_EPOCH: &str = "0000000000000000";

/// How the member proves who it is.
pub enum Auth {
    /// The server's HS256 secret: a token is minted for each connection (and each
    /// refresh), with the rights to subscribe and publish to every room.
    Secret(String),
    /// A token minted elsewhere; it cannot be renewed here.
    Token(String),
}

pub struct Options {
    /// `ws://host:port/ws`
    pub url: String,
    pub user: String,
    /// The room name; its topic is `room:<room>`.
    pub room: String,
    pub auth: Auth,
}

/// How a subscription to the room began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// The first subscription: nothing to catch up on.
    Fresh,
    /// Back after a drop, and Throng still held everything after `since`: pushes up to
    /// `upto` follow as history.
    Replaying { since: u64, upto: u64 },
    /// Back after a drop, but the history is gone (`resumed:false`): what came after
    /// `since` is lost. `since` is None when the stream's epoch was not known yet.
    Unavailable { since: Option<u64> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The upgrade succeeded; the subscribe is on its way.
    Connected {
        session: String,
    },
    /// The room's subscription is confirmed; `seq` is the room's current position.
    Joined {
        topic: String,
        seq: u64,
        resume: Resume,
    },
    /// A chat line. `history`: it was missed while disconnected and replayed.
    Message {
        seq: u64,
        from: String,
        text: String,
        history: bool,
    },
    /// The upstream's member list for the room, with who joined or left since the last.
    Presence {
        seq: u64,
        online: u64,
        members: Vec<String>,
        joined: Vec<String>,
        left: Vec<String>,
        history: bool,
    },
    /// The upstream's answer to `/who`.
    Who {
        room: String,
        members: Vec<String>,
    },
    /// Any other push, as its `data`.
    Other(Value),
    /// Throng refused a message (`error`).
    Refused {
        code: String,
        message: String,
    },
    Notice(String),
    /// The connection ended; the next attempt is in `retry_in`.
    Disconnected {
        reason: String,
        retry_in: Duration,
    },
    /// A connection attempt failed; the next is in `retry_in`.
    ConnectFailed {
        error: String,
        retry_in: Duration,
    },
    /// The connection ended and will not be retried (a refusal that retrying cannot fix,
    /// a deliberate close, or `leave`).
    Gone {
        reason: String,
    },
}

/// The member's place in the room's stream.
#[derive(Debug, Clone)]
struct Cursor {
    seq: u64,
    /// None while unknown: the room had no push when we subscribed, or its numbering
    /// restarted. Learnt by subscribing again (answered with the current epoch).
    epoch: Option<String>,
}

pub struct Chat {
    opts: Options,
    topic: String,
    ws: Option<WebSocket<TcpStream>>,
    cursor: Option<Cursor>,
    /// The `since` of the subscribe on its way, if it carried one.
    asked_since: Option<u64>,
    /// After a resumed subscribe, pushes up to this `seq` are the missed ones.
    replay_upto: u64,
    /// Whether the room's subscription is confirmed on this connection.
    joined: bool,
    /// A subscribe sent only to learn the epoch is on its way.
    learning_epoch: bool,
    /// The room's members as last pushed; None until the first list after joining
    /// without history (then there is nothing to compare with).
    members: Option<Vec<String>>,
    backoff: Backoff,
    /// When to connect next (while `ws` is None).
    retry_at: Instant,
    gone: bool,
    pending: VecDeque<Event>,
    outbox: VecDeque<String>,
    refs: u64,
}

impl Chat {
    /// A member that connects on the first [`Chat::next`].
    pub fn new(opts: Options) -> Chat {
        let topic = format!("{ROOM_PREFIX}{}", opts.room);
        Chat {
            opts,
            topic,
            ws: None,
            cursor: None,
            asked_since: None,
            replay_upto: 0,
            joined: false,
            learning_epoch: false,
            members: None,
            backoff: Backoff::new(),
            retry_at: Instant::now(),
            gone: false,
            pending: VecDeque::new(),
            outbox: VecDeque::new(),
            refs: 0,
        }
    }

    pub fn user(&self) -> &str {
        &self.opts.user
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Whether a drop now could be resumed: the member knows the room's seq and epoch.
    pub fn resumable(&self) -> bool {
        self.cursor.as_ref().is_some_and(|c| c.epoch.is_some())
    }

    /// Whether the member stopped for good (see [`Event::Gone`]).
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// The next event, waiting at most about `wait` for one. Connects or reconnects when
    /// it is time to.
    pub fn next(&mut self, wait: Duration) -> Option<Event> {
        if let Some(e) = self.pending.pop_front() {
            return Some(e);
        }
        if self.gone {
            std::thread::sleep(wait);
            return None;
        }
        if self.ws.is_none() {
            let now = Instant::now();
            if self.retry_at > now {
                std::thread::sleep(wait.min(self.retry_at - now));
                return None;
            }
            return Some(match self.connect() {
                Ok(session) => Event::Connected { session },
                Err(Failure { error, retry: true }) => {
                    let retry_in = self.backoff.next();
                    self.retry_at = Instant::now() + retry_in;
                    Event::ConnectFailed { error, retry_in }
                }
                Err(Failure {
                    error,
                    retry: false,
                }) => {
                    self.gone = true;
                    Event::Gone { reason: error }
                }
            });
        }
        let read = self.read(wait)?;
        let event = match read {
            Read::Text(v) => self.handle(&v),
            Read::Closed { code, reason } => Some(self.lost_by_close(code, &reason)),
            Read::Failed(e) => Some(self.lost(format!("connection lost: {e}"), true)),
        };
        event.or_else(|| self.pending.pop_front())
    }

    /// Publishes a chat line to the room, or keeps it for the next connection.
    pub fn say(&mut self, text: &str) {
        if !self.joined {
            if self.outbox.len() >= OUTBOX_MAX {
                self.pending.push_back(Event::Notice(format!(
                    "not connected, and {OUTBOX_MAX} lines already wait: {text:?} was dropped"
                )));
            } else {
                self.outbox.push_back(text.to_string());
                self.pending.push_back(Event::Notice(
                    "not connected: the line will be sent after reconnecting".into(),
                ));
            }
            return;
        }
        let r = self.next_ref("p");
        let msg = json!({"type": "publish", "topic": self.topic, "data": {"text": text}, "ref": r});
        self.send(&msg);
    }

    /// Asks the upstream who is in the room (answered with [`Event::Who`]).
    pub fn who(&mut self) {
        if self.ws.is_none() {
            self.pending
                .push_back(Event::Notice("not connected; try again in a moment".into()));
            return;
        }
        let r = self.next_ref("s");
        let msg = json!({"type": "send", "data": {"cmd": "who", "room": self.opts.room}, "ref": r});
        self.send(&msg);
    }

    /// Cuts the connection without a close frame, as a lost network would, and stays
    /// away for `pause` before reconnecting (to show history on reconnect).
    pub fn drop_connection(&mut self, pause: Duration) {
        if let Some(ws) = self.ws.take() {
            let _ = ws.get_ref().shutdown(Shutdown::Both);
        }
        self.reset_connection();
        self.backoff.reset();
        self.retry_at = Instant::now() + pause;
        self.pending.push_back(Event::Disconnected {
            reason: "dropped on purpose, without a close frame".into(),
            retry_in: pause,
        });
    }

    /// Leaves for good: a close handshake (code 1000), then no reconnect.
    pub fn leave(&mut self) {
        self.gone = true;
        let Some(mut ws) = self.ws.take() else {
            return;
        };
        self.reset_connection();
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        if ws.close(Some(frame)).is_err() {
            return;
        }
        // Wait (bounded) for the server's close reply, so it sees a clean goodbye.
        let _ = ws.get_ref().set_read_timeout(Some(IO_TIMEOUT));
        let deadline = Instant::now() + IO_TIMEOUT;
        while Instant::now() < deadline {
            if ws.read().is_err() {
                break;
            }
        }
    }

    fn next_ref(&mut self, kind: &str) -> String {
        self.refs += 1;
        format!("{kind}-{}", self.refs)
    }

    fn token(&self) -> Result<String, String> {
        match &self.opts.auth {
            Auth::Token(t) => Ok(t.clone()),
            Auth::Secret(secret) => {
                let rooms = [format!("{ROOM_PREFIX}*")];
                throng::auth::mint_hs256(
                    secret,
                    &self.opts.user,
                    TOKEN_TTL_SECS,
                    Some(&rooms),
                    Some(&rooms),
                )
                .map_err(|e| format!("cannot sign a token: {e}"))
            }
        }
    }

    /// Upgrades, reads the welcome and sends the room's subscribe (with `since`/`epoch`
    /// when the member has a place to resume from). Returns the session id.
    fn connect(&mut self) -> Result<String, Failure> {
        let token = self.token().map_err(Failure::fatal)?;
        let mut req = self
            .opts
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| Failure::fatal(format!("bad --url {:?}: {e}", self.opts.url)))?;
        let auth = format!("Bearer {token}")
            .parse()
            .map_err(|e| Failure::fatal(format!("the token cannot be a header: {e}")))?;
        req.headers_mut().insert("Authorization", auth);
        let host = req.uri().host().unwrap_or("127.0.0.1").to_string();
        let port = req.uri().port_u16().unwrap_or(80);
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| Failure::retry(format!("cannot resolve {host}:{port}: {e}")))?
            .next()
            .ok_or_else(|| Failure::retry(format!("{host}:{port} has no address")))?;
        let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .map_err(|e| Failure::retry(format!("cannot connect to {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        tcp.set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| tcp.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(|e| Failure::retry(format!("cannot set socket timeouts: {e}")))?;
        let (mut ws, _) = tungstenite::client::client(req, tcp).map_err(refused_upgrade)?;
        let welcome = loop {
            match ws.read() {
                Ok(Message::Text(t)) => break t,
                Ok(_) => {}
                Err(e) => return Err(Failure::retry(format!("no welcome: {e}"))),
            }
        };
        let welcome: Value = serde_json::from_str(welcome.as_str())
            .map_err(|e| Failure::retry(format!("the welcome is not JSON: {e}")))?;
        if welcome["type"] != "welcome" {
            return Err(Failure::retry(format!("expected welcome, got {welcome}")));
        }
        let session = welcome["session"].as_str().unwrap_or("?").to_string();
        self.ws = Some(ws);
        self.subscribe_to_room();
        Ok(session)
    }

    fn subscribe_to_room(&mut self) {
        let r = self.next_ref("join");
        let mut msg = json!({"type": "subscribe", "topic": self.topic, "ref": r});
        self.asked_since = None;
        if let Some(Cursor {
            seq,
            epoch: Some(epoch),
        }) = &self.cursor
        {
            msg["since"] = json!(seq);
            msg["epoch"] = json!(epoch);
            self.asked_since = Some(*seq);
        }
        self.send(&msg);
    }

    fn send(&mut self, msg: &Value) {
        let Some(ws) = self.ws.as_mut() else {
            return;
        };
        if let Err(e) = ws.send(Message::text(msg.to_string())) {
            let event = self.lost(format!("cannot send: {e}"), true);
            self.pending.push_back(event);
        }
    }

    fn read(&mut self, wait: Duration) -> Option<Read> {
        let ws = self.ws.as_mut()?;
        let _ = ws
            .get_ref()
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))));
        match ws.read() {
            Ok(Message::Text(t)) => match serde_json::from_str(t.as_str()) {
                Ok(v) => Some(Read::Text(v)),
                Err(e) => {
                    self.pending.push_back(Event::Notice(format!(
                        "the server sent text that is not JSON ({e}): {t}"
                    )));
                    None
                }
            },
            Ok(Message::Close(frame)) => {
                // Sends the close reply tungstenite queued; the socket goes next.
                let _ = ws.flush();
                Some(Read::Closed {
                    code: frame.as_ref().map(|f| u16::from(f.code)),
                    reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                })
            }
            // Pings are answered inside tungstenite; nothing else is sent by Throng.
            Ok(_) => None,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                None
            }
            Err(e) => Some(Read::Failed(e.to_string())),
        }
    }

    fn handle(&mut self, v: &Value) -> Option<Event> {
        match v["type"].as_str().unwrap_or("") {
            "subscribed" if v["topic"] == self.topic.as_str() => self.on_subscribed(v),
            "push" => Some(self.on_push(v)),
            "error" => Some(Event::Refused {
                code: v["code"].as_str().unwrap_or("?").to_string(),
                message: v["message"].as_str().unwrap_or("").to_string(),
            }),
            "token_expiring" => Some(self.refresh()),
            "reconnect" => Some(Event::Notice(format!(
                "the server is restarting; it closes this connection in {} ms, then we reconnect",
                v["after_ms"]
            ))),
            // `published`, `sent`, `pong`, `refreshed`: nothing to show.
            _ => None,
        }
    }

    fn on_subscribed(&mut self, v: &Value) -> Option<Event> {
        let seq = v["seq"].as_u64().unwrap_or(0);
        let epoch = v["epoch"]
            .as_str()
            .filter(|e| *e != NO_EPOCH)
            .map(str::to_string);
        if v["ref"].as_str().is_some_and(|r| r.starts_with("epoch-")) {
            self.learning_epoch = false;
            if let Some(c) = self.cursor.as_mut().filter(|c| c.epoch.is_none()) {
                c.epoch = epoch;
            }
            return None;
        }
        let resume = match (self.asked_since.take(), v["resumed"].as_bool()) {
            (Some(since), Some(true)) => {
                self.replay_upto = seq;
                Resume::Replaying { since, upto: seq }
            }
            (Some(since), _) => Resume::Unavailable { since: Some(since) },
            (None, _) if self.cursor.is_some() => Resume::Unavailable { since: None },
            (None, _) => Resume::Fresh,
        };
        if !matches!(resume, Resume::Replaying { .. }) {
            self.cursor = Some(Cursor { seq, epoch });
            // What happened meanwhile is unknown: the next list is not a change.
            self.members = None;
        }
        self.joined = true;
        self.backoff.reset();
        while let Some(text) = self.outbox.pop_front() {
            self.say(&text);
        }
        Some(Event::Joined {
            topic: self.topic.clone(),
            seq,
            resume,
        })
    }

    fn on_push(&mut self, v: &Value) -> Event {
        let data = &v["data"];
        let Some(topic) = v["topic"].as_str() else {
            if let Some(members) = data["who"].as_array() {
                return Event::Who {
                    room: data["room"].as_str().unwrap_or("?").to_string(),
                    members: strings(members),
                };
            }
            return Event::Other(data.clone());
        };
        if topic != self.topic {
            return Event::Other(v.clone());
        }
        let seq = v["seq"].as_u64().unwrap_or(0);
        self.advance(seq);
        let history = seq <= self.replay_upto;
        if let Some(online) = data["online"].as_u64() {
            let members = data["members"]
                .as_array()
                .map(|m| strings(m))
                .unwrap_or_default();
            let (joined, left) = match self.members.replace(members.clone()) {
                Some(before) => (
                    members
                        .iter()
                        .filter(|m| !before.contains(m))
                        .cloned()
                        .collect(),
                    before
                        .into_iter()
                        .filter(|m| !members.contains(m))
                        .collect(),
                ),
                None => (Vec::new(), Vec::new()),
            };
            return Event::Presence {
                seq,
                online,
                members,
                joined,
                left,
                history,
            };
        }
        let text = data["text"].as_str().or(data.as_str());
        match text {
            Some(text) => Event::Message {
                seq,
                // A push from the API has no `from`: the upstream said it.
                from: v["from"].as_str().unwrap_or("(server)").to_string(),
                text: text.to_string(),
                history,
            },
            None => Event::Other(v.clone()),
        }
    }

    /// Moves the cursor to `seq`, and learns the epoch when it is not known.
    fn advance(&mut self, seq: u64) {
        match self.cursor.as_mut() {
            // Numbering starts again at 1 in a new epoch when the room was forgotten
            // (docs/protocol.md 2.1); which epoch, only a subscribe says.
            Some(c) if seq == 1 && c.seq >= 1 => {
                c.seq = 1;
                c.epoch = None;
            }
            Some(c) => c.seq = c.seq.max(seq),
            None => {
                self.cursor = Some(Cursor { seq, epoch: None });
            }
        }
        if !self.resumable() && !self.learning_epoch && self.ws.is_some() {
            // Subscribing again to a topic the connection holds only answers `subscribed`
            // with the stream's seq and epoch: no second membership, no event upstream.
            self.learning_epoch = true;
            let r = self.next_ref("epoch");
            self.send(&json!({"type": "subscribe", "topic": self.topic, "ref": r}));
        }
    }

    fn refresh(&mut self) -> Event {
        if let Auth::Token(_) = self.opts.auth {
            return Event::Notice(
                "the token expires soon and cannot be renewed here; restart with a new --token"
                    .into(),
            );
        }
        match self.token() {
            Ok(token) => {
                let r = self.next_ref("r");
                self.send(&json!({"type": "refresh", "token": token, "ref": r}));
                Event::Notice("the token expires soon: sent a fresh one".into())
            }
            Err(e) => Event::Notice(e),
        }
    }

    fn reset_connection(&mut self) {
        self.joined = false;
        self.learning_epoch = false;
        self.asked_since = None;
        self.replay_upto = 0;
    }

    fn lost(&mut self, reason: String, retry: bool) -> Event {
        self.ws = None;
        self.reset_connection();
        if !retry {
            self.gone = true;
            return Event::Gone { reason };
        }
        let retry_in = self.backoff.next();
        self.retry_at = Instant::now() + retry_in;
        Event::Disconnected { reason, retry_in }
    }

    /// docs/protocol.md 3.2: reconnect after anything but a bug of ours or a deliberate
    /// close.
    fn lost_by_close(&mut self, code: Option<u16>, reason: &str) -> Event {
        let retry = match code {
            Some(1000 | 1002 | 1003 | 1007 | 1008 | 1009 | 4003 | 4009) => false,
            // A minted token is replaced on reconnect; a given one cannot be.
            Some(4001) => matches!(self.opts.auth, Auth::Secret(_)),
            _ => true,
        };
        let code = code.map_or("none".to_string(), |c| c.to_string());
        self.lost(
            format!("the server closed the connection (code {code}: {reason})"),
            retry,
        )
    }
}

enum Read {
    Text(Value),
    Closed { code: Option<u16>, reason: String },
    Failed(String),
}

/// A failed connection attempt, and whether trying again can help.
struct Failure {
    error: String,
    retry: bool,
}

impl Failure {
    fn retry(error: String) -> Failure {
        Failure { error, retry: true }
    }

    fn fatal(error: String) -> Failure {
        Failure {
            error,
            retry: false,
        }
    }
}

/// A refused upgrade: busy or restarting servers are retried; a bad token, URL or
/// request is not (docs/protocol.md 1.2).
fn refused_upgrade(
    e: tungstenite::HandshakeError<tungstenite::ClientHandshake<TcpStream>>,
) -> Failure {
    match e {
        tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
            let error = format!("the server refused the upgrade with {status}: {body}");
            if matches!(status, 429 | 503) {
                Failure::retry(error)
            } else if status == 401 {
                Failure::fatal(format!("{error} (is --secret the server's JWT secret?)"))
            } else {
                Failure::fatal(error)
            }
        }
        other => Failure::retry(format!("the upgrade failed: {other}")),
    }
}

fn strings(values: &[Value]) -> Vec<String> {
    values
        .iter()
        .filter_map(|m| m.as_str().map(str::to_string))
        .collect()
}

/// Reconnect delays: 200 ms doubling to 5 s, each with ±20% jitter so that members cut
/// off together do not all come back in the same instant.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(Self::MAX);
        d.mul_f64(rand::random_range(0.8..1.2))
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}
