//! The one atomic script per push and stream (docs/protocol.md 5): drop a repeated `id`,
//! take the next `seq`, keep the push in the stream's history, publish it. Redis runs it
//! whole, so every node sees the same numbering and no push is numbered twice.
//!
//! A push the publisher may have to send again (answered 202, in a round trip that can go
//! unanswered) carries a producer mark: its publisher's run (random per process) and `n`,
//! which counts that run's pushes in the order it sends them. Each stream keeps the last
//! `n` of the few runs that wrote it last (in its hash, a field named by the run), and a
//! marked push:
//!
//! - whose `n` the stream has reached is not applied again (answered as a duplicate), so
//!   sending a whole unanswered round trip again is harmless;
//! - whose previous push to the same stream in the same round trip (`prev`) was not
//!   applied is refused for now (`BEHIND`), like that one: of one run's pushes to a stream
//!   in a round trip Redis applies a first part, never one after a gap, which makes "the
//!   stream has reached `n`" exact even when Redis refused one of them and the answer
//!   was lost.

use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use rustc_hash::FxBuildHasher;

use redis::{Connection, Pipeline, Value};

use super::envelope;
use super::keys::{Channels, StreamRef};
use crate::api::{ParsedPush, Target};

/// The Lua side of producer marks. `check`: the reply that stops a marked push (taken
/// already, or behind a push not taken), after writing its mark when it goes on. A
/// stream's hash holds each run's last `n` in a field named by the run (16 hex digits,
/// beside `seq` and `epoch`); a run new to the hash pushes out the one there longest
/// (hash fields keep the order they came in) once `MARKS_KEPT` are there. The mark's
/// `HSET` is the script's first write, so a Redis out of memory refuses the push before
/// anything changed.
const MARKS: &str = r#"
local function check(key, run, n, prev)
  local last = redis.call('HGET', key, run)
  local new = not last
  last = tonumber(last or 0)
  if last >= tonumber(n) then return {-2, ''} end
  if last < tonumber(prev) then
    return redis.error_reply('BEHIND an earlier push of this node to the stream was not taken')
  end
  redis.call('HSET', key, run, n)
  if new and redis.call('HLEN', key) > MARKS_KEPT + 2 then
    for _, f in ipairs(redis.call('HKEYS', key)) do
      if #f == 16 and f ~= run then
        redis.call('HDEL', key, f)
        break
      end
    end
  end
  return nil
end
"#;

/// Runs whose last mark a stream keeps: the nodes that may be sending a round trip again
/// at one time (a stall of Redis makes every node do so), and some that restarted. A run
/// pushed out sends its push again in full, as without marks, and one of its pushes
/// behind another in the same round trip is refused for now (BEHIND) and tried again.
const MARKS_KEPT: usize = 8;

/// The stream script, after the mark helpers.
fn stream_source() -> String {
    MARKS.replace("MARKS_KEPT", &MARKS_KEPT.to_string()) + STREAM
}

/// KEYS: meta hash, history list, dedup key. ARGV: epoch for a new stream, message body,
/// history size, retention ms (history list and entry age), dedup window ms (0: no id),
/// channel, now ms, meta TTL ms, then the producer mark: run ('': unmarked), n, prev (0:
/// none). The mark is written before the `id` is looked at: a duplicate `id` is taken too.
const STREAM: &str = r#"
if ARGV[9] ~= '' then
  local stop = check(KEYS[1], ARGV[9], ARGV[10], ARGV[11])
  if stop then return stop end
end
if ARGV[5] ~= '0' then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[5]) then
    if ARGV[9] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[8]) end
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
    /// The stream already accepted this `id` within the dedup window, or this very push
    /// (its producer mark: a round trip sent again).
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

/// A push's result on every stream it touched, or why it has none.
pub type Published = Result<Vec<Outcome>, PublishError>;

/// Why a push has no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Redis refused it, or it was never sent: it was not published.
    #[error("{0}")]
    NotPublished(String),
    /// It was sent and no answer came (the link went, Redis stalled): it may or may not
    /// have been published.
    #[error("{0}")]
    Unanswered(String),
}

impl From<&str> for PublishError {
    fn from(why: &str) -> PublishError {
        PublishError::NotPublished(why.to_string())
    }
}

