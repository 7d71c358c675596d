//! What a published or stored push looks like in Redis: `"<seq> <epoch> <ts_ms> <json>"`,
//! where the JSON is `{"id":…,"from":…,"data":…}` (`id` and `from` when present). The first three fields are written by the
//! sequencing script, so a node learns a push's number from the message itself.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::messages;

/// The JSON part: what the upstream sent, without routing.
#[derive(Deserialize)]
struct Body<'a> {
    // Owned when it has escapes, which cannot be borrowed from the JSON.
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    /// A client publish's user.
    #[serde(borrow, default)]
    from: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// A push as read back from a channel or a history list.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Its `seq` in its stream (0 for a broadcast).
    pub seq: u64,
    /// The stream's epoch when it was numbered (`-` for a broadcast).
    pub epoch: &'a str,
    /// When the push was accepted, Unix milliseconds.
    pub ts_ms: u64,
    /// The upstream's id.
    pub id: Option<Cow<'a, str>>,
    /// The publishing user, for a client publish.
    pub from: Option<Cow<'a, str>>,
    /// The `data` JSON, verbatim.
    pub data: &'a str,
}

/// Why a message from Redis could not be read (a foreign writer on our channels).
#[derive(Debug, thiserror::Error)]
#[error("malformed message from Redis: {0}")]
pub struct BadEntry(pub &'static str);

/// The JSON part for a push with `data` (raw JSON), an optional `id` and, for a client
/// publish, `from`.
pub fn body(data: &str, id: Option<&str>, from: Option<&str>) -> String {
    let mut out = String::with_capacity(data.len() + 32);
    out.push('{');
    for (key, value) in [("\"id\":", id), ("\"from\":", from)] {
        if let Some(v) = value {
            out.push_str(key);
            // A string always serialises.
            out.push_str(&serde_json::to_string(v).unwrap_or_default());
            out.push(',');
        }
    }
    out.push_str("\"data\":");
    out.push_str(data);
    out.push('}');
    out
}

/// Reads one message or history entry.
pub fn parse(msg: &str) -> Result<Entry<'_>, BadEntry> {
    let mut parts = msg.splitn(4, ' ');
    let seq = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(BadEntry("no seq"))?;
    let epoch = parts.next().ok_or(BadEntry("no epoch"))?;
    let ts_ms = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(BadEntry("no timestamp"))?;
    let json = parts.next().ok_or(BadEntry("no body"))?;
    let b: Body<'_> = serde_json::from_str(json).map_err(|_| BadEntry("body is not a push"))?;
    Ok(Entry {
        seq,
        epoch,
        ts_ms,
        id: b.id,
        from: b.from,
        data: b.data.get(),
    })
}

impl Entry<'_> {
    /// The client frame for this push (with `topic` for a topic stream).
    pub fn frame(&self, topic: Option<&str>) -> crate::wire::Wire {
        let seq = (self.seq > 0).then_some(self.seq);
        let fields = messages::PushFields {
            seq,
            topic,
            id: self.id.as_deref(),
            from: self.from.as_deref(),
            // A topic's first push names its epoch (docs/protocol.md 2.1).
            epoch: (topic.is_some() && self.seq == 1).then_some(self.epoch),
        };
        messages::push_frame_with(self.data, self.ts_ms, &fields)
    }

    /// When the push was accepted, from its Unix-ms timestamp (another node's clock:
    /// never later than now).
    pub fn accepted_at(&self) -> std::time::Instant {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let age = std::time::Duration::from_millis(now_ms.saturating_sub(self.ts_ms));
        let now = std::time::Instant::now();
        now.checked_sub(age).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let b = body(r#"{"a":[1, 2]}"#, Some("x \"1\""), None);
        let msg = format!("7 00ff 1700000000000 {b}");
        let e = parse(&msg).unwrap();
        assert_eq!(e.seq, 7);
        assert_eq!(e.epoch, "00ff");
        assert_eq!(e.ts_ms, 1_700_000_000_000);
        assert_eq!(e.id.as_deref(), Some("x \"1\""));
        assert_eq!(e.data, r#"{"a":[1, 2]}"#);
        let no_id = format!("0 - 5 {}", body("3", None, None));
        assert_eq!(parse(&no_id).unwrap().id, None);
        let published = format!("2 e 5 {}", body("3", None, Some("bo\"b")));
        let e = parse(&published).unwrap();
        assert_eq!((e.from.as_deref(), e.data), (Some("bo\"b"), "3"));
    }

    #[test]
    fn garbage_is_an_error() {
        for m in ["", "x", "1 e", "1 e x {}", "1 e 2 {", "1 e 2 {\"id\":1}"] {
            assert!(parse(m).is_err(), "{m:?}");
        }
    }
}
