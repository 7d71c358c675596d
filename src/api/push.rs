//! Push objects (docs/protocol.md 4.4): parsing, validation, and turning one push into one
//! command per shard that needs it.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashSet;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::sequencer::NO_EPOCH;
use crate::auth::validate_user;
use crate::command::{Push, ShardCmd, Ticket};
use crate::deflate::Compressed;
use crate::messages;
use crate::route::shard_of;
use crate::topic;

/// Most user ids in one `users` target.
pub const MAX_USERS: usize = 10_000;
/// Longest push `id`.
pub const MAX_ID_BYTES: usize = 128;
/// Deepest nesting of arrays and objects inside `data`. Frames wrap `data` one level
/// deeper, and common client parsers stop near 128 (serde_json: 127), so this leaves room.
pub const MAX_DATA_DEPTH: usize = 100;

/// The `user` target: a string, or an integer (negative too, as a token's `sub`) used as
/// its decimal string.
struct UserId(String);

/// One id of a `users` target, as `UserId`.
struct ListedUserId(String);

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IdVisitor("user must be a string or an integer"))
            .map(UserId)
    }
}

impl<'de> Deserialize<'de> for ListedUserId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IdVisitor("users must hold strings or integers"))
            .map(ListedUserId)
    }
}

/// Reads a user id, refusing any other JSON type with its message (serde's own would
/// speak of enum variants).
struct IdVisitor(&'static str);

impl<'de> Visitor<'de> for IdVisitor {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<String, E> {
        Err(E::custom(self.0))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        // serde_json reads an integer beyond the 64-bit range as a float. A float literal
        // that is a whole number (`9.3e18`, `1e19`, even inside the u64 range) looks the
        // same here, so the message names both, not only that an integer was expected.
        if v.fract() == 0.0 && v.abs() >= 9.2e18 {
            return Err(E::custom(format!(
                "{} (this number is an integer-valued float or an integer beyond the 64-bit \
                 range; send the id as a string)",
                self.0
            )));
        }
        Err(E::custom(self.0))
    }

    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Err(E::custom(self.0))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(de::Error::custom(self.0))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(de::Error::custom(self.0))
    }
}

// serde_json rather than simd-json: `RawValue` keeps `data` as the exact bytes sent, so it
// is embedded in frames without being parsed into a tree and serialised again.
// Unknown fields are ignored: the protocol lets objects gain fields later.
#[derive(Deserialize)]
struct Body<'a> {
    // `"data": null` is a valid payload; only an absent field is an error.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    id: Option<String>,
    // Targets: `Some(None)` is an explicit `null`, which is refused (not taken as absent).
    #[serde(default, deserialize_with = "given")]
    user: Option<Option<UserId>>,
    #[serde(default, deserialize_with = "given")]
    users: Option<Option<Vec<ListedUserId>>>,
    #[serde(default, deserialize_with = "given")]
    topic: Option<Option<String>>,
    #[serde(default, deserialize_with = "given")]
    broadcast: Option<Option<bool>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A field that was sent, `null` included (`Some(None)`); an absent one stays `None`.
fn given<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Whether `body` is a JSON object (or nothing that parses): serde's derived structs also
/// take arrays, field by field in order.
pub(crate) fn is_json_object(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|&b| b == b'{')
}

/// Where a push goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every session of one user.
    User(String),
    /// Every session of each user.
    Users(Vec<String>),
    /// Every member of a topic.
    Topic(String),
    /// Everyone.
    Broadcast,
}

/// A validated push, ready to route.
#[derive(Debug)]
pub struct ParsedPush {
    /// The target.
    pub target: Target,
    /// `data`, verbatim JSON.
    pub data: String,
    /// The upstream's id.
    pub id: Option<String>,
    /// A client publish: the publisher's user id, shown as `from` (never from the API).
    pub from: Option<String>,
}

impl ParsedPush {
    /// Bytes it holds: `data`, `id`, `from` and the target's names (a list of users
    /// counted as what its strings hold in memory, not their length).
    pub fn weight(&self) -> u64 {
        let names = match &self.target {
            Target::User(n) | Target::Topic(n) => n.len(),
            Target::Users(list) => {
                let slot = std::mem::size_of::<String>();
                list.iter()
                    .map(|u| crate::memory::heap_str_bytes(u.len(), slot))
                    .sum()
            }
            Target::Broadcast => 0,
        };
        let optional = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        (self.data.len() + optional(&self.id) + optional(&self.from) + names) as u64
    }
}

