//! A stream that went back in Redis (docs/protocol.md 5, "What Redis must keep"): a
//! failover to a replica that missed the last writes, or a restart from an older
//! snapshot, leaves a stream's `seq` lower in the same epoch, so its next pushes take
//! `seq`s that clients already had and would drop as repeats. A shard that sees it (a
//! load below what it had, a push numbered again with other content) asks for a new
//! epoch (`Interest::Rewound`); the subscriber runs [`SCRIPT`] just before it loads the
//! stream again, and the sessions then start again (1012, then `resumed:false`).

use std::time::{Duration, Instant};

use redis::{Pipeline, Value};

use super::keys::StreamRef;
use crate::log_gate::LogGate;

/// Gives the stream a new epoch if it is still in the epoch the shard saw go back (so two
/// nodes that both saw it make one new epoch, and a stream that has a new one already is
/// left alone), with its numbering going on above the highest `seq` the shard had and no
/// history (its entries belong to the old epoch). KEYS: meta hash, history list. ARGV: the
/// epoch seen, the highest `seq` seen in it, the new epoch. Returns 1 when it changed the
/// stream, else 0.
const SCRIPT: &str = r#"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if tonumber(ARGV[2]) > seq then redis.call('HSET', KEYS[1], 'seq', ARGV[2]) end
redis.call('HSET', KEYS[1], 'epoch', ARGV[3])
redis.call('DEL', KEYS[2])
return 1
"#;

/// Streams found gone back are logged at most this often (a failover may take back
/// thousands at once).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What the subscriber knows of the streams shards found gone back.
pub(super) struct Rewinds {
    /// Meta key of each stream to give a new epoch before its next load: the epoch seen
    /// and the highest `seq` seen in it.
    asked: std::collections::HashMap<String, (String, u64)>,
    log: LogGate,
}

impl Rewinds {
    /// None asked.
    pub(super) fn new() -> Rewinds {
        Rewinds {
            asked: std::collections::HashMap::new(),
            log: LogGate::new(LOG_EVERY),
        }
    }

    /// A shard found `stream` gone back in `epoch`, having had `seq` (shards that found it
    /// in the same turn: the highest `seq` counts).
    pub(super) fn ask(&mut self, stream: StreamRef<'_>, epoch: String, seq: u64) {
        let asked = self
            .asked
            .entry(stream.meta_key())
            .or_insert((epoch.clone(), seq));
        if asked.0 == epoch {
            asked.1 = asked.1.max(seq);
        } else {
            *asked = (epoch, seq);
        }
    }

    /// Adds the new-epoch script for `stream` to `pipe` when a shard asked for one (one
    /// reply more before the load's own); true if it did.
    pub(super) fn pipe(&mut self, pipe: &mut Pipeline, stream: StreamRef<'_>) -> bool {
        if self.asked.is_empty() {
            return false;
        }
        let Some((epoch, seq)) = self.asked.remove(&stream.meta_key()) else {
            return false;
        };
        pipe.cmd("EVAL")
            .arg(SCRIPT)
            .arg(2)
            .arg(stream.meta_key())
            .arg(stream.history_key())
            .arg(epoch)
            .arg(seq)
            .arg(new_epoch());
        true
    }

    /// The load of `stream` will not happen (Redis is away): its ask goes with it, and
    /// the shard decides again on its next load.
    pub(super) fn drop_ask(&mut self, stream: StreamRef<'_>) {
        if !self.asked.is_empty() {
            self.asked.remove(&stream.meta_key());
        }
    }

    /// The script's reply for `stream`: true (and logged, counted by the caller) when
    /// this node gave it a new epoch.
    pub(super) fn answered(&mut self, stream: StreamRef<'_>, reply: &Value) -> bool {
        let (kind, name) = match stream {
            StreamRef::User(u) => ("user", u),
            StreamRef::Topic(t) => ("topic", t),
        };
        if let Value::ServerError(e) = reply {
            // Redis refuses writes (read-only, out of memory): the shard starts the
            // sessions again in the old epoch rather than ask without end.
            if let Some(held) = self.log.fail(Instant::now()) {
                tracing::warn!(
                    stream = name,
                    kind,
                    streams_held_back = held,
                    error = %redis::RedisError::from(e.clone()),
                    "a stream went back in Redis, and Redis refused its new epoch; its \
                     sessions start again in the old epoch"
                );
            }
            return false;
        }
        if !matches!(reply, Value::Int(1)) {
            return false;
        }
        if let Some(held) = self.log.fail(Instant::now()) {
            tracing::warn!(
                stream = name,
                kind,
                streams_held_back = held,
                "a stream went back in Redis (a seq below one this node had, or a push \
                 numbered again: Redis lost acknowledged writes, e.g. a failover to a \
                 replica behind or a restart from an older snapshot); it starts a new \
                 epoch, and its sessions reconnect and resume with resumed:false"
            );
        }
        true
    }
}

/// A fresh epoch: 16 hex digits, never all zero (shards keep user epochs as numbers, 0
/// meaning "loading").
fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_piped_once_per_ask_and_an_ask_can_be_dropped() {
        let mut r = Rewinds::new();
        let mut pipe = redis::pipe();
        assert!(
            !r.pipe(&mut pipe, StreamRef::User("alice")),
            "nothing asked"
        );
        r.ask(StreamRef::User("alice"), "00000000000000aa".into(), 7);
        r.ask(StreamRef::Topic("room"), "e".into(), 3);
        r.ask(StreamRef::Topic("room"), "e".into(), 2);
        assert!(
            !r.pipe(&mut pipe, StreamRef::Topic("alice")),
            "a topic, not the user"
        );
        assert!(r.pipe(&mut pipe, StreamRef::User("alice")));
        assert!(
            !r.pipe(&mut pipe, StreamRef::User("alice")),
            "asked once, piped once"
        );
        let packed = String::from_utf8_lossy(&pipe.get_packed_pipeline()).into_owned();
        assert!(packed.contains("throng:{u:alice}:h") && packed.contains("00000000000000aa"));
        assert_eq!(
            r.asked.get("throng:{t:room}"),
            Some(&("e".to_string(), 3)),
            "the highest"
        );
        r.drop_ask(StreamRef::Topic("room"));
        assert!(!r.pipe(&mut pipe, StreamRef::Topic("room")), "dropped");
    }

    #[test]
    fn only_a_changed_stream_counts() {
        let mut r = Rewinds::new();
        assert!(r.answered(StreamRef::User("a"), &Value::Int(1)));
        assert!(!r.answered(StreamRef::User("a"), &Value::Int(0)));
        assert!(!r.answered(StreamRef::User("a"), &Value::Nil));
        assert_ne!(new_epoch(), new_epoch());
        assert_eq!(new_epoch().len(), 16);
    }
}
