//! The chat's backend (the "upstream"): Throng POSTs it the events of every session
//! (docs/protocol.md 6); it keeps who is in which room and pushes the online count to the
//! room on every change, and answers the commands clients `send` (`/who`).
//!
//! Business logic lives here, not in Throng: Throng only reports connections and
//! subscriptions and delivers what the upstream pushes.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Value};

use crate::http::{Handler, Request, Response, Server};
use crate::pushapi::PushApi;
use crate::rooms::Rooms;

/// Chat rooms are the topics `room:<name>`; other topics are not the chat's business.
pub const ROOM_PREFIX: &str = "room:";
/// Where Throng POSTs its events.
pub const EVENTS_PATH: &str = "/events";

/// What the upstream has seen, for the selftest and the demo's summary.
#[derive(Default)]
pub struct Counts {
    pub joins: AtomicU64,
    pub leaves: AtomicU64,
    pub sends: AtomicU64,
    pub presence_pushes: AtomicU64,
}

struct Shared {
    rooms: Mutex<Rooms>,
    /// Set once Throng is listening: the push API's address is known only then.
    api: OnceLock<PushApi>,
    /// The bearer token Throng must send (`--events-key`), when set.
    events_key: Option<String>,
    counts: Counts,
    /// Set by `stop`: the server is going away with its API, so the leaves its drain
    /// reports are printed but not pushed (nobody is left to see them).
    stopping: AtomicBool,
}

pub struct Upstream {
    server: Server,
    shared: Arc<Shared>,
}

impl Upstream {
    /// Listens on `listen` (e.g. `127.0.0.1:0`) for Throng's events.
    pub fn start(listen: &str, events_key: Option<String>) -> Result<Upstream, String> {
        let shared = Arc::new(Shared {
            rooms: Mutex::default(),
            api: OnceLock::new(),
            events_key,
            counts: Counts::default(),
            stopping: AtomicBool::new(false),
        });
        let for_handler = Arc::clone(&shared);
        let handler: Handler = Arc::new(move |req: &Request| handle(&for_handler, req));
        let server = Server::start(listen, handler)?;
        Ok(Upstream { server, shared })
    }

    /// The URL to give Throng as `--events-url`.
    pub fn events_url(&self) -> String {
        format!("http://{}{EVENTS_PATH}", self.server.addr())
    }

    /// Where to push: Throng's API listener (`http://host:port`) and its API key.
    pub fn set_push_api(&self, base: &str, api_key: &str) {
        let _ = self.shared.api.set(PushApi::new(base, api_key));
    }

    pub fn counts(&self) -> &Counts {
        &self.shared.counts
    }

    /// Stops accepting connections and pushing; call it before stopping the server.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.server.stop();
    }
}

fn say(line: &str) {
    println!("[upstream] {line}");
}

