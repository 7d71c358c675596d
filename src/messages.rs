//! JSON messages on the WebSocket (docs/protocol.md 2.1, 2.2): parsing client messages and
//! encoding server messages straight into frames.

use std::borrow::Cow;
use std::io::Write as _;

use crate::wire::Wire;
use simd_json::prelude::*;

use crate::frame::FrameBuilder;

/// A client message, borrowed from the unmasked payload.
#[derive(Debug, PartialEq)]
pub enum ClientMsg<'a> {
    /// Join a topic, resuming its stream after `since` in `epoch` when both are given.
    Subscribe {
        /// Topic name.
        topic: Cow<'a, str>,
        /// The last topic `seq` the client processed and the epoch it had (4.2).
        resume: Option<(u64, Cow<'a, str>)>,
    },
    /// Leave a topic.
    Unsubscribe {
        /// Topic name.
        topic: Cow<'a, str>,
    },
    /// Application-level ping.
    Ping,
    /// The client has every direct push up to `seq`.
    Ack {
        /// Highest contiguous sequence number received.
        seq: u64,
    },
    /// Replace the connection's token before it expires (docs/protocol.md 2.2).
    Refresh {
        /// The new JWT, verified by the shard.
        token: Cow<'a, str>,
    },
    /// Send `data` to the upstream (docs/protocol.md 6).
    Send {
        /// `data`, re-encoded as compact JSON text.
        data: String,
    },
    /// Publish `data` to a topic's subscribers (docs/protocol.md 6).
    Publish {
        /// Topic name.
        topic: Cow<'a, str>,
        /// `data`, re-encoded as compact JSON text.
        data: String,
    },
}

/// A refused client message: the `error` code and message sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// docs/protocol.md 2.1 error code.
    pub code: &'static str,
    /// Human-readable reason.
    pub message: String,
}

impl Refused {
    /// Whether the refusal is about the client's message, and so counts toward the
    /// refusals in a row that close a connection (1008: "do not reconnect"). The
    /// server's own state does not (`broker_unavailable`, `overloaded`, `draining`, and
    /// `unavailable`, no upstream configured): the client cannot mend it by sending
    /// something else.
    pub fn counts(&self) -> bool {
        !matches!(
            self.code,
            "broker_unavailable" | "overloaded" | "draining" | "unavailable"
        )
    }
}

fn refused(code: &'static str, message: impl Into<String>) -> Refused {
    Refused {
        code,
        message: message.into(),
    }
}

/// A parsed message and its `ref` (re-encoded as JSON), if any.
pub struct Parsed<'a> {
    /// The message, or why it was refused.
    pub msg: Result<ClientMsg<'a>, Refused>,
    /// The `ref` field as JSON text, echoed in the answer.
    pub reference: Option<String>,
}

/// Deepest nesting a client message may have; real messages use 2 or 3 levels.
pub const MAX_CLIENT_DEPTH: usize = 32;

/// Parses one client text message in place with simd-json (it needs a mutable buffer,
/// which the unmasked frame payload already is); `buffers` are reused across calls.
pub fn parse<'a>(payload: &'a mut [u8], buffers: &mut simd_json::Buffers) -> Parsed<'a> {
    // Building and dropping a value tree recurse once per level: 5,000 levels in 10 KB
    // overflowed a shard's stack and aborted the process. Refuse deep documents before
    // simd-json sees them.
    // Lone surrogate escapes too: simd-json makes U+0000 of one (its issue #481).
    if let Err(problem) = crate::json_check::check(payload, MAX_CLIENT_DEPTH) {
        return Parsed {
            msg: Err(refused("bad_json", problem.to_string())),
            reference: None,
        };
    }
    let value = match simd_json::to_borrowed_value_with_buffers(payload, buffers) {
        Ok(v) => v,
        Err(e) => {
            return Parsed {
                msg: Err(refused("bad_json", format!("not valid JSON: {e}"))),
                reference: None,
            }
        }
    };
    let reference = value.get("ref").map(|r| r.encode());
    let msg = interpret(value);
    Parsed { msg, reference }
}

