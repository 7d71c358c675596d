//! The one atomic script per push and stream (docs/protocol.md 5): drop a repeated `id`,
//! take the next `seq`, keep the push in the stream's history, publish it. Redis runs it
//! whole, so every node sees the same numbering and no push is numbered twice.

use std::time::{SystemTime, UNIX_EPOCH};

use redis::{Connection, Pipeline, Value};

use super::envelope;
use super::keys::{StreamRef, BROADCAST_CHANNEL};
use crate::api::{ParsedPush, Target};

/// KEYS: meta hash, history list, dedup key. ARGV: epoch for a new stream, message body,
/// history size, retention ms (history list and entry age), dedup window ms (0: no id),
/// channel, now ms, meta TTL ms.
const SOURCE: &str = r#"
if ARGV[5] ~= '0' then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[5]) then
    return {-1, ''}
  end
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[8])
local msg = seq .. ' ' .. epoch .. ' ' .. ARGV[7] .. ' ' .. ARGV[2]
local size = tonumber(ARGV[3])
if size > 0 then
  redis.call('RPUSH', KEYS[2], msg)
  redis.call('LTRIM', KEYS[2], -size, -1)
  local cutoff = tonumber(ARGV[7]) - tonumber(ARGV[4])
  while true do
    local first = redis.call('LINDEX', KEYS[2], 0)
    if not first then break end
    local ts = tonumber(string.match(first, '^%d+ %S+ (%d+) '))
    if ts and ts < cutoff then redis.call('LPOP', KEYS[2]) else break end
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
redis.call('PUBLISH', ARGV[6], msg)
return {seq, epoch}
"#;

/// How long streams and their history live in Redis.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Pushes kept per stream.
    pub history_size: usize,
    /// How long a user's pushes are kept: the offline inbox (`offline_ttl_ms`).
    pub user_ms: u64,
    /// How long a topic's pushes are kept (`history_ttl_ms`).
    pub topic_ms: u64,
    /// How long a push `id` makes a repeat a duplicate (`dedup_window_ms`).
    pub dedup_ms: u64,
}

impl Retention {
    /// How long a stream's `seq` and epoch outlive its last push: as long as anything of
    /// it can be resumed, and at least a day, so numbering does not restart under a
    /// connected but quiet client.
    fn meta_ms(&self) -> u64 {
        self.user_ms.max(self.topic_ms).max(86_400_000)
    }
}

/// What happened to a push on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Numbered and published.
    Numbered {
        /// The user or topic (empty for a broadcast).
        stream: String,
        /// Its `seq`.
        seq: u64,
        /// The stream's epoch.
        epoch: String,
    },
    /// The stream already accepted this `id` within the dedup window.
    Duplicate {
        /// The user or topic.
        stream: String,
    },
    /// A broadcast, published to this many subscribed nodes.
    Broadcast {
        /// Nodes that received it.
        nodes: u64,
    },
}

impl Outcome {
    /// The user or topic the push reached (numbered there, or found its `id` there);
    /// none for a broadcast.
    pub fn stream(&self) -> Option<&str> {
        match self {
            Outcome::Numbered { stream, .. } | Outcome::Duplicate { stream } => Some(stream),
            Outcome::Broadcast { .. } => None,
        }
    }
}

/// A push's result on every stream it touched, or why Redis refused it.
pub type Published = Result<Vec<Outcome>, String>;