/// The last mark sent to each stream in the round trip being built.
type Round<'p> = HashMap<StreamRef<'p>, u64, FxBuildHasher>;

/// The pushes of a round trip that the rerun after NOSCRIPT sends again, by index, each
/// with the streams it reached already (left out).
type Stopped<'p> = HashMap<usize, HashSet<&'p str>, FxBuildHasher>;

/// The streams a push to users or a topic runs its script on (none for a broadcast).
pub(crate) fn streams(target: &Target) -> impl Iterator<Item = StreamRef<'_>> {
    let (one, many): (Option<StreamRef<'_>>, &[String]) = match target {
        Target::User(u) => (Some(StreamRef::User(u)), &[]),
        Target::Users(list) => (None, list),
        Target::Topic(t) => (Some(StreamRef::Topic(t)), &[]),
        Target::Broadcast => (None, &[]),
    };
    one.into_iter()
        .chain(many.iter().map(|u| StreamRef::User(u)))
}

/// A push on its way to Redis.
#[derive(Clone, Copy)]
pub struct Sending<'a> {
    /// The push.
    pub push: &'a ParsedPush,
    /// Its place in the publisher's sending order, which makes sending it again harmless
    /// on its streams (`None`: unmarked; a broadcast is never marked).
    pub mark: Option<u64>,
}

/// The sequencing script, loaded on each connection it runs on.
pub struct Sequencer {
    stream: redis::Script,
    retention: Retention,
    /// Where pushes are published.
    channels: Channels,
    /// This sequencer's run in producer marks: 16 hex digits (the field the marks of
    /// streams are kept in), random, so that no other run (another node, this node
    /// before a restart) has it.
    run: String,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Sequencer {
    /// The script with these bounds.
    pub fn new(retention: Retention, channels: Channels) -> Sequencer {
        Sequencer {
            stream: redis::Script::new(&stream_source()),
            retention,
            channels,
            run: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// Loads the script so `EVALSHA` finds it (after every connect).
    pub fn load(&self, conn: &mut Connection) -> redis::RedisResult<()> {
        self.stream.load(conn).map(|_| ())
    }

    /// The producer mark's arguments (run, n, prev) of a push sent `n`th to the stream
    /// whose marks `key` holds; `round` has the last `n` sent to each stream in this round
    /// trip. Unmarked: `('', 0, 0)`.
    fn mark_args<'p>(
        &self,
        s: StreamRef<'p>,
        n: Option<u64>,
        round: &mut Round<'p>,
    ) -> (&str, u64, u64) {
        let Some(n) = n else {
            return ("", 0, 0);
        };
        let prev = round.insert(s, n).unwrap_or(0);
        (&self.run, n, prev)
    }

    fn add(
        &self,
        pipe: &mut Pipeline,
        s: StreamRef<'_>,
        body: &str,
        p: Sending<'_>,
        now: u64,
        (run, n, prev): (&str, u64, u64),
    ) {
        let id = p.push.id.as_deref();
        let meta = s.meta_key();
        let r = &self.retention;
        let retention = match s {
            StreamRef::User(_) => r.user_ms,
            StreamRef::Topic(_) => r.topic_ms,
        };
        let dedup = if id.is_some() { r.dedup_ms.max(1) } else { 0 };
        // Without an `id` the dedup key is not used: the hash stands in for it.
        let dedup_key = id.map(|i| s.dedup_key(i));
        pipe.cmd("EVALSHA")
            .arg(self.stream.get_hash())
            .arg(3)
            .arg(&meta)
            .arg(s.history_key())
            .arg(dedup_key.as_ref().unwrap_or(&meta))
            .arg(format!("{:016x}", rand::random::<u64>()))
            .arg(body)
            .arg(r.history_size)
            .arg(retention.max(1))
            .arg(dedup)
            .arg(self.channels.stream(s))
            .arg(now)
            .arg(r.meta_ms())
            .arg(run)
            .arg(n)
            .arg(prev);
    }

    /// Numbers, stores and publishes `pushes` in one round trip, after `before`'s
    /// commands and before `after`; one result per push, in order. The replies of
    /// `before` and `after` come back as they are (errors included) for the caller to
    /// judge: the pushes have run by then, so a refused command among them must not fail
    /// the batch. A connection error fails the whole round trip (`Err`): what of it Redis
    /// ran is not known; ids, and marks, make sending it again harmless.
    pub fn publish_between(
        &self,
        conn: &mut Connection,
        before: redis::Pipeline,
        pushes: &[Sending<'_>],
        after: Option<redis::Cmd>,
    ) -> redis::RedisResult<Between> {
        let mut first = self.run(conn, before, pushes, after, None)?;
        if !first.refused.iter().flatten().any(|r| r.has("NOSCRIPT")) {
            return Ok(first);
        }
        // Redis lost its script cache (SCRIPT FLUSH, a failover to a node without it):
        // the script is loaded again, and each push it stopped runs again for the streams
        // it did not reach. What went out stays out: broadcasts are plain PUBLISHes, and
        // scripts may have run after another node loaded it, partway through a push. If
        // the load fails, the first run's outcomes stand, the stopped pushes with their
        // NOSCRIPT (for now): the callers try those again for their streams not reached.
        // If the rerun gets no answer, the round trip has none.
        if self.load(conn).is_err() {
            return Ok(first);
        }
        // No answer to the rerun: what Redis ran of the round trip is not known.
        self.rerun(conn, pushes, &mut first)?;
        Ok(first)
    }

    /// Runs again the pushes of `first` (the round trip of `pushes`) that NOSCRIPT stopped,
    /// and those behind them, for their streams not reached, and puts their outcomes in
    /// `first`.
    fn rerun(
        &self,
        conn: &mut Connection,
        pushes: &[Sending<'_>],
        first: &mut Between,
    ) -> redis::RedisResult<()> {
        // Those behind a stopped push to the same stream run again with it; each keeps
        // its mark and the `prev` it had (the rerun walks the whole round trip), so one
        // behind a push Redis refused otherwise is refused again, not applied past it.
        let stopped: Stopped<'_> = first
            .refused
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let r = r
                    .as_ref()
                    .filter(|r| r.has("NOSCRIPT") || r.has("BEHIND"))?;
                Some((i, r.reached.iter().filter_map(Outcome::stream).collect()))
            })
            .collect();
        let mut again: Vec<usize> = stopped.keys().copied().collect();
        again.sort_unstable();
        let redone = self.run(conn, redis::pipe(), pushes, None, Some(&stopped))?;
        for ((i, published), refused) in again.iter().zip(redone.published).zip(redone.refused) {
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
                        .unwrap_or_else(|| (Vec::new(), vec![(String::new(), e.to_string())]));
                    reached.append(&mut more);
                    first.published[*i] = Err(e);
                    first.refused[*i] = Some(Refused { reached, errors });
                }
            }
        }
        Ok(())
    }