fn interpret(value: simd_json::BorrowedValue<'_>) -> Result<ClientMsg<'_>, Refused> {
    let simd_json::BorrowedValue::Object(mut obj) = value else {
        return Err(refused("bad_json", "a message must be a JSON object"));
    };
    let kind = match obj.get("type").and_then(|t| t.as_str()) {
        Some(k) => k.to_string(),
        None => return Err(refused("bad_json", "missing string field \"type\"")),
    };
    let mut topic = || match obj.remove("topic") {
        Some(simd_json::BorrowedValue::String(s)) => Ok(s),
        _ => Err(refused("bad_topic", "missing string field \"topic\"")),
    };
    match kind.as_str() {
        "subscribe" => {
            let topic = topic()?;
            let resume = subscribe_resume(&mut obj)?;
            Ok(ClientMsg::Subscribe { topic, resume })
        }
        "unsubscribe" => Ok(ClientMsg::Unsubscribe { topic: topic()? }),
        "ping" => Ok(ClientMsg::Ping),
        "ack" => match obj.get("seq").and_then(|s| s.as_u64()) {
            Some(seq) => Ok(ClientMsg::Ack { seq }),
            None => Err(refused("bad_json", "ack needs an unsigned integer \"seq\"")),
        },
        "publish" => {
            let topic = topic()?;
            match obj.get("data") {
                Some(data) => Ok(ClientMsg::Publish {
                    topic,
                    data: data.encode(),
                }),
                None => Err(refused("bad_json", "publish needs a field \"data\"")),
            }
        }
        "send" => match obj.get("data") {
            Some(data) => Ok(ClientMsg::Send {
                data: data.encode(),
            }),
            None => Err(refused("bad_json", "send needs a field \"data\"")),
        },
        // Like `subscribe` without a topic (`bad_topic`), a refresh without a token is
        // refused with the code of its subject.
        "refresh" => match obj.remove("token") {
            Some(simd_json::BorrowedValue::String(token)) => Ok(ClientMsg::Refresh { token }),
            _ => Err(refused(
                "invalid_token",
                "refresh needs a string field \"token\"",
            )),
        },
        other => Err(refused(
            "unknown_type",
            format!("unknown message type {:?}", truncate(other, 64)),
        )),
    }
}

/// Longest topic epoch accepted (docs/protocol.md 4.1: at most 32 bytes).
pub const MAX_EPOCH_BYTES: usize = 32;

/// `since` and `epoch` of a `subscribe`: both or neither, `since` an unsigned integer,
/// `epoch` a string of at most `MAX_EPOCH_BYTES`.
fn subscribe_resume<'a>(
    obj: &mut simd_json::borrowed::Object<'a>,
) -> Result<Option<(u64, Cow<'a, str>)>, Refused> {
    let since = obj.remove("since");
    let epoch = obj.remove("epoch");
    match (since, epoch) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(refused("bad_json", "\"since\" needs \"epoch\" too")),
        (None, Some(_)) => Err(refused("bad_json", "\"epoch\" needs \"since\" too")),
        (Some(since), Some(epoch)) => {
            let Some(since) = since.as_u64() else {
                return Err(refused("bad_json", "\"since\" must be an unsigned integer"));
            };
            let simd_json::BorrowedValue::String(epoch) = epoch else {
                return Err(refused("bad_json", "\"epoch\" must be a string"));
            };
            if epoch.len() > MAX_EPOCH_BYTES {
                return Err(refused(
                    "bad_json",
                    format!("\"epoch\" is longer than {MAX_EPOCH_BYTES} bytes"),
                ));
            }
            Ok(Some((since, epoch)))
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `{"type":"push",...}` for a direct, topic or broadcast push, as one text frame.
pub fn push_frame(
    data: &str,
    ts_ms: u64,
    seq: Option<u64>,
    topic: Option<&str>,
    id: Option<&str>,
) -> Wire {
    push_frame_with(
        data,
        ts_ms,
        &PushFields {
            seq,
            topic,
            id,
            ..PushFields::default()
        },
    )
}

/// The optional fields of a push frame.
#[derive(Debug, Default, Clone, Copy)]
pub struct PushFields<'a> {
    /// Its number in its stream.
    pub seq: Option<u64>,
    /// The topic, for a topic push.
    pub topic: Option<&'a str>,
    /// The upstream's id.
    pub id: Option<&'a str>,
    /// The publishing user, for a client publish (docs/protocol.md 2.2).
    pub from: Option<&'a str>,
    /// The topic stream's epoch: on the first push of an epoch (`seq` 1) only, so that a
    /// subscriber who joined before the stream existed learns the epoch to resume with.
    pub epoch: Option<&'a str>,
}

impl<'a> PushFields<'a> {
    /// The fields of topic push `seq` in `epoch`, from `from` when a client published it.
    pub fn topic(topic: &'a str, seq: u64, epoch: &'a str, from: Option<&'a str>) -> Self {
        PushFields {
            seq: Some(seq),
            topic: Some(topic),
            id: None,
            from,
            epoch: (seq == 1).then_some(epoch),
        }
    }
}

/// A push frame with the given fields.
pub fn push_frame_with(data: &str, ts_ms: u64, f: &PushFields<'_>) -> Wire {
    let extra = [f.topic, f.id, f.from, f.epoch]
        .iter()
        .map(|s| s.map_or(0, str::len))
        .sum::<usize>();
    let mut b = FrameBuilder::text(data.len() + 96 + extra);
    let out = b.payload();
    out.extend_from_slice(b"{\"type\":\"push\"");
    if let Some(seq) = f.seq {
        let _ = write!(out, ",\"seq\":{seq}");
    }
    for (key, value) in [
        (&b",\"topic\":"[..], f.topic),
        (&b",\"epoch\":"[..], f.epoch),
        (&b",\"id\":"[..], f.id),
        (&b",\"from\":"[..], f.from),
    ] {
        if let Some(v) = value {
            out.extend_from_slice(key);
            json_str(out, v);
        }
    }
    let _ = write!(out, ",\"ts\":{ts_ms},\"data\":");
    out.extend_from_slice(data.as_bytes());
    out.push(b'}');
    b.finish()
}

/// What `welcome` tells a client about the server's settings (docs/protocol.md 2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WelcomeLimits {
    /// `ping_interval_ms`.
    pub ping_interval_ms: u64,
    /// `idle_timeout_ms`.
    pub idle_timeout_ms: u64,
    /// `client_rate`: messages a second per connection (0: no limit).
    pub client_rate: u32,
    /// `max_message_size`: the longest client message, in bytes.
    pub max_message_size: usize,
    /// `max_client_data_bytes`: the longest `data` of a `publish` or `send`.
    pub max_client_data_bytes: usize,
}