/// The sequencing script, loaded on each connection it runs on.
pub struct Sequencer {
    script: redis::Script,
    retention: Retention,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Sequencer {
    /// The script with these bounds.
    pub fn new(retention: Retention) -> Sequencer {
        Sequencer {
            script: redis::Script::new(SOURCE),
            retention,
        }
    }

    /// Loads the script so `EVALSHA` finds it (after every connect).
    pub fn load(&self, conn: &mut Connection) -> redis::RedisResult<()> {
        self.script.load(conn).map(|_| ())
    }

    fn add(&self, pipe: &mut Pipeline, s: StreamRef<'_>, body: &str, id: Option<&str>, now: u64) {
        let r = &self.retention;
        let retention = match s {
            StreamRef::User(_) => r.user_ms,
            StreamRef::Topic(_) => r.topic_ms,
        };
        let dedup = if id.is_some() { r.dedup_ms.max(1) } else { 0 };
        let dedup_key = id.map_or_else(|| s.meta_key(), |i| s.dedup_key(i));
        pipe.cmd("EVALSHA")
            .arg(self.script.get_hash())
            .arg(3)
            .arg(s.meta_key())
            .arg(s.history_key())
            .arg(dedup_key)
            .arg(format!("{:016x}", rand::random::<u64>()))
            .arg(body)
            .arg(r.history_size)
            .arg(retention.max(1))
            .arg(dedup)
            .arg(s.channel())
            .arg(now)
            .arg(r.meta_ms());
    }

    /// Numbers, stores and publishes `pushes` in one round trip; one result per push, in
    /// order. A connection error fails the whole batch (`Err`): nothing in it is known to
    /// have been applied, and ids make a retry harmless.
    pub fn publish(
        &self,
        conn: &mut Connection,
        pushes: &[&ParsedPush],
    ) -> redis::RedisResult<Vec<Published>> {
        self.publish_between(conn, redis::pipe(), pushes, None)
            .map(|b| b.published)
    }

    /// [`Sequencer::publish`] in the round trip of other commands: `before`'s first, then
    /// the pushes, then `after`. The replies of `before` and `after` come back as they are
    /// (errors included) for the caller to judge: the pushes have run by then, so a
    /// refused command among them must not fail the batch.
    pub fn publish_between(
        &self,
        conn: &mut Connection,
        before: redis::Pipeline,
        pushes: &[&ParsedPush],
        after: Option<redis::Cmd>,
    ) -> redis::RedisResult<Between> {
        let mut first = self.run(conn, before, pushes, after)?;
        let noscript = |r: &Refused| r.errors.iter().any(|(_, e)| e.starts_with("NOSCRIPT"));
        if !first.refused.iter().flatten().any(noscript) {
            return Ok(first);
        }
        // Redis lost its script cache (SCRIPT FLUSH, a failover to a node without it):
        // the script is loaded again, and each push it stopped runs again for the streams
        // it did not reach. What went out stays out: broadcasts are plain PUBLISHes, and
        // scripts may have run after another node loaded it, partway through a push. If
        // the load or the rerun fails (the link gone), the first run's outcomes stand,
        // the stopped pushes with their NOSCRIPT (for now): the callers try those again
        // for their streams not reached, not the whole batch.
        if self.load(conn).is_err() {
            return Ok(first);
        }
        let again: Vec<(usize, ParsedPush)> = first
            .refused
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let r = r.as_ref().filter(|r| noscript(r))?;
                Some((i, unreached(pushes[i], &r.reached)))
            })
            .collect();
        let retry: Vec<&ParsedPush> = again.iter().map(|(_, p)| p).collect();
        let Ok(redone) = self.run(conn, redis::pipe(), &retry, None) else {
            return Ok(first);
        };
        for (((i, _), published), refused) in again.iter().zip(redone.published).zip(redone.refused)
        {
            let mut reached = first.refused[*i]
                .take()
                .map(|r| r.reached)
                .unwrap_or_default();
            match (published, refused) {
                (Ok(mut outcomes), _) => {
                    reached.append(&mut outcomes);
                    first.published[*i] = Ok(reached);
                }
                (Err(e), refused) => {
                    let (mut more, errors) = refused
                        .map(|r| (r.reached, r.errors))
                        .unwrap_or_else(|| (Vec::new(), vec![(String::new(), e.clone())]));
                    reached.append(&mut more);
                    first.published[*i] = Err(e);
                    first.refused[*i] = Some(Refused { reached, errors });
                }
            }
        }
        Ok(first)
    }

    fn run(
        &self,
        conn: &mut Connection,
        mut pipe: redis::Pipeline,
        pushes: &[&ParsedPush],
        after: Option<redis::Cmd>,
    ) -> redis::RedisResult<Between> {
        let before = pipe.len();
        if pushes.is_empty() && before == 0 && after.is_none() {
            // An empty pipeline is a client error in the redis crate ("empty command"),
            // which would fail a stream batch made only of invalid entries forever.
            return Ok(Between {
                before: Vec::new(),
                published: Vec::new(),
                refused: Vec::new(),
                after: None,
            });
        }
        let now = now_ms();
        pipe.ignore_errors();
        let mut counts = Vec::with_capacity(pushes.len());
        for p in pushes {
            let body = envelope::body(&p.data, p.id.as_deref(), p.from.as_deref());
            let id = p.id.as_deref();
            match &p.target {
                Target::User(u) => {
                    self.add(&mut pipe, StreamRef::User(u), &body, id, now);
                    counts.push(1);
                }
                Target::Users(list) => {
                    for u in list {
                        self.add(&mut pipe, StreamRef::User(u), &body, id, now);
                    }
                    counts.push(list.len());
                }
                Target::Topic(t) => {
                    self.add(&mut pipe, StreamRef::Topic(t), &body, id, now);
                    counts.push(1);
                }
                Target::Broadcast => {
                    pipe.cmd("PUBLISH")
                        .arg(BROADCAST_CHANNEL)
                        .arg(format!("0 - {now} {body}"));
                    counts.push(1);
                }
            }
        }
        let has_after = after.is_some();
        if let Some(cmd) = after {
            pipe.add_command(cmd);
        }
        let values: Vec<Value> = pipe.query(conn)?;
        let mut values = values.into_iter();
        let before: Vec<Value> = values.by_ref().take(before).collect();
        let after = if has_after { values.next_back() } else { None };
        let mut out = Vec::with_capacity(pushes.len());
        let mut refused = Vec::with_capacity(pushes.len());
        for (p, n) in pushes.iter().zip(counts) {
            let names: Vec<&str> = match &p.target {
                Target::User(u) | Target::Topic(u) => vec![u.as_str()],
                Target::Users(list) => list.iter().map(String::as_str).collect(),
                Target::Broadcast => vec![""],
            };
            let mut outcomes = Vec::with_capacity(n);
            let mut errors = Vec::new();
            for name in names {
                let Some(v) = values.next() else {
                    let e = "Redis answered fewer results than commands".to_string();
                    errors.push((name.to_string(), e));
                    break;
                };
                match outcome(&p.target, name, v) {
                    Ok(o) => outcomes.push(o),
                    Err(e) => errors.push((name.to_string(), e)),
                }
            }
            if errors.is_empty() {
                out.push(Ok(outcomes));
                refused.push(None);
            } else {
                out.push(Err(errors[0].1.clone()));
                refused.push(Some(Refused {
                    reached: outcomes,
                    errors,
                }));
            }
        }
        Ok(Between {
            before,
            published: out,
            refused,
            after,
        })
    }
}

