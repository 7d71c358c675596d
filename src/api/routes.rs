//! The push API's endpoints (docs/protocol.md 4).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde::Deserialize;

use super::dedup::Stream;
use super::push::{self, ParsedPush, Target};
use super::{Api, Handled, Request, WaitKind};
use crate::auth::validate_user;
use crate::command::{MemberPage, ShardCmd, Ticket};
use crate::frame::close;
use crate::http;
use crate::link::SendError;
use crate::route::shard_of;

/// Why a push could not be queued.
pub(super) enum QueueError {
    /// A shard queue is full.
    Overloaded,
    /// The server is shutting down.
    Draining,
    /// Cluster mode: Redis cannot be reached.
    BrokerUnavailable,
}

/// What became of an accepted push.
pub(super) enum Queued {
    /// Sent as this many shard commands.
    Sent(usize),
    /// Its `id` was already accepted on its stream (on every user of a `users` target)
    /// within the dedup window: nothing sent, nothing numbered.
    Duplicate,
    /// Cluster mode: handed to the publisher for Redis (which deduplicates and numbers).
    Published,
}

/// The streams a push's `id` is remembered on once it is queued.
enum Remember {
    User(String),
    Users(Vec<String>),
    Topic(String),
}

#[derive(Deserialize)]
struct DisconnectBody {
    user: serde_json::Value,
    code: Option<u16>,
    reason: Option<String>,
}

fn json(status: u16, body: &serde_json::Value, keep_alive: bool) -> Handled {
    Handled::Respond(http::response(
        status,
        "application/json",
        body.to_string().as_bytes(),
        keep_alive,
        "",
    ))
}

fn error(status: u16, code: &str, message: &str, keep_alive: bool) -> Handled {
    let extra = if status == 503 {
        "Retry-After: 1\r\n"
    } else {
        ""
    };
    Handled::Respond(http::error_response(
        status, code, message, keep_alive, extra,
    ))
}

/// The 405 for a known path asked with another method; `allow` lists the methods it
/// takes (RFC 9110 15.5.6: a 405 carries `Allow`).
fn not_allowed(path: &str, allow: &str, keep_alive: bool) -> Handled {
    Handled::Respond(http::error_response(
        405,
        "method_not_allowed",
        &format!("{path} needs {}", allow.replace(", ", " or ")),
        keep_alive,
        &format!("Allow: {allow}\r\n"),
    ))
}

/// Whether `path` is a read-only endpoint: `GET` answers it, and `HEAD` as `GET`
/// without the body.
pub(super) fn read_only(path: &str) -> bool {
    matches!(path, "/v1/stats" | "/metrics" | "/healthz" | "/readyz")
        || path.starts_with("/v1/topics/")
        || path.starts_with("/v1/presence/")
}

/// The 503 for a command a shard queue (or the broker) could not take.
fn refused(e: QueueError, keep_alive: bool) -> Handled {
    match e {
        QueueError::Overloaded => error(503, "overloaded", "shard queue is full", keep_alive),
        QueueError::Draining => error(503, "draining", "server is shutting down", keep_alive),
        QueueError::BrokerUnavailable => error(
            503,
            "broker_unavailable",
            "Redis cannot take pushes from this node now (GET /readyz says why); retry after a moment",
            keep_alive,
        ),
    }
}