/// The `welcome` frame; `resumed` is shown only when the client asked to resume.
/// Written field by field: one is built per handshake.
pub fn welcome_frame(
    session: &str,
    user: &str,
    epoch: &str,
    seq: u64,
    limits: &WelcomeLimits,
    resumed: Option<bool>,
) -> Wire {
    let mut b = FrameBuilder::text(256 + session.len() + user.len() + epoch.len());
    let out = b.payload();
    out.extend_from_slice(b"{\"type\":\"welcome\",\"session\":");
    json_str(out, session);
    out.extend_from_slice(b",\"user\":");
    json_str(out, user);
    out.extend_from_slice(b",\"epoch\":");
    json_str(out, epoch);
    let _ = write!(
        out,
        ",\"seq\":{seq},\"ping_interval_ms\":{},\"idle_timeout_ms\":{},\"client_rate\":{},\"max_message_size\":{},\"max_client_data_bytes\":{}",
        limits.ping_interval_ms,
        limits.idle_timeout_ms,
        limits.client_rate,
        limits.max_message_size,
        limits.max_client_data_bytes,
    );
    if let Some(r) = resumed {
        let _ = write!(out, ",\"resumed\":{r}");
    }
    out.push(b'}');
    b.finish()
}

/// Appends `,"ref":<json>` and closes the object.
fn finish_with_ref(out: &mut Vec<u8>, reference: Option<&str>) {
    if let Some(r) = reference {
        out.extend_from_slice(b",\"ref\":");
        out.extend_from_slice(r.as_bytes());
    }
    out.push(b'}');
}