/// What [`Sequencer::publish_between`] got back.
pub struct Between {
    /// The replies of the commands before the pushes, in order (errors included).
    pub before: Vec<Value>,
    /// One result per push, in order (a refused push: its first error).
    pub published: Vec<Published>,
    /// Per push, in order: for one Redis refused on some stream, every stream's fate.
    pub refused: Vec<Option<Refused>>,
    /// The reply of the command after the pushes, when there was one.
    pub after: Option<Value>,
}

/// A push Redis refused on at least one of its streams (a `users` push runs one script
/// per user: Redis may refuse some after numbering others).
pub struct Refused {
    /// The streams it numbered (or found the push's `id` on) before or between refusals.
    pub reached: Vec<Outcome>,
    /// Each refusal: the stream (empty for a broadcast) and Redis's error.
    pub errors: Vec<(String, String)>,
}

impl Refused {
    /// Whether Redis refused every stream it refused only for now.
    pub fn all_for_now(&self) -> bool {
        self.errors.iter().all(|(_, e)| refused_for_now(e))
    }

    /// The first refusal Redis will not take back, if any.
    pub fn for_good(&self) -> Option<&(String, String)> {
        self.errors.iter().find(|(_, e)| !refused_for_now(e))
    }
}

/// The error codes of a Redis that is a replica (read-only, or cut off from its primary):
/// after a failover behind the same address, a new link may find the primary.
pub const REPLICA_CODES: [&str; 2] = ["READONLY", "MASTERDOWN"];

/// Whether `error` (a Redis error as "CODE message") has one of `codes`, also as Redis 6
/// quotes a refusal met inside a script: "ERR Error running script ...: -OOM ...".
fn has_code(error: &str, codes: &[&str]) -> bool {
    let code = error.split(' ').next().unwrap_or_default();
    codes.contains(&code)
        || (code == "ERR" && codes.iter().any(|c| error.contains(&format!("-{c} "))))
}