impl Api {
    /// Whether a request for `path` may be served: `Err` holds the 401's message when the
    /// key it needs is missing or wrong.
    pub(super) fn authorize(
        &self,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<(), &'static str> {
        if self.key_set.is_empty() || self.is_public(path) {
            return Ok(());
        }
        let given = authorization
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, k)| k.trim());
        match given {
            None if authorization.is_some() => Err(
                "the Authorization header must be \"Bearer <api key>\" (another scheme, or no key)",
            ),
            None => Err("missing Authorization: Bearer <api key>"),
            Some(k) if !super::keys::matches(&self.key_set, k) => Err("wrong API key"),
            Some(_) => Ok(()),
        }
    }

    /// Whether `path` is served without the key: probes rarely carry secrets and health
    /// reveals nothing; metrics may be opened.
    pub(super) fn is_public(&self, path: &str) -> bool {
        matches!(path, "/healthz" | "/readyz") || (path == "/metrics" && self.config.metrics_public)
    }

    /// Answers a request whose key was checked (`authorize`).
    pub(super) fn handle(&mut self, key: usize, req: &Request<'_>, keep_alive: bool) -> Handled {
        let wait = form_urlencoded::parse(req.query.as_bytes())
            .any(|(k, v)| k == "wait" && (v == "1" || v == "true"));
        match (req.method, req.path) {
            ("POST", "/v1/push") => self.push_one(key, req.body, wait, keep_alive),
            ("POST", "/v1/push/batch") => self.push_batch(req.body, keep_alive),
            ("POST", "/v1/disconnect") => self.disconnect(key, req.body, keep_alive),
            ("POST", "/v1/drain") => self.drain(keep_alive),
            ("GET", "/v1/stats") => self.stats(key, keep_alive),
            ("GET", "/metrics") => Handled::Respond(http::response(
                200,
                "text/plain; version=0.0.4",
                self.metrics.prometheus().as_bytes(),
                keep_alive,
                "",
            )),
            ("GET", "/healthz") => json(200, &serde_json::json!({"status": "ok"}), keep_alive),
            ("GET", "/readyz") => {
                if self.draining.load(Relaxed) {
                    error(503, "draining", "server is shutting down", keep_alive)
                } else if !self.broker_up() {
                    let why = self.broker.as_ref().and_then(|b| b.blocks.why());
                    error(
                        503,
                        "broker_unavailable",
                        why.unwrap_or("cannot reach Redis; pushes are refused until it is back"),
                        keep_alive,
                    )
                } else {
                    let mut body = serde_json::json!({"status": "ready"});
                    if let Some(w) = self.broker.as_ref().and_then(|b| b.blocks.warning()) {
                        body["warning"] = serde_json::json!(w);
                    }
                    // Pushes from the API and other ingresses go on without Kafka: say
                    // so rather than take the node out of rotation.
                    if self.metrics.kafka.enabled.load(Relaxed) {
                        let up = self.metrics.kafka.up.load(Relaxed);
                        body["kafka"] = serde_json::json!(if up { "up" } else { "down" });
                    }
                    json(200, &body, keep_alive)
                }
            }
            ("GET", p) if p.starts_with("/v1/topics/") => {
                self.topic_info(key, &p["/v1/topics/".len()..], req.query, keep_alive)
            }
            ("GET", p) if p.starts_with("/v1/presence/") => {
                self.presence(key, &p["/v1/presence/".len()..], keep_alive)
            }
            (_, "/v1/push" | "/v1/push/batch" | "/v1/disconnect" | "/v1/drain") => {
                not_allowed(req.path, "POST", keep_alive)
            }
            (_, p) if read_only(p) => not_allowed(req.path, "GET, HEAD", keep_alive),
            _ => error(
                404,
                "not_found",
                &format!("no endpoint {} {}", req.method, req.path),
                keep_alive,
            ),
        }
    }

    /// `POST /v1/drain`: what SIGTERM does. The shards and the acceptor see the flag on
    /// their next turn (at most 100 ms); the process exits when the drain is done.
    fn drain(&mut self, keep_alive: bool) -> Handled {
        let already = self.draining.swap(true, Relaxed);
        self.metrics.draining.store(true, Relaxed);
        if !already {
            tracing::info!(
                drain_ms = self.config.drain.as_millis() as u64,
                "draining (POST /v1/drain)"
            );
        }
        json(
            202,
            &serde_json::json!({"draining": true, "drain_ms": self.config.drain.as_millis() as u64}),
            keep_alive,
        )
    }

    fn push_one(&mut self, key: usize, body: &[u8], wait: bool, keep_alive: bool) -> Handled {
        let parsed = match push::parse(body) {
            Ok(p) => p,
            Err(e) => {
                self.metrics.pushes_rejected.fetch_add(1, Relaxed);
                return error(400, "bad_request", &e, keep_alive);
            }
        };
        let ticket = wait.then(|| Ticket {
            conn: key,
            serial: self.next_serial(),
        });
        let users = matches!(parsed.target, push::Target::Users(_));
        match self.enqueue(parsed, ticket) {
            Ok(Queued::Duplicate) => {
                self.metrics.pushes_accepted.fetch_add(1, Relaxed);
                self.metrics.pushes_duplicate.fetch_add(1, Relaxed);
                // Nothing was sent to a shard, so nothing was delivered and no shard was
                // asked who is online: `users_online` is left out rather than guessed.
                if wait {
                    json(
                        200,
                        &serde_json::json!({"delivered": 0, "duplicate": true}),
                        keep_alive,
                    )
                } else {
                    json(
                        202,
                        &serde_json::json!({"accepted": true, "duplicate": true}),
                        keep_alive,
                    )
                }
            }
            Ok(Queued::Published) => {
                self.metrics.pushes_accepted.fetch_add(1, Relaxed);
                match ticket {
                    Some(t) => Handled::Wait {
                        kind: WaitKind::Published { users },
                        serial: t.serial,
                        expected: 1,
                        user: None,
                        page: None,
                    },
                    None => json(202, &serde_json::json!({"accepted": true}), keep_alive),
                }
            }
            Ok(Queued::Sent(expected)) => {
                self.metrics.pushes_accepted.fetch_add(1, Relaxed);
                match ticket {
                    Some(t) if expected > 0 => Handled::Wait {
                        kind: WaitKind::Push,
                        serial: t.serial,
                        expected,
                        user: None,
                        page: None,
                    },
                    Some(_) => json(
                        200,
                        &serde_json::json!({"delivered": 0, "users_online": 0}),
                        keep_alive,
                    ),
                    None => json(202, &serde_json::json!({"accepted": true}), keep_alive),
                }
            }
            Err(QueueError::Overloaded) => error(
                503,
                "overloaded",
                "the queues to the shards (cluster mode: to Redis) are full; retry after a moment",
                keep_alive,
            ),
            Err(QueueError::Draining) => {
                error(503, "draining", "server is shutting down", keep_alive)
            }
            Err(QueueError::BrokerUnavailable) => error(
                503,
                "broker_unavailable",
                "Redis cannot take pushes from this node now (GET /readyz says why); retry after a moment",
                keep_alive,
            ),
        }
    }

    fn push_batch(&mut self, body: &[u8], keep_alive: bool) -> Handled {
        let mut accepted = 0u64;
        let mut duplicates = 0u64;
        let mut rejected = Vec::new();
        for (i, line) in body.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let outcome = match push::parse(line) {
                Ok(p) => match self.enqueue(p, None) {
                    Ok(Queued::Sent(_) | Queued::Published) => Ok(()),
                    Ok(Queued::Duplicate) => {
                        duplicates += 1;
                        self.metrics.pushes_duplicate.fetch_add(1, Relaxed);
                        Ok(())
                    }
                    Err(QueueError::Overloaded) => {
                        Err("overloaded: the queues to the shards (cluster mode: to Redis) are full; retry this line".to_string())
                    }
                    Err(QueueError::Draining) => {
                        Err("draining: server is shutting down".to_string())
                    }
                    Err(QueueError::BrokerUnavailable) => {
                        Err("broker_unavailable: cannot reach Redis; retry this line".to_string())
                    }
                },
                Err(e) => {
                    self.metrics.pushes_rejected.fetch_add(1, Relaxed);
                    Err(e)
                }
            };
            match outcome {
                Ok(()) => {
                    accepted += 1;
                    self.metrics.pushes_accepted.fetch_add(1, Relaxed);
                }
                Err(e) => rejected.push(serde_json::json!({"line": i + 1, "error": e})),
            }
        }
        json(
            200,
            &serde_json::json!({"accepted": accepted, "duplicates": duplicates, "rejected": rejected}),
            keep_alive,
        )
    }

    /// Drops the users of `p` that already accepted its `id`, and says whether anything is
    /// left to send, and which streams to remember the id on once it is queued. Broadcast
    /// pushes are not a stream: never deduplicated.
    fn dedup(&mut self, p: &mut ParsedPush) -> Option<Option<Remember>> {
        let Some(id) = p.id.as_deref() else {
            return Some(None);
        };
        let now = self.now;
        let d = &mut self.dedup;
        match &mut p.target {
            Target::User(u) => {
                (!d.seen(Stream::User(u), id, now)).then(|| Some(Remember::User(u.clone())))
            }
            Target::Topic(t) => {
                (!d.seen(Stream::Topic(t), id, now)).then(|| Some(Remember::Topic(t.clone())))
            }
            Target::Users(list) => {
                list.retain(|u| !d.seen(Stream::User(u), id, now));
                (!list.is_empty()).then(|| Some(Remember::Users(list.clone())))
            }
            Target::Broadcast => Some(None),
        }
    }

    /// Queues one push on every shard it needs, all or none; returns the command count, or
    /// that it is a duplicate (docs/protocol.md 4.3), which is sent nowhere.
    pub(super) fn enqueue(
        &mut self,
        mut p: ParsedPush,
        ticket: Option<Ticket>,
    ) -> Result<Queued, QueueError> {
        if let Some(b) = &self.broker {
            // Cluster mode: Redis deduplicates and numbers (docs/protocol.md 5).
            if !b.accepting() {
                return Err(QueueError::BrokerUnavailable);
            }
            let cmd = crate::broker::PublishCmd { push: p, ticket };
            let queued = &self.metrics.broker.publish_queued_bytes;
            let budget = Some(self.config.max_outbound_total_bytes);
            return match b.try_publish(cmd, queued, budget) {
                Ok(()) => Ok(Queued::Published),
                Err(crate::link::SendError::Full) => {
                    self.metrics.queue_full_refusals.fetch_add(1, Relaxed);
                    Err(QueueError::Overloaded)
                }
                Err(crate::link::SendError::Stopped) => Err(QueueError::Draining),
            };
        }
        // Before numbering: a duplicate never takes a topic `seq`, and never reaches a shard
        // (so never a user `seq` either).
        let Some(remember) = self.dedup(&mut p) else {
            return Ok(Queued::Duplicate);
        };
        let id = p.id.clone();
        let (n, _) = self.send_push(p, ticket)?;
        // Remembered only once queued: a push refused with 503 is retried as new.
        if let (Some(id), Some(r)) = (id, remember) {
            let now = self.now;
            match r {
                Remember::User(u) => self.dedup.record(Stream::User(&u), &id, now),
                Remember::Topic(t) => self.dedup.record(Stream::Topic(&t), &id, now),
                Remember::Users(list) => {
                    for u in &list {
                        self.dedup.record(Stream::User(u), &id, now);
                    }
                }
            }
        }
        Ok(Queued::Sent(n))
    }

    /// Numbers (topics) and queues one push on every shard it needs, all or none; returns
    /// the command count and, for a topic push, its `seq`.
    pub(super) fn send_push(
        &mut self,
        p: ParsedPush,
        ticket: Option<Ticket>,
    ) -> Result<(usize, Option<u64>), QueueError> {
        // While draining, connections still open get pushes until their turn to close; only
        // a shard that has stopped refuses (503 draining).
        // Topic pushes are numbered here, before encoding, so all shards share one frame.
        let stream = match &p.target {
            push::Target::Topic(t) => Some(self.sequencer.next(t, self.now)),
            _ => None,
        };
        let cmds = push::route(p, self.shards.len(), ticket, stream);
        let numbered = cmds.first().and_then(|(_, c)| match c {
            ShardCmd::Topic { topic, seq, .. } => Some((Arc::clone(topic), *seq)),
            _ => None,
        });
        // Pushes waiting for shards are bounded by bytes too (65,536 queued commands of
        // 1 MiB each would be 64 GiB per shard): past the budget, 503 until they drain.
        // Reserved before sending, so a shard's release never precedes it.
        let weight: u64 = cmds.iter().map(|(_, c)| c.weight()).sum();
        let budget = self.config.max_outbound_total_bytes;
        if !crate::command::reserve_backlog(&self.metrics.command_bytes, weight, budget) {
            self.metrics.queue_full_refusals.fetch_add(1, Relaxed);
            if let Some((topic, seq)) = numbered {
                self.sequencer.rollback(&topic, seq);
            }
            return Err(QueueError::Overloaded);
        }
        let n = cmds.len();
        // The API owns the only command sender, so a push reaches all its shards or none.
        match self.shards.send_all_or_none(cmds) {
            Ok(()) => Ok((n, numbered.map(|(_, seq)| seq))),
            Err((e, unsent)) => {
                let back: u64 = unsent.iter().map(ShardCmd::weight).sum();
                self.metrics.command_bytes.fetch_sub(back, Relaxed);
                if let Some((topic, seq)) = numbered {
                    self.sequencer.rollback(&topic, seq);
                }
                Err(self.queue_error(e))
            }
        }
    }

    /// Whether pushes can be accepted: always standalone; in cluster mode while the
    /// publisher reaches Redis and nothing else blocks (`Blocks`).
    pub(super) fn broker_up(&self) -> bool {
        self.broker.as_ref().is_none_or(|b| b.accepting())
    }

    /// Counts and translates a refused send.
    pub(super) fn queue_error(&self, e: SendError) -> QueueError {
        match e {
            SendError::Full => {
                self.metrics.queue_full_refusals.fetch_add(1, Relaxed);
                QueueError::Overloaded
            }
            SendError::Stopped => QueueError::Draining,
        }
    }

    fn send_ticketed(&mut self, shard: usize, cmd: ShardCmd) -> Result<(), QueueError> {
        match self.shards.send(shard, cmd) {
            Ok(()) => Ok(()),
            Err((e, _)) => Err(self.queue_error(e)),
        }
    }

    fn disconnect(&mut self, key: usize, body: &[u8], keep_alive: bool) -> Handled {
        if !push::is_json_object(body) {
            return error(
                400,
                "bad_request",
                r#"a disconnect must be a JSON object, e.g. {"user":"alice"}"#,
                keep_alive,
            );
        }
        let b: DisconnectBody = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    400,
                    "bad_request",
                    &format!("invalid disconnect: {e}"),
                    keep_alive,
                )
            }
        };
        let user = match b.user {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
            _ => {
                return error(
                    400,
                    "bad_request",
                    "user must be a string or an integer",
                    keep_alive,
                )
            }
        };
        if let Err(e) = validate_user(&user) {
            return error(400, "bad_request", &format!("user: {e}"), keep_alive);
        }
        let code = b.code.unwrap_or(close::DISCONNECTED);
        if !(code == close::NORMAL || (3000..=4999).contains(&code)) {
            return error(
                400,
                "bad_request",
                "code must be 1000 or 3000-4999",
                keep_alive,
            );
        }
        let reason = b.reason.unwrap_or_else(|| "disconnected".into());
        if reason.len() > 123 {
            return error(
                400,
                "bad_request",
                "reason must be at most 123 bytes",
                keep_alive,
            );
        }
        let serial = self.next_serial();
        let shard = shard_of(&user, self.shards.len());
        let cmd = ShardCmd::Disconnect {
            user: user.into(),
            code,
            reason: reason.into(),
            ticket: Ticket { conn: key, serial },
        };
        match self.send_ticketed(shard, cmd) {
            Ok(()) => Handled::Wait {
                kind: WaitKind::Disconnect,
                serial,
                expected: 1,
                user: None,
                page: None,
            },
            Err(e) => refused(e, keep_alive),
        }
    }

    /// `GET /v1/topics/<topic>`: members across shards (and, in cluster mode, nodes), the
    /// stream's `seq` and epoch, and with `?members=1` a page of the member users.
    fn topic_info(&mut self, key: usize, raw: &str, query: &str, keep_alive: bool) -> Handled {
        let page = match member_page(query) {
            Ok(p) => p,
            Err(e) => return error(400, "bad_request", &e, keep_alive),
        };
        let topic = match percent_encoding::percent_decode_str(raw).decode_utf8() {
            Ok(t) => t.into_owned(),
            Err(_) => return error(400, "bad_request", "topic is not UTF-8", keep_alive),
        };
        if let Err(e) = crate::topic::validate(&topic) {
            return error(400, "bad_request", &format!("topic: {e}"), keep_alive);
        }
        let serial = self.next_serial();
        let ticket = Ticket { conn: key, serial };
        // Cluster mode: the stream's position is Redis's (asked first, as for presence).
        let q = crate::broker::PresenceQuery::Topic {
            topic: topic.clone(),
            ticket,
            page: page.clone(),
        };
        let asked = match self.ask_presence(q, keep_alive) {
            Ok(n) => n,
            Err(refused) => return refused,
        };
        let cmds: Vec<(usize, ShardCmd)> = (0..self.shards.len())
            .map(|shard| {
                let topic = topic.as_str().into();
                let page = page.clone();
                (
                    shard,
                    ShardCmd::TopicMembers {
                        topic,
                        ticket,
                        page,
                    },
                )
            })
            .collect();
        let expected = cmds.len() + asked;
        match self.shards.send_all_or_none(cmds) {
            Ok(()) => Handled::Wait {
                kind: WaitKind::Topic,
                serial,
                expected,
                user: Some(topic),
                page,
            },
            Err((e, _)) => refused(self.queue_error(e), keep_alive),
        }
    }

    /// `GET /v1/stats`: this node's document; in cluster mode with the live nodes and
    /// their totals, read by the presence thread (or `view_error` when it cannot).
    fn stats(&mut self, key: usize, keep_alive: bool) -> Handled {
        let local = |api: &Api, error: Option<&str>| {
            let mut stats = api.metrics.stats_value();
            if let Some(e) = error {
                let me = api.broker.as_ref().map_or("", |b| &*b.node_id);
                super::cluster_view::add_to_stats(&mut stats, me, Err(e.into()));
            }
            Handled::Respond(http::response(
                200,
                "application/json",
                stats.to_string().as_bytes(),
                keep_alive,
                "",
            ))
        };
        match self.broker.as_ref().map(|b| b.presence_up.load(Relaxed)) {
            None => return local(self, None),
            Some(false) => return local(self, Some("cannot reach Redis")),
            Some(true) => {}
        }
        let serial = self.next_serial();
        let q = crate::broker::PresenceQuery::Stats {
            ticket: Ticket { conn: key, serial },
        };
        let Some(b) = &self.broker else {
            return local(self, None);
        };
        match b.presence.try_send(q) {
            Ok(()) => Handled::Wait {
                kind: WaitKind::Stats,
                serial,
                expected: 1,
                user: None,
                page: None,
            },
            Err(crossbeam_channel::TrySendError::Full(_)) => {
                local(self, Some("too many cluster queries waiting"))
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                local(self, Some("server is shutting down"))
            }
        }
    }

    /// Cluster mode: asks the presence thread for the user's sessions on the other nodes
    /// (answered with the shard's, so `expected` is 2). Standalone: nothing to ask.
    fn ask_cluster(
        &mut self,
        key: usize,
        user: &str,
        serial: u64,
        keep_alive: bool,
    ) -> Result<usize, Handled> {
        let q = crate::broker::PresenceQuery::User {
            user: user.to_string(),
            ticket: Ticket { conn: key, serial },
        };
        self.ask_presence(q, keep_alive).map(|n| n + 1)
    }

    /// Cluster mode: hands a query to the presence thread; the answers to expect from it
    /// (1, or 0 standalone), or the 503 to give now.
    fn ask_presence(
        &mut self,
        q: crate::broker::PresenceQuery,
        keep_alive: bool,
    ) -> Result<usize, Handled> {
        let Some(b) = &self.broker else {
            return Ok(0);
        };
        if !b.presence_up.load(Relaxed) {
            return Err(error(
                503,
                "broker_unavailable",
                "cannot reach Redis for the cluster's view",
                keep_alive,
            ));
        }
        match b.presence.try_send(q) {
            Ok(()) => Ok(1),
            Err(crossbeam_channel::TrySendError::Full(_)) => Err(error(
                503,
                "overloaded",
                "too many presence queries waiting; retry after a moment",
                keep_alive,
            )),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Err(error(
                503,
                "draining",
                "server is shutting down",
                keep_alive,
            )),
        }
    }

    fn presence(&mut self, key: usize, raw_user: &str, keep_alive: bool) -> Handled {
        let user = match percent_encoding::percent_decode_str(raw_user).decode_utf8() {
            Ok(u) => u.into_owned(),
            Err(_) => return error(400, "bad_request", "user id is not UTF-8", keep_alive),
        };
        if let Err(e) = validate_user(&user) {
            return error(400, "bad_request", &format!("user: {e}"), keep_alive);
        }
        let serial = self.next_serial();
        // The other nodes' part is asked first: if the shard then refuses, its answer
        // finds no request waiting and is dropped.
        let expected = match self.ask_cluster(key, &user, serial, keep_alive) {
            Ok(n) => n,
            Err(refused) => return refused,
        };
        let shard = shard_of(&user, self.shards.len());
        let cmd = ShardCmd::Presence {
            user: user.clone().into(),
            ticket: Ticket { conn: key, serial },
        };
        match self.send_ticketed(shard, cmd) {
            Ok(()) => Handled::Wait {
                kind: WaitKind::Presence,
                serial,
                expected,
                user: Some(user),
                page: None,
            },
            Err(e) => refused(e, keep_alive),
        }
    }
}

/// Most users on one page of `GET /v1/topics/<t>?members=1`.
pub(super) const MAX_MEMBER_PAGE: usize = 1000;
/// Users on a page when `limit` is not given.
const DEFAULT_MEMBER_PAGE: usize = 100;

/// The member page a topic query asks for: `members=1` (or `true`), optional `limit`
/// (1 to `MAX_MEMBER_PAGE`) and `after` (the `next` of the previous page).
fn member_page(query: &str) -> Result<Option<MemberPage>, String> {
    let mut members = false;
    let mut limit = DEFAULT_MEMBER_PAGE;
    let mut after = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "members" => members = v == "1" || v == "true",
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_MEMBER_PAGE).contains(n))
                    .ok_or_else(|| {
                        format!("limit must be a number from 1 to {MAX_MEMBER_PAGE}, got {v:?}")
                    })?;
            }
            "after" => {
                validate_user(&v).map_err(|e| format!("after: {e}"))?;
                after = Some(Box::from(&*v));
            }
            _ => {}
        }
    }
    Ok(members.then_some(MemberPage { after, limit }))
}