fn handle(shared: &Shared, req: &Request) -> Response {
    if req.path != EVENTS_PATH {
        return Response::new(404, r#"{"error":"not_found"}"#);
    }
    if req.method != "POST" {
        return Response::new(405, r#"{"error":"method_not_allowed"}"#);
    }
    if let Some(key) = &shared.events_key {
        let expected = format!("Bearer {key}");
        if req.header("authorization") != Some(expected.as_str()) {
            // A 4xx makes Throng drop the batch for good (and log it): the key is wrong.
            return Response::new(401, r#"{"error":"unauthorized"}"#);
        }
    }
    let events: Vec<Value> = match serde_json::from_slice(&req.body) {
        Ok(Value::Array(events)) => events,
        Ok(_) => return Response::new(400, r#"{"error":"expected a JSON array of events"}"#),
        Err(e) => {
            let body = json!({"error": format!("invalid JSON: {e}")});
            return Response::new(400, body.to_string());
        }
    };
    handle_batch(shared, &events);
    Response::new(200, r#"{"ok":true}"#)
}

/// Applies a batch in order, then pushes the new member list of each room that changed
/// and answers the commands. The room lock is held until the pushes are sent, so the
/// pushes of two batches cannot overtake each other and a room never shows an older
/// count last.
fn handle_batch(shared: &Shared, events: &[Value]) {
    let mut rooms = match shared.rooms.lock() {
        Ok(r) => r,
        // A panic elsewhere left the lock poisoned; the member map is still usable.
        Err(poisoned) => poisoned.into_inner(),
    };
    let mut changed = BTreeSet::new();
    let mut commands = Vec::new();
    for e in events {
        let user = e["user"].as_str().unwrap_or("?");
        let session = e["session"].as_str().unwrap_or("?");
        let room = e["topic"].as_str().filter(|t| t.starts_with(ROOM_PREFIX));
        match (e["type"].as_str().unwrap_or(""), room) {
            ("connect", _) => say(&format!("{user} connected (session {session})")),
            ("subscribe", Some(topic)) => {
                // A second session of a member, or a repeated event, changes nothing.
                let new_member = rooms.join(topic, session, user);
                if new_member {
                    shared.counts.joins.fetch_add(1, Ordering::Relaxed);
                    say(&format!("{user} joined {topic}"));
                    changed.insert(topic.to_string());
                }
            }
            ("unsubscribe", Some(topic)) => {
                let member_gone = rooms.leave(topic, session);
                if member_gone {
                    shared.counts.leaves.fetch_add(1, Ordering::Relaxed);
                    say(&format!("{user} left {topic}"));
                    changed.insert(topic.to_string());
                }
            }
            ("disconnect", _) => {
                let code = e["code"].as_u64().unwrap_or(0);
                say(&format!(
                    "{user} disconnected (session {session}, close code {code}{})",
                    match code {
                        1000 => ": said goodbye",
                        1006 => ": gone without a close frame",
                        _ => "",
                    }
                ));
                for topic in rooms.disconnect(session) {
                    shared.counts.leaves.fetch_add(1, Ordering::Relaxed);
                    say(&format!("{user} left {topic}"));
                    changed.insert(topic);
                }
            }
            ("send", _) => {
                shared.counts.sends.fetch_add(1, Ordering::Relaxed);
                say(&format!("{user} sent {}", e["data"]));
                commands.push((user.to_string(), e["data"].clone()));
            }
            // Subscriptions to topics that are not rooms, and event types added later.
            _ => {}
        }
    }
    for topic in &changed {
        let members = rooms.members(topic);
        if members.is_empty() {
            say(&format!("{topic}: nobody online"));
        } else {
            say(&format!(
                "{topic}: {} online ({})",
                members.len(),
                members.join(", ")
            ));
        }
    }
    if shared.stopping.load(Ordering::SeqCst) {
        return;
    }
    let Some(api) = shared.api.get() else {
        say("the push API is not known yet; no pushes for this batch");
        return;
    };
    for topic in &changed {
        let members = rooms.members(topic);
        if members.is_empty() {
            // Nobody is subscribed to hear it.
            continue;
        }
        let push = json!({"topic": topic, "data": {"online": members.len(), "members": members}});
        match api.push(&push) {
            Ok(()) => {
                shared
                    .counts
                    .presence_pushes
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => eprintln!("[upstream] cannot push the online count of {topic}: {e}"),
        }
    }
    for (user, data) in commands {
        let answer = command(&rooms, &data);
        if let Err(e) = api.push(&json!({"user": user, "data": answer})) {
            eprintln!("[upstream] cannot answer {user}: {e}");
        }
    }
}

/// The answer to a client's `send` (`{"cmd":"who","room":"lobby"}`), pushed to the user
/// alone.
fn command(rooms: &Rooms, data: &Value) -> Value {
    match data["cmd"].as_str() {
        Some("who") => {
            let room = data["room"].as_str().unwrap_or("lobby");
            let members = rooms.members(&format!("{ROOM_PREFIX}{room}"));
            json!({"who": members, "room": room})
        }
        Some(other) => json!({"error": format!("unknown command {other:?}; try \"who\"")}),
        None => json!({"error": "a send needs {\"cmd\": ...}"}),
    }
}