/// `subscribed` / `unsubscribed` confirmation.
pub fn topic_ack_frame(kind: &str, topic: &str, reference: Option<&str>) -> Wire {
    let mut b = FrameBuilder::text(64 + topic.len());
    let out = b.payload();
    let _ = write!(out, "{{\"type\":\"{kind}\",\"topic\":");
    json_str(out, topic);
    finish_with_ref(out, reference);
    b.finish()
}

/// `subscribed`, with the topic stream's `seq` and `epoch`, and `resumed` when the
/// client asked to resume (docs/protocol.md 4.2).
pub fn subscribed_frame(
    topic: &str,
    seq: u64,
    epoch: &str,
    resumed: Option<bool>,
    reference: Option<&str>,
) -> Wire {
    let mut b = FrameBuilder::text(96 + topic.len() + epoch.len());
    let out = b.payload();
    out.extend_from_slice(b"{\"type\":\"subscribed\",\"topic\":");
    json_str(out, topic);
    let _ = write!(out, ",\"seq\":{seq},\"epoch\":");
    json_str(out, epoch);
    if let Some(r) = resumed {
        let _ = write!(out, ",\"resumed\":{r}");
    }
    finish_with_ref(out, reference);
    b.finish()
}

/// `reconnect`: the server is draining; reconnect (elsewhere) after `after_ms`.
pub fn reconnect_frame(after_ms: u64) -> Wire {
    let mut b = FrameBuilder::text(48);
    let _ = write!(
        b.payload(),
        "{{\"type\":\"reconnect\",\"after_ms\":{after_ms}}}"
    );
    b.finish()
}

/// `pong` answering a JSON `ping`.
pub fn pong_frame(reference: Option<&str>) -> Wire {
    let mut b = FrameBuilder::text(32);
    let out = b.payload();
    out.extend_from_slice(b"{\"type\":\"pong\"");
    finish_with_ref(out, reference);
    b.finish()
}

/// `published`: a client's publish was numbered `seq` in the topic's stream.
pub fn published_frame(topic: &str, seq: u64, reference: Option<&str>) -> Wire {
    let mut b = FrameBuilder::text(64 + topic.len());
    let out = b.payload();
    out.extend_from_slice(b"{\"type\":\"published\",\"topic\":");
    json_str(out, topic);
    let _ = write!(out, ",\"seq\":{seq}");
    finish_with_ref(out, reference);
    b.finish()
}

/// `sent`: a client's `send` is queued for the upstream.
pub fn sent_frame(reference: Option<&str>) -> Wire {
    let mut b = FrameBuilder::text(32);
    let out = b.payload();
    out.extend_from_slice(b"{\"type\":\"sent\"");
    finish_with_ref(out, reference);
    b.finish()
}

/// `unsubscribed` for a subscription the server dropped, with the `reason` (e.g.
/// `forbidden` after a token refresh narrowed the grants).
pub fn dropped_topic_frame(topic: &str, reason: &str) -> Wire {
    let mut b = FrameBuilder::text(64 + topic.len() + reason.len());
    let out = b.payload();
    out.extend_from_slice(b"{\"type\":\"unsubscribed\",\"topic\":");
    json_str(out, topic);
    out.extend_from_slice(b",\"reason\":");
    json_str(out, reason);
    out.push(b'}');
    b.finish()
}

/// `token_expiring`: the connection closes with 4001 in `in_ms` unless refreshed.
pub fn token_expiring_frame(in_ms: u64) -> Wire {
    let mut b = FrameBuilder::text(48);
    let _ = write!(
        b.payload(),
        "{{\"type\":\"token_expiring\",\"in_ms\":{in_ms}}}"
    );
    b.finish()
}

/// `refreshed`: the new token's `exp` (`null` for a token without one) is in force.
pub fn refreshed_frame(exp: Option<u64>, reference: Option<&str>) -> Wire {
    let mut b = FrameBuilder::text(48 + reference.map_or(0, str::len));
    let out = b.payload();
    match exp {
        Some(exp) => {
            let _ = write!(out, "{{\"type\":\"refreshed\",\"exp\":{exp}");
        }
        None => out.extend_from_slice(b"{\"type\":\"refreshed\",\"exp\":null"),
    }
    finish_with_ref(out, reference);
    b.finish()
}