/// Parses and validates one push object; the error names the problem.
pub fn parse(body: &[u8]) -> Result<ParsedPush, String> {
    if !is_json_object(body) {
        const SHAPE: &str = r#"a push must be a JSON object, e.g. {"user":"alice","data":1}"#;
        // Named plainly: an empty or binary entry (a stream writer's bug) says what it is.
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(format!("empty push: {SHAPE}"));
        }
        if let Err(e) = std::str::from_utf8(body) {
            return Err(format!(
                "push is not UTF-8 (byte {} is invalid): {SHAPE}",
                e.valid_up_to()
            ));
        }
        // Some Windows tools write one before the text.
        if body.starts_with("\u{FEFF}".as_bytes()) {
            return Err(format!(
                "push starts with a byte-order mark (EF BB BF): send the JSON without it; {SHAPE}"
            ));
        }
        return Err(SHAPE.into());
    }
    // `RawValue` and ignored fields are skipped without serde_json's recursion limit, so
    // depth is bounded here, before parsing, for every field alike (the push object is
    // one level around `data`).
    // `data` goes out verbatim: a lone surrogate escape in it would reach clients whose
    // parsers refuse it (or, in ours, read it as U+0000).
    match crate::json_check::check(body, MAX_DATA_DEPTH + 1) {
        Ok(()) => {}
        Err(crate::json_check::Problem::TooDeep(_)) => {
            return Err(format!(
                "push nests arrays/objects too deep: data may nest at most {MAX_DATA_DEPTH} \
                 levels"
            ))
        }
        Err(p @ crate::json_check::Problem::LoneSurrogate) => {
            return Err(format!("invalid push: {p}"))
        }
    }
    let b: Body<'_> = serde_json::from_slice(body).map_err(|e| format!("invalid push: {e}"))?;
    let data = b.data.ok_or("missing field `data`")?.get().to_string();
    if let Some(id) = &b.id {
        if id.len() > MAX_ID_BYTES {
            return Err(format!("id is longer than {MAX_ID_BYTES} bytes"));
        }
    }
    for (field, null) in [
        ("user", matches!(b.user, Some(None))),
        ("users", matches!(b.users, Some(None))),
        ("topic", matches!(b.topic, Some(None))),
        ("broadcast", matches!(b.broadcast, Some(None))),
    ] {
        if null {
            return Err(format!(
                "{field} is null: give a target a value, or leave its field out"
            ));
        }
    }
    let (user, users, topic) = (b.user.flatten(), b.users.flatten(), b.topic.flatten());
    let broadcast = b.broadcast.flatten() == Some(true);
    let targets = usize::from(user.is_some())
        + usize::from(users.is_some())
        + usize::from(topic.is_some())
        + usize::from(broadcast);
    if targets != 1 {
        return Err(format!(
            "a push needs exactly one target (user, users, topic or broadcast), got {targets}"
        ));
    }
    let target = if let Some(UserId(u)) = user {
        validate_user(&u).map_err(|e| format!("user: {e}"))?;
        Target::User(u)
    } else if let Some(list) = users {
        if list.is_empty() || list.len() > MAX_USERS {
            return Err(format!("users must hold 1 to {MAX_USERS} ids"));
        }
        let mut seen = FxHashSet::with_capacity_and_hasher(list.len(), Default::default());
        let mut ids = Vec::with_capacity(list.len());
        for ListedUserId(u) in list {
            validate_user(&u).map_err(|e| format!("users: {e}: {u:?}"))?;
            // A repeated id would be delivered (and numbered) twice; keep the first.
            if seen.insert(u.clone()) {
                ids.push(u);
            }
        }
        Target::Users(ids)
    } else if let Some(t) = topic {
        topic::validate(&t).map_err(|e| format!("topic: {e}"))?;
        Target::Topic(t)
    } else {
        Target::Broadcast
    };
    Ok(ParsedPush {
        target,
        data,
        id: b.id,
        from: None,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One command per shard that the push touches, as `(shard, command)`; a topic push
/// carries `stream`, its `seq` and epoch from the sequencer (`None`: seq 0, no epoch).
pub fn route(
    p: ParsedPush,
    shards: usize,
    ticket: Option<Ticket>,
    stream: Option<(u64, Arc<str>)>,
) -> Vec<(usize, ShardCmd)> {
    let accepted_at = Instant::now();
    let ts_ms = now_ms();
    let id: Option<Box<str>> = p.id.map(Into::into);
    match p.target {
        Target::User(u) => {
            let shard = shard_of(&u, shards);
            let push = Arc::new(Push {
                data: p.data.into(),
                id,
                ts_ms,
                accepted_at,
            });
            vec![(
                shard,
                ShardCmd::Users {
                    push,
                    users: vec![u.into()],
                    ticket,
                },
            )]
        }
        Target::Users(list) => {
            let push = Arc::new(Push {
                data: p.data.into(),
                id,
                ts_ms,
                accepted_at,
            });
            // Each shard's list at its exact size: grown by doubling it would hold up to
            // twice the slots its weight counts.
            let owners: Vec<usize> = list.iter().map(|u| shard_of(u, shards)).collect();
            let mut counts = vec![0usize; shards];
            for &o in &owners {
                counts[o] += 1;
            }
            let mut by_shard: Vec<Vec<Box<str>>> =
                counts.into_iter().map(Vec::with_capacity).collect();
            for (u, shard) in list.into_iter().zip(owners) {
                by_shard[shard].push(u.into());
            }
            by_shard
                .into_iter()
                .enumerate()
                .filter(|(_, users)| !users.is_empty())
                .map(|(shard, users)| {
                    (
                        shard,
                        ShardCmd::Users {
                            push: Arc::clone(&push),
                            users,
                            ticket,
                        },
                    )
                })
                .collect()
        }
        Target::Topic(t) => {
            let (seq, epoch) = stream.unwrap_or_else(|| (0, NO_EPOCH.into()));
            // Encoded once here and shared by every shard (invariant 4).
            let fields = messages::PushFields {
                id: id.as_deref(),
                ..messages::PushFields::topic(&t, seq, &epoch, p.from.as_deref())
            };
            let frame = messages::push_frame_with(&p.data, ts_ms, &fields);
            let compressed = Arc::new(Compressed::default());
            let topic: Arc<str> = t.into();
            (0..shards)
                .map(|shard| {
                    (
                        shard,
                        ShardCmd::Topic {
                            topic: Arc::clone(&topic),
                            frame: frame.clone(),
                            compressed: Arc::clone(&compressed),
                            seq,
                            epoch: Arc::clone(&epoch),
                            accepted_at,
                            ticket,
                        },
                    )
                })
                .collect()
        }
        Target::Broadcast => {
            let frame = messages::push_frame(&p.data, ts_ms, None, None, id.as_deref());
            let compressed = Arc::new(Compressed::default());
            (0..shards)
                .map(|shard| {
                    (
                        shard,
                        ShardCmd::Broadcast {
                            frame: frame.clone(),
                            compressed: Arc::clone(&compressed),
                            accepted_at,
                            ticket,
                        },
                    )
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let p = parse(br#"{"user":"a","data":{"x":[1, 2]}}"#).unwrap();
        assert_eq!(p.target, Target::User("a".into()));
        assert_eq!(p.data, r#"{"x":[1, 2]}"#);
        let p = parse(br#"{"user":17,"data":1,"id":"p1"}"#).unwrap();
        assert_eq!(p.target, Target::User("17".into()));
        assert_eq!(p.id.as_deref(), Some("p1"));
        let p = parse(br#"{"users":["a","b"],"data":null}"#).unwrap();
        assert_eq!(p.target, Target::Users(vec!["a".into(), "b".into()]));
        assert_eq!(p.data, "null");
        assert_eq!(
            parse(br#"{"topic":"news","data":"s"}"#).unwrap().target,
            Target::Topic("news".into())
        );
        assert_eq!(
            parse(br#"{"broadcast":true,"data":0}"#).unwrap().target,
            Target::Broadcast
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse(b"{nope").unwrap_err();
        assert!(e.starts_with("invalid push"), "{e}");
        let e = parse(br#"{"user":"a"}"#).unwrap_err();
        assert!(e.contains("data"), "{e}");
        let e = parse(br#"{"data":1}"#).unwrap_err();
        assert!(e.contains("exactly one target"), "{e}");
        let e = parse(br#"{"data":1,"user":"a","topic":"t"}"#).unwrap_err();
        assert!(e.contains("got 2"), "{e}");
        let e = parse(br#"{"data":1,"broadcast":false}"#).unwrap_err();
        assert!(e.contains("exactly one target"), "{e}");
        let e = parse(br#"{"data":1,"topic":"a b"}"#).unwrap_err();
        assert!(e.contains("topic"), "{e}");
        let e = parse(br#"{"data":1,"users":[]}"#).unwrap_err();
        assert!(e.contains("users"), "{e}");
        let long = format!(r#"{{"data":1,"user":"a","id":"{}"}}"#, "x".repeat(129));
        assert!(parse(long.as_bytes()).unwrap_err().contains("id"));
        assert!(parse(br#"{"data":1,"user":"a","later":"field"}"#).is_ok());
    }

    #[test]
    fn only_objects_with_real_targets_are_pushes() {
        for body in [
            &br#"[1,null,"alice",null,null,null]"#[..],
            br#" [{"x":1},"id1",null,null,"room:1",null]"#,
            b"",
            b"null",
            b"\"x\"",
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.contains("a push must be a JSON object"), "{e}");
        }
        assert!(parse(b" \r\n\t{\"user\":\"a\",\"data\":1}").is_ok());
        // An empty or binary body says so.
        let e = parse(b" \n").unwrap_err();
        assert!(e.starts_with("empty push: a push must be"), "{e}");
        let e = parse(b"\xff\xfe{\"user\":\"a\",\"data\":1}").unwrap_err();
        assert!(
            e.starts_with("push is not UTF-8 (byte 0 is invalid)"),
            "{e}"
        );
        for (body, field) in [
            (&br#"{"user":null,"topic":"t","data":1}"#[..], "user"),
            (br#"{"users":null,"user":"a","data":1}"#, "users"),
            (br#"{"topic":null,"data":1}"#, "topic"),
            (br#"{"broadcast":null,"user":"a","data":1}"#, "broadcast"),
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.starts_with(&format!("{field} is null")), "{e}");
        }
        // An `id` of null is no id, as before.
        assert!(parse(br#"{"user":"a","id":null,"data":1}"#)
            .unwrap()
            .id
            .is_none());
    }

    #[test]
    fn user_ids_are_strings_or_integers_negative_too() {
        let p = parse(br#"{"user":-5,"data":1}"#).unwrap();
        assert_eq!(p.target, Target::User("-5".into()));
        let p =
            parse(br#"{"users":[-9223372036854775808,18446744073709551615],"data":1}"#).unwrap();
        assert_eq!(
            p.target,
            Target::Users(vec![
                "-9223372036854775808".into(),
                "18446744073709551615".into()
            ])
        );
        for body in [
            &br#"{"user":1.5,"data":1}"#[..],
            br#"{"user":true,"data":1}"#,
            br#"{"user":{"a":1},"data":1}"#,
            br#"{"user":["a"],"data":1}"#,
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.contains("user must be a string or an integer"), "{e}");
            assert!(!e.contains("variant"), "{e}");
        }
        let e = parse(br#"{"users":["a",null],"data":1}"#).unwrap_err();
        assert!(e.contains("users must hold strings or integers"), "{e}");
    }

    #[test]
    fn repeated_users_are_kept_once_in_first_seen_order() {
        let p = parse(br#"{"users":["b","a",7,"b","7","a"],"data":1}"#).unwrap();
        assert_eq!(
            p.target,
            Target::Users(vec!["b".into(), "a".into(), "7".into()])
        );
    }

    #[test]
    fn depth_is_bounded_for_every_field() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let ok = format!(r#"{{"user":"a","data":{}}}"#, deep(MAX_DATA_DEPTH));
        assert_eq!(parse(ok.as_bytes()).unwrap().data, deep(MAX_DATA_DEPTH));
        for body in [
            format!(r#"{{"user":"a","data":{}}}"#, deep(MAX_DATA_DEPTH + 1)),
            format!(r#"{{"user":"a","data":{}}}"#, deep(100_000)),
            format!(r#"{{"users":{},"data":1}}"#, deep(100_000)),
            format!(r#"{{"user":"a","id":{},"data":1}}"#, deep(100_000)),
            format!(r#"{{"user":"a","later":{},"data":1}}"#, deep(100_000)),
            format!(r#"{{"user":"a","data":{}"#, "{\"a\":".repeat(100_000)),
        ] {
            let e = parse(body.as_bytes()).unwrap_err();
            assert!(e.contains("too deep"), "{e}");
        }
        // Brackets inside strings are not nesting.
        let s = format!(
            r#"{{"user":"a","data":"{}\"{}"}}"#,
            "[".repeat(500),
            "{".repeat(500)
        );
        assert!(parse(s.as_bytes()).is_ok());
    }

    #[test]
    fn routes_by_shard() {
        let p = parse(br#"{"users":["a","b","c","d","e","f","g","h"],"data":1}"#).unwrap();
        let cmds = route(p, 4, None, None);
        let mut total = 0;
        for (shard, cmd) in &cmds {
            let ShardCmd::Users { users, .. } = cmd else {
                panic!("not a users command")
            };
            for u in users {
                assert_eq!(shard_of(u, 4), *shard);
            }
            total += users.len();
        }
        assert_eq!(total, 8);
        let p = parse(br#"{"broadcast":true,"data":1}"#).unwrap();
        assert_eq!(route(p, 3, None, None).len(), 3);
    }
}