/// Whether Redis refused a push's script for now (out of memory, loading, busy with a
/// script, a replica, its script cache lost, ...): it may go through later. The stream
/// ingress keeps such an entry pending, the publisher tries such a push again.
pub fn refused_for_now(error: &str) -> bool {
    const FOR_NOW: [&str; 10] = [
        "NOSCRIPT",
        "OOM",
        "LOADING",
        "BUSY",
        "READONLY",
        "TRYAGAIN",
        "MASTERDOWN",
        "CLUSTERDOWN",
        "MISCONF",
        "NOREPLICAS",
    ];
    has_code(error, &FOR_NOW)
}

/// Whether a refusal says this Redis is a replica (`REPLICA_CODES`). (NOREPLICAS comes
/// from a primary: a new connection would meet the same.)
pub fn refused_by_a_replica(error: &str) -> bool {
    has_code(error, &REPLICA_CODES)
}

/// `push` for the streams in `streams` only (a push to one stream: that stream).
pub(crate) fn only(push: &ParsedPush, streams: &[&str]) -> ParsedPush {
    narrowed(push, |u| streams.contains(&u))
}

/// `push` for the streams not in `reached` (a `users` push: its other users; a push to
/// one stream reached nothing, since its one script was refused).
pub(crate) fn unreached(push: &ParsedPush, reached: &[Outcome]) -> ParsedPush {
    let done: std::collections::HashSet<&str> =
        reached.iter().filter_map(Outcome::stream).collect();
    narrowed(push, |u| !done.contains(u))
}

/// A copy of `push` whose `users` target keeps the users `keep` says (other targets are
/// one stream, kept whole).
fn narrowed(push: &ParsedPush, keep: impl Fn(&str) -> bool) -> ParsedPush {
    let target = match &push.target {
        Target::Users(list) => Target::Users(list.iter().filter(|u| keep(u)).cloned().collect()),
        other => other.clone(),
    };
    ParsedPush {
        target,
        data: push.data.clone(),
        id: push.id.clone(),
        from: push.from.clone(),
    }
}

/// Reads one script or PUBLISH reply.
fn outcome(target: &Target, name: &str, v: Value) -> Result<Outcome, String> {
    match (target, v) {
        (Target::Broadcast, Value::Int(n)) => Ok(Outcome::Broadcast {
            nodes: n.max(0) as u64,
        }),
        (_, Value::Array(parts)) => match parts.as_slice() {
            [Value::Int(-1), _] => Ok(Outcome::Duplicate {
                stream: name.to_string(),
            }),
            [Value::Int(seq), epoch] => {
                let epoch: String = redis::from_redis_value(epoch.clone())
                    .map_err(|e| format!("unexpected epoch from Redis: {e}"))?;
                Ok(Outcome::Numbered {
                    stream: name.to_string(),
                    seq: (*seq).max(0) as u64,
                    epoch,
                })
            }
            _ => Err("unexpected script reply from Redis".to_string()),
        },
        (_, Value::ServerError(e)) => {
            Err(format!("{} {}", e.code(), e.details().unwrap_or_default()))
        }
        (_, other) => Err(format!("unexpected reply from Redis: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_for_now_are_told_from_refusals_for_good() {
        for now in [
            "OOM command not allowed when used memory > 'maxmemory'.",
            "NOSCRIPT No matching script. Please use EVAL.",
            "READONLY You can't write against a read only replica.",
            "NOREPLICAS Not enough good replicas to write.",
            "LOADING Redis is loading the dataset in memory",
            // Redis 6: a refusal met inside a script, quoted by the script error.
            "ERR Error running script (call to f_0123): @user_script:9: @user_script: 9: \
             -OOM command not allowed when used memory > 'maxmemory'.",
        ] {
            assert!(refused_for_now(now), "{now}");
        }
        for good in [
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "ERR Error running script (call to f_0123): @user_script:3: user_script:3: \
             attempt to compare nil with number",
            "NOPERM this user has no permissions to run the 'evalsha' command",
            "",
        ] {
            assert!(!refused_for_now(good), "{good}");
        }
        assert!(refused_by_a_replica(
            "READONLY You can't write against a read only replica."
        ));
        assert!(!refused_by_a_replica("OOM command not allowed"));
        assert!(refused_by_a_replica(
            "ERR Error running script (call to f_0123): @user_script:9: @user_script: 9: \
             -READONLY You can't write against a read only replica."
        ));
    }
}