    /// One round trip: `pipe`'s commands, the pushes, `after`. With `only`, the pushes it
    /// names, for their streams not reached, and their results alone (in order); the
    /// others' marks still count for the `prev` of those after them.
    fn run(
        &self,
        conn: &mut Connection,
        mut pipe: redis::Pipeline,
        pushes: &[Sending<'_>],
        after: Option<redis::Cmd>,
        only: Option<&Stopped<'_>>,
    ) -> redis::RedisResult<Between> {
        let sent = |i: usize| only.is_none_or(|o| o.contains_key(&i));
        let emit = |i: usize, name: &str| match only {
            None => true,
            Some(o) => o.get(&i).is_some_and(|reached| !reached.contains(name)),
        };
        let before = pipe.len();
        let now = now_ms();
        pipe.ignore_errors();
        let mut round = Round::default();
        // Each command holds its own copy of the body (a `users` push to 10,000 users of
        // 1 MiB would be 10 GB), so the pipeline goes out every `ROUND_BYTES`: the replies
        // come back in order, as from one pipeline. A later part that gets no answer
        // fails the round trip as one would: sent again, marks skip what Redis applied.
        let mut values: Vec<Value> = Vec::new();
        let mut held = 0usize;
        for (i, &p) in pushes.iter().enumerate() {
            let push = p.push;
            let body = envelope::body(&push.data, push.id.as_deref(), push.from.as_deref());
            if let Target::Broadcast = push.target {
                if emit(i, "") {
                    // Never marked: nodes whose subscriber link a stall cut missed the
                    // first PUBLISH, and no history brings it back to them.
                    pipe.cmd("PUBLISH")
                        .arg(self.channels.broadcast())
                        .arg(format!("0 - {now} {body}"));
                    held += body.len() + COMMAND_BYTES;
                    send_if_full(conn, &mut pipe, &mut held, &mut values)?;
                }
                continue;
            }
            for s in streams(&push.target) {
                let mark = self.mark_args(s, p.mark, &mut round);
                if emit(i, s.name()) {
                    self.add(&mut pipe, s, &body, p, now, mark);
                    held += body.len() + COMMAND_BYTES;
                    send_if_full(conn, &mut pipe, &mut held, &mut values)?;
                }
            }
        }
        let has_after = after.is_some();
        if let Some(cmd) = after {
            pipe.add_command(cmd);
        }
        values.extend(query(conn, &mut pipe)?);
        let mut values = values.into_iter();
        let before: Vec<Value> = values.by_ref().take(before).collect();
        let after = if has_after { values.next_back() } else { None };
        let mut out = Vec::with_capacity(pushes.len());
        let mut refused = Vec::with_capacity(pushes.len());
        for (i, p) in pushes.iter().enumerate().filter(|(i, _)| sent(*i)) {
            let names: Vec<&str> = match &p.push.target {
                Target::User(u) | Target::Topic(u) => vec![u.as_str()],
                Target::Users(list) => list.iter().map(String::as_str).collect(),
                Target::Broadcast => vec![""],
            };
            let mut outcomes = Vec::with_capacity(names.len());
            let mut errors = Vec::new();
            for name in names.into_iter().filter(|n| emit(i, n)) {
                let Some(v) = values.next() else {
                    let e = "Redis answered fewer results than commands".to_string();
                    errors.push((name.to_string(), e));
                    break;
                };
                match outcome(&p.push.target, name, v) {
                    Ok(o) => outcomes.push(o),
                    Err(e) => errors.push((name.to_string(), e)),
                }
            }
            if errors.is_empty() {
                out.push(Ok(outcomes));
                refused.push(None);
            } else {
                out.push(Err(PublishError::NotPublished(errors[0].1.clone())));
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

/// Bytes of commands a pipeline holds before it goes out (see `Sequencer::run`).
const ROUND_BYTES: usize = 4 << 20;
/// A script call's bytes besides the body (keys, channel, arguments), about.
const COMMAND_BYTES: usize = 256;

/// Sends the part of a round trip `pipe` holds once it holds `ROUND_BYTES` (`held`),
/// its replies added to `values`.
fn send_if_full(
    conn: &mut Connection,
    pipe: &mut Pipeline,
    held: &mut usize,
    values: &mut Vec<Value>,
) -> redis::RedisResult<()> {
    if *held >= ROUND_BYTES {
        values.extend(query(conn, pipe)?);
        *held = 0;
    }
    Ok(())
}

/// Sends `pipe`'s commands and reads their replies, leaving it empty (errors kept as
/// values) for the next part of the round trip.
fn query(conn: &mut Connection, pipe: &mut Pipeline) -> redis::RedisResult<Vec<Value>> {
    // An empty pipeline is a client error in the redis crate ("empty command"), which
    // would fail a stream batch made only of invalid entries (or a rerun with nothing
    // left to send) forever.
    if pipe.is_empty() {
        return Ok(Vec::new());
    }
    let values = pipe.query(&mut super::Prompt(conn));
    *pipe = redis::pipe();
    pipe.ignore_errors();
    values
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

    /// Whether one of the refusals has this error code.
    fn has(&self, code: &str) -> bool {
        self.errors.iter().any(|(_, e)| e.starts_with(code))
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
    const FOR_NOW: [&str; 11] = [
        "NOSCRIPT",
        "BEHIND",
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
pub(crate) fn narrowed(push: &ParsedPush, keep: impl Fn(&str) -> bool) -> ParsedPush {
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
            // Its `id` (-1), or its producer mark (-2), was there already.
            [Value::Int(-1 | -2), _] => Ok(Outcome::Duplicate {
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
mod marks_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_for_now_are_told_from_refusals_for_good() {
        for now in [
            "OOM command not allowed when used memory > 'maxmemory'.",
            "NOSCRIPT No matching script. Please use EVAL.",
            "BEHIND an earlier push of this node to the stream was not taken",
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