/// `error` answering a refused message.
pub fn error_frame(err: &Refused, reference: Option<&str>) -> Wire {
    let mut b = FrameBuilder::text(64 + err.message.len());
    let out = b.payload();
    let _ = write!(
        out,
        "{{\"type\":\"error\",\"code\":\"{}\",\"message\":",
        err.code
    );
    json_str(out, &err.message);
    finish_with_ref(out, reference);
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_of_the_message_itself_count_toward_the_1008_close() {
        for code in ["rate_limited", "bad_json", "forbidden_topic"] {
            assert!(refused(code, "").counts(), "{code}");
        }
        // The server's state: retried after a moment (or never sent again: `unavailable`,
        // no upstream), never a reason to stop reconnecting.
        for code in [
            "overloaded",
            "draining",
            "broker_unavailable",
            "unavailable",
        ] {
            assert!(!refused(code, "").counts(), "{code}");
        }
    }

    fn payload_json(frame: &Wire) -> serde_json::Value {
        let start = if frame[1] & 0x7f == 126 { 4 } else { 2 };
        serde_json::from_slice(&frame[start..]).unwrap()
    }

    fn p(s: &str) -> (Result<String, Refused>, Option<String>) {
        let mut buf = s.as_bytes().to_vec();
        let mut buffers = simd_json::Buffers::default();
        let parsed = parse(&mut buf, &mut buffers);
        (parsed.msg.map(|m| format!("{m:?}")), parsed.reference)
    }

    #[test]
    fn subscribe_since_and_epoch() {
        assert_eq!(
            p(r#"{"type":"subscribe","topic":"t","since":3,"epoch":"ab"}"#).0,
            Ok("Subscribe { topic: \"t\", resume: Some((3, \"ab\")) }".into())
        );
        for (msg, needle) in [
            (
                r#"{"type":"subscribe","topic":"t","since":3}"#,
                "needs \"epoch\"",
            ),
            (
                r#"{"type":"subscribe","topic":"t","epoch":"e"}"#,
                "needs \"since\"",
            ),
            (
                r#"{"type":"subscribe","topic":"t","since":-1,"epoch":"e"}"#,
                "unsigned",
            ),
            (
                r#"{"type":"subscribe","topic":"t","since":"3","epoch":"e"}"#,
                "unsigned",
            ),
            (
                r#"{"type":"subscribe","topic":"t","since":3,"epoch":7}"#,
                "must be a string",
            ),
        ] {
            let e = p(msg).0.unwrap_err();
            assert_eq!(e.code, "bad_json", "{msg}");
            assert!(e.message.contains(needle), "{msg}: {}", e.message);
        }
        let long = format!(
            r#"{{"type":"subscribe","topic":"t","since":1,"epoch":"{}"}}"#,
            "a".repeat(33)
        );
        assert!(p(&long).0.unwrap_err().message.contains("longer than 32"));
    }

    #[test]
    fn parses_client_messages() {
        assert_eq!(
            p(r#"{"type":"subscribe","topic":"room:1","ref":7}"#),
            (
                Ok("Subscribe { topic: \"room:1\", resume: None }".into()),
                Some("7".into())
            )
        );
        assert_eq!(
            p(r#"{"type":"ping","ref":"a\"b"}"#),
            (Ok("Ping".into()), Some(r#""a\"b""#.into()))
        );
        assert_eq!(
            p(r#"{"type":"ack","seq":3}"#).0,
            Ok("Ack { seq: 3 }".into())
        );
        assert_eq!(p("nope").0.unwrap_err().code, "bad_json");
        assert_eq!(p("[1]").0.unwrap_err().code, "bad_json");
        assert_eq!(p(r#"{"type":"dance"}"#).0.unwrap_err().code, "unknown_type");
        assert_eq!(
            p(r#"{"type":"subscribe"}"#).0.unwrap_err().code,
            "bad_topic"
        );
        assert_eq!(
            p(r#"{"type":"subscribe","topic":5}"#).0.unwrap_err().code,
            "bad_topic"
        );
        assert_eq!(p(r#"{"type":"ack"}"#).0.unwrap_err().code, "bad_json");
    }

    #[test]
    fn parses_refresh() {
        assert_eq!(
            p(r#"{"type":"refresh","token":"a.b.c","ref":"r1"}"#),
            (
                Ok("Refresh { token: \"a.b.c\" }".into()),
                Some(r#""r1""#.into())
            )
        );
        // Escapes are decoded; the verifier sees the real token text.
        assert_eq!(
            p(r#"{"type":"refresh","token":"a\u002eb"}"#).0,
            Ok("Refresh { token: \"a.b\" }".into())
        );
        for bad in [
            r#"{"type":"refresh"}"#,
            r#"{"type":"refresh","token":7}"#,
            r#"{"type":"refresh","token":null}"#,
            r#"{"type":"refresh","token":["a.b.c"]}"#,
        ] {
            let (msg, _) = p(bad);
            let err = msg.unwrap_err();
            assert_eq!(err.code, "invalid_token", "{bad}");
            assert!(err.message.contains("\"token\""), "{bad}: {}", err.message);
        }
        // A ref survives a refused refresh, so the error can be matched.
        assert_eq!(p(r#"{"type":"refresh","ref":3}"#).1, Some("3".into()));
    }

    #[test]
    fn parses_publish_and_reencodes_data() {
        assert_eq!(
            p(
                r#"{"type":"publish","topic":"room:1","data":{"text": "hi \u0041", "n": [1, 2.5]},"ref":7}"#
            ),
            (
                Ok(
                    r#"Publish { topic: "room:1", data: "{\"text\":\"hi A\",\"n\":[1,2.5]}" }"#
                        .into()
                ),
                Some("7".into())
            )
        );
        assert_eq!(
            p(r#"{"type":"publish","topic":"t","data":null}"#).0,
            Ok(r#"Publish { topic: "t", data: "null" }"#.into())
        );
        assert_eq!(
            p(r#"{"type":"send","data":[1, {"b": true}]}"#).0,
            Ok(r#"Send { data: "[1,{\"b\":true}]" }"#.into())
        );
        assert_eq!(p(r#"{"type":"send"}"#).0.unwrap_err().code, "bad_json");
        let missing = p(r#"{"type":"publish","topic":"t"}"#).0.unwrap_err();
        assert_eq!(missing.code, "bad_json");
        assert!(missing.message.contains("\"data\""), "{}", missing.message);
        assert_eq!(
            p(r#"{"type":"publish","data":1}"#).0.unwrap_err().code,
            "bad_topic"
        );
    }

    #[test]
    fn published_and_from_frames() {
        let f = published_frame("room:1", 42, Some("\"p1\""));
        assert_eq!(
            payload_json(&f),
            serde_json::json!({"type":"published","topic":"room:1","seq":42,"ref":"p1"})
        );
        let f = push_frame_with(
            "[1]",
            5,
            &PushFields::topic("room:1", 3, "e1", Some("al\"ice")),
        );
        assert_eq!(
            payload_json(&f),
            serde_json::json!({"type":"push","seq":3,"topic":"room:1","from":"al\"ice","ts":5,"data":[1]})
        );
        // The first push of an epoch names it.
        let f = push_frame_with("2", 6, &PushFields::topic("t", 1, "e1", None));
        assert_eq!(
            payload_json(&f),
            serde_json::json!({"type":"push","seq":1,"topic":"t","epoch":"e1","ts":6,"data":2})
        );
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        for deep in [
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
            format!("{}1{}", "{\"a\":".repeat(5000), "}".repeat(5000)),
            format!(
                r#"{{"type":"ping","ref":{}0{}}}"#,
                "[".repeat(40),
                "]".repeat(40)
            ),
        ] {
            let err = p(&deep).0.unwrap_err();
            assert_eq!(err.code, "bad_json");
            assert!(
                err.message.contains("nested deeper than 32"),
                "{}",
                err.message
            );
        }
        let ok = format!(
            r#"{{"type":"ping","ref":{}0{}}}"#,
            "[".repeat(30),
            "]".repeat(30)
        );
        assert_eq!(p(&ok).0, Ok("Ping".into()));
    }

    #[test]
    fn repeated_keys_replace_each_other() {
        // Each repeat used to be kept beside the others under one hash: time quadratic in
        // their count. Now one member per key, the last one wins.
        let mut many = String::from(r#"{"type":"ping""#);
        for i in 0..20_000 {
            many.push_str(&format!(r#","x":{i}"#));
        }
        many.push('}');
        let mut bytes = many.into_bytes();
        let mut buffers = simd_json::Buffers::default();
        let value =
            simd_json::to_borrowed_value_with_buffers(&mut bytes, &mut buffers).expect("parses");
        let obj = value.as_object().expect("object");
        assert_eq!(obj.len(), 2);
        assert_eq!(obj.get("x").and_then(|v| v.as_u64()), Some(19_999));
        assert_eq!(
            p(r#"{"type":"ping","type":"subscribe","topic":"a"}"#).0,
            Ok("Subscribe { topic: \"a\", resume: None }".into())
        );
    }

    #[test]
    fn encodes_server_messages() {
        let f = push_frame(r#"{"x":1}"#, 99, Some(4), None, Some("id\"1"));
        assert_eq!(
            payload_json(&f),
            serde_json::json!({"type":"push","seq":4,"ts":99,"id":"id\"1","data":{"x":1}})
        );
        let f = push_frame("[1]", 5, None, Some("news"), None);
        assert_eq!(
            payload_json(&f),
            serde_json::json!({"type":"push","topic":"news","ts":5,"data":[1]})
        );
        let f = topic_ack_frame("subscribed", "t", Some("\"r\""));
        assert_eq!(
            payload_json(&f),
            serde_json::json!({"type":"subscribed","topic":"t","ref":"r"})
        );
        let f = subscribed_frame("t", 4, "abc", Some(true), Some("1"));
        assert_eq!(
            payload_json(&f),
            serde_json::json!({"type":"subscribed","topic":"t","seq":4,"epoch":"abc","resumed":true,"ref":1})
        );
        let f = subscribed_frame("t", 0, "e", None, None);
        assert_eq!(
            payload_json(&f),
            serde_json::json!({"type":"subscribed","topic":"t","seq":0,"epoch":"e"})
        );
        let f = error_frame(&refused("bad_topic", "nope"), None);
        assert_eq!(
            payload_json(&f),
            serde_json::json!({"type":"error","code":"bad_topic","message":"nope"})
        );
        assert_eq!(
            payload_json(&pong_frame(Some("1"))),
            serde_json::json!({"type":"pong","ref":1})
        );
        assert_eq!(
            payload_json(&reconnect_frame(1234)),
            serde_json::json!({"type":"reconnect","after_ms":1234})
        );
        assert_eq!(
            payload_json(&token_expiring_frame(59_990)),
            serde_json::json!({"type":"token_expiring","in_ms":59_990})
        );
        assert_eq!(
            payload_json(&refreshed_frame(Some(1_800_000_000), Some("[1]"))),
            serde_json::json!({"type":"refreshed","exp":1_800_000_000u64,"ref":[1]})
        );
        assert_eq!(
            payload_json(&refreshed_frame(None, None)),
            serde_json::json!({"type":"refreshed","exp":null})
        );
        assert_eq!(
            payload_json(&dropped_topic_frame("room:\"1", "forbidden")),
            serde_json::json!({"type":"unsubscribed","topic":"room:\"1","reason":"forbidden"})
        );
        let limits = WelcomeLimits {
            ping_interval_ms: 25_000,
            idle_timeout_ms: 60_000,
            client_rate: 100,
            max_message_size: 65_536,
            max_client_data_bytes: 16_384,
        };
        assert_eq!(
            payload_json(&welcome_frame("s1", "u\"\\\u{1}é", "e", 7, &limits, None)),
            serde_json::json!({"type":"welcome","session":"s1","user":"u\"\\\u{1}é","epoch":"e",
                "seq":7,"ping_interval_ms":25_000,"idle_timeout_ms":60_000,"client_rate":100,
                "max_message_size":65_536,"max_client_data_bytes":16_384})
        );
        assert_eq!(
            payload_json(&welcome_frame("s", "u", "e", 0, &limits, Some(false)))["resumed"],
            false
        );
    }
}
