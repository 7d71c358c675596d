//! The stream ingress thread (docs/protocol.md 5): push commands from `throng:push`, read
//! with the `throng` consumer group as consumer `<node_id>`. Each entry is published
//! through the sequencing script and acknowledged only after; an invalid one goes to
//! `throng:push:dlq` with the error, then is acknowledged, so it never blocks the entries
//! behind it. Entries a dead node left pending longer than `claim_idle_ms` are claimed.
//! Entries Redis refused for now (or whose DLQ copy it refused) stay pending in this
//! node's name and are tried again every claim cycle (`retry_own`), which also keeps
//! them from looking abandoned to other nodes. While the shards cannot take more, the
//! stream is simply not read. Entries every consumer group has acknowledged are trimmed
//! (`trim`).
//!
//! Reads (new entries, this consumer's own pending ones, claims) go through the `READ`
//! script, which hands over each entry's `push` only up to the API's body limit (a longer
//! one as its length, for the DLQ) and stops once a reply carries `READ_BYTES`: whatever
//! a producer writes to the stream (Redis takes values of up to 512 MB), one read brings
//! at most `READ_BYTES` plus one entry of 1 MiB into the node. A script cannot block, so
//! when one finds nothing new, a plain XREAD of one entry (which takes nothing from the
//! group) waits for the next, and the script then takes it with what came along: one
//! script takes a producer's MULTI whole, where blocked XREADGROUPs would hand its
//! entries out one per node (polling the script instead cost Redis 60 calls a second per
//! idle node).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{Connection, Value};

use super::held::Held;
use super::keys::{DLQ_STREAM, GROUP, PUSH_STREAM};
use super::script::{Sending, Sequencer};
use super::trim::Trimmer;
use super::{next_backoff, pause, BrokerCtx, RECONNECT_MIN};
use crate::api::{parse_push, ParsedPush, Target};
use crate::config::MAX_API_BODY_BYTES;
use crate::log_gate::LogGate;

/// Most entries read per round trip.
const COUNT: usize = 256;
/// A read stops adding entries to its reply once they carry this many bytes (so a reply
/// holds at most this plus one entry of `MAX_API_BODY_BYTES`).
const READ_BYTES: usize = 4 << 20;
/// How long the wait for a new entry blocks (`wait_for_entry`) before the loop looks at
/// its other duties.
const BLOCK_MS: u64 = 100;
/// How long an idle node waits from one group position before reading again: a group
/// moved back under it (`XGROUP SETID`, a group or stream made anew) has new entries
/// that no wait after the old position would see.
const REREAD_EVERY: Duration = Duration::from_secs(1);
/// Bytes of an invalid entry's `push` kept in the DLQ (the API's body limit: a valid
/// push always fits).
const DLQ_KEEP_BYTES: usize = MAX_API_BODY_BYTES;
/// Bytes of an oversized entry's `push` kept in the DLQ (it could never be replayed
/// whole; its head, with the size in the error, says what it was). As the Kafka DLQ
/// after a size refusal: 10,000 copies of 1 MiB would be 10 GiB of Redis memory.
const DLQ_KEEP_OVERSIZED: usize = 16 * 1024;
/// DLQ length bound (approximate trim).
const DLQ_MAXLEN: u64 = 10_000;

/// Copies one dead entry to the DLQ and acknowledges it, in one step: an entry whose copy
/// Redis refuses (out of memory, a DLQ key of another type) stays pending and is claimed
/// again later, never acknowledged without its copy. KEYS: the push stream, the DLQ.
/// ARGV: DLQ length bound, push, error, node, entry id, group, and optionally a length:
/// then the push is not sent by the node (it never read more of it than its length) but
/// taken here from the entry itself, its first that many bytes.
const DLQ_AND_ACK: &str = r#"
local push = ARGV[2]
if ARGV[7] then
  push = ''
  local e = redis.call('XRANGE', KEYS[1], ARGV[5], ARGV[5])
  local f = e[1] and e[1][2]
  if f then
    for i = 1, #f, 2 do
      if f[i] == 'push' then push = string.sub(f[i + 1], 1, tonumber(ARGV[7])) end
    end
  end
end
local r = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'push', push,
  'error', ARGV[3], 'node', ARGV[4], 'id', ARGV[5])
if type(r) == 'table' and r.err then return r end
return redis.call('XACK', KEYS[1], ARGV[6], ARGV[5])
"#;

/// Reads entries one at a time, so that none is taken (made pending in this consumer's
/// name, or claimed) that the reply does not carry: new ones (mode `new`, XREADGROUP `>`),
/// this consumer's pending ones after an id (`own`), or those other consumers left idle
/// (`claim`, XAUTOCLAIM from a cursor). Stops after `count` steps or once the reply
/// carries `budget` bytes. Each entry comes as its id and its `push`: the value if at most
/// `limit` bytes, else its length (an integer, counted as `limit` bytes), or nil without
/// one (or deleted). Other fields never leave Redis. KEYS: the push stream. ARGV: group,
/// consumer, mode, from (`>`, an id, a cursor), count, limit, budget, min idle (`claim`).
/// Returns the next cursor (`own`: the last id; `claim`: XAUTOCLAIM's; `new` that found
/// nothing: the group's last delivered id, after which any entry is new), then id, push,
/// id, push...
const READ: &str = r#"
local group, consumer, mode, from = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local count, limit, budget = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local out = {''}
local bytes, steps = 0, 0
while steps < count and bytes < budget do
  steps = steps + 1
  local e
  if mode == 'claim' then
    local r = redis.call('XAUTOCLAIM', KEYS[1], group, consumer, ARGV[8], from, 'COUNT', 1)
    from = r[1]
    e = r[2][1]
  else
    local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1,
      'STREAMS', KEYS[1], from)
    e = r and r[1] and r[1][2][1]
    if not e then break end
    if mode == 'own' then from = e[1] end
  end
  if e then
    local push = false
    local f = e[2]
    if f then
      for i = 1, #f, 2 do
        if f[i] == 'push' then
          local v = f[i + 1]
          if #v > limit then push = #v else push = v end
        end
      end
    end
    out[#out + 1] = e[1]
    out[#out + 1] = push
    -- An oversized push counts as the limit: the node copies its head to the DLQ
    -- next, and Redis copied all of it into this script.
    bytes = bytes + #e[1] + (type(push) == 'string' and #push or limit)
  end
  if mode == 'claim' and from == '0-0' then break end
end
if mode == 'new' then
  from = ''
  if #out == 1 then
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
      local name, last
      for i = 1, #g, 2 do
        if g[i] == 'name' then name = g[i + 1] end
        if g[i] == 'last-delivered-id' then last = g[i + 1] end
      end
      if name == group then from = last end
    end
  end
end
out[1] = from
return out
"#;

/// Which entries a read takes (see `READ`).
#[derive(Clone, Copy)]
enum Read {
    /// Entries no consumer was given yet.
    New,
    /// This consumer's pending entries after an id.
    Own,
    /// Entries idle `claim_idle_ms` in any consumer's name, from a cursor.
    Claim,
}

impl Read {
    fn mode(self) -> &'static str {
        match self {
            Read::New => "new",
            Read::Own => "own",
            Read::Claim => "claim",
        }
    }
}

/// Renews the idle time of the entries still pending in this consumer's name, and only
/// those: an entry another node claimed stays its, and one deleted from the stream is left
/// alone (XCLAIM would drop it from the pending list unseen; the next walk of this node's
/// own entries finds it). KEYS: the push stream. ARGV: group, consumer, entry ids.
/// Returns how many were renewed.
const RENEW_MINE: &str = r#"
local n = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2]
     and #redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i]) > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    n = n + 1
  end
end
return n
"#;

/// Renews the idle time of those of `ids` pending in `consumer`'s name in the `throng`
/// group of `throng:push` (`RENEW_MINE`); how many were.
pub fn renew_mine(
    conn: &mut Connection,
    consumer: &str,
    ids: &[&String],
) -> redis::RedisResult<u64> {
    redis::cmd("EVAL")
        .arg(RENEW_MINE)
        .arg(1)
        .arg(PUSH_STREAM)
        .arg(GROUP)
        .arg(consumer)
        .arg(ids)
        .query(conn)
}

/// One stream entry: its id and its `push` field.
struct StreamEntry {
    id: String,
    push: Push,
}

/// An entry's `push` field as a read hands it over.
#[derive(Debug, PartialEq)]
enum Push {
    /// Its bytes (at most `MAX_API_BODY_BYTES`).
    Raw(Vec<u8>),
    /// Longer than `MAX_API_BODY_BYTES`: only its length was read.
    TooBig(u64),
    /// No `push` field (or the entry was deleted).
    Missing,
}

/// The ingress thread's state.
pub(crate) struct Ingress {
    ctx: BrokerCtx,
    busy: Arc<AtomicBool>,
    sequencer: Sequencer,
    backoff: Duration,
    last_claim: Instant,
    /// `None` with `stream_trim` false.
    trimmer: Option<Trimmer>,
    /// The last read found nothing new: the group's last delivered id then, after which
    /// the next turn waits for an entry at once, without reading first.
    waiting_from: Option<String>,
    /// When `waiting_from` was read.
    read_at: Instant,
    /// The acknowledgements (and DLQ copies) of the entries handled last: sent ahead of
    /// the next read, claim or batch, in its round trip.
    acks: Option<Acks>,
    /// Entries this node left pending after an attempt reached some of their users, with
    /// those users: a retry leaves them out.
    held: Held,
    /// Redis answers but refuses the ingress's commands (a write refused: NOREPLICAS,
    /// MISCONF, OOM): said once a minute, the link kept.
    refused: LogGate,
}

/// How often a Redis that keeps refusing the ingress's commands is said again.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(60);

/// Acknowledgements waiting for a round trip: `dead` DLQ copies (each acknowledging its
/// entry), then, with `xack`, the XACK of the entries that were published (see
/// [`Ingress::acked`] for how their replies are judged).
struct Acks {
    pipe: redis::Pipeline,
    dead: usize,
    xack: bool,
}

impl Ingress {
    /// An ingress that pauses while `busy` (a shard queue full) is set.
    pub(crate) fn new(ctx: BrokerCtx, busy: Arc<AtomicBool>) -> Ingress {
        let sequencer = Sequencer::new(ctx.retention, ctx.channels.clone());
        let trimmer = ctx.cluster.stream_trim.map(Trimmer::new);
        Ingress {
            ctx,
            busy,
            sequencer,
            backoff: RECONNECT_MIN,
            last_claim: Instant::now(),
            trimmer,
            waiting_from: None,
            read_at: Instant::now(),
            acks: None,
            held: Held::default(),
            refused: LogGate::new(REFUSED_LOG_EVERY),
        }
    }

    /// Runs until the server stops.
    pub(crate) fn run(mut self) {
        // A loss was logged: the next link says it is back.
        let mut lost = false;
        while !self.ctx.stop.load(Relaxed) {
            match self.open() {
                Ok(mut conn) => {
                    if std::mem::take(&mut lost) {
                        tracing::info!("stream ingress is back on Redis");
                    }
                    lost = self.serve_link(&mut conn);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "stream ingress cannot reach Redis");
                    pause(self.backoff, &self.ctx.stop);
                    self.backoff = next_backoff(self.backoff);
                }
            }
        }
    }

    /// Serves one link until the server stops or the link must go; returns whether its
    /// loss was logged. A refusal Redis answers with (a write refused: NOREPLICAS,
    /// MISCONF, OOM, ...) keeps the link: a new one would meet the same, and reconnecting
    /// would only say "lost Redis" each time. Not NOGROUP or NOSCRIPT: a new link makes
    /// the group and loads the script again.
    fn serve_link(&mut self, conn: &mut Connection) -> bool {
        loop {
            let Err(e) = self.serve(conn) else {
                return false;
            };
            if super::is_interrupted(&e) {
                // SIGSTOP and SIGCONT interrupt a read waiting on Redis (a socket with a
                // timeout is not restarted): nothing is wrong. The link is out of step (a
                // reply half read), so the read is tried again on a new one at once; this
                // consumer's pending entries are read first, so what the lost reply held
                // is not lost.
                tracing::debug!("stream ingress read interrupted by a signal; reading again");
                return false;
            }
            self.ctx.metrics.broker.errors.fetch_add(1, Relaxed);
            let code = super::error_code(&e).unwrap_or_default();
            let kept = super::answered_with_error(&e) && !matches!(&*code, "NOGROUP" | "NOSCRIPT");
            if !kept {
                let e = super::describe(&e, self.ctx.redis.is_tls());
                tracing::warn!(error = %e, "stream ingress lost Redis; reconnecting");
            } else if let Some(held) = self.refused.fail(Instant::now()) {
                tracing::warn!(
                    refusals_held_back = held,
                    "Redis refuses the stream ingress ({code}); entries wait in {PUSH_STREAM} \
                     and are read again, backing off up to 2 s"
                );
            }
            // Not at once: an error that repeats must not become a busy loop.
            pause(self.backoff, &self.ctx.stop);
            self.backoff = next_backoff(self.backoff);
            if !kept {
                return true;
            }
            if self.ctx.stop.load(Relaxed) {
                return false;
            }
        }
    }

    /// Connects, loads the script, and makes sure the group exists (from the stream's
    /// start, so entries added before the first node came up are not skipped).
    fn open(&mut self) -> redis::RedisResult<Connection> {
        let mut conn = self.ctx.redis.connect()?;
        self.sequencer.load(&mut conn)?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(PUSH_STREAM)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query(&mut conn);
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
        Ok(conn)
    }

    fn serve(&mut self, conn: &mut Connection) -> redis::RedisResult<()> {
        // Acknowledgements a lost link did not send: the entries stay pending and are read
        // again below.
        self.acks = None;
        // A Redis that restarted may have a new stream: read it before waiting on it.
        self.waiting_from = None;
        let served = self.serve_entries(conn);
        if served.is_ok() {
            self.flush_acks(conn)?;
        }
        served
    }

    fn serve_entries(&mut self, conn: &mut Connection) -> redis::RedisResult<()> {
        // First what this consumer was given before and never acknowledged (a restart).
        self.retry_own(conn)?;
        while !self.ctx.stop.load(Relaxed) {
            if self.busy.load(Relaxed) {
                // Backpressure: not read, not acknowledged, not dropped. What was
                // handled is acknowledged now: left pending through a long pause, it
                // would be claimed by another node and published twice.
                self.flush_acks(conn)?;
                if self.last_claim.elapsed() >= self.claim_every() {
                    self.last_claim = Instant::now();
                    self.renew_held(conn)?;
                }
                self.ctx.metrics.broker.stream_paused.fetch_add(1, Relaxed);
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            if self.last_claim.elapsed() >= self.claim_every() {
                self.last_claim = Instant::now();
                self.claim(conn)?;
            }
            if self.read_at.elapsed() >= REREAD_EVERY {
                self.waiting_from = None;
            }
            self.trim(conn)?;
            // After a wait that found nothing, straight to the next wait: whatever came
            // since, it returns at once.
            let mut entries = if self.waiting_from.is_some() {
                Vec::new()
            } else {
                self.read_new(conn)?
            };
            // The read script cannot block; polling it cost Redis about 60 script calls a
            // second per idle node (review s18e). A plain blocking read that takes nothing
            // waits instead, and the script takes what came: a producer's MULTI whole,
            // where blocked XREADGROUPs of one entry each split it over the nodes and
            // their orders (review s18f).
            if entries.is_empty() && self.wait_for_entry(conn)? {
                entries = self.read_new(conn)?;
            }
            while !entries.is_empty() {
                // A read may come at a producer's first XADD: the rest of its pipeline
                // comes back with this batch's publish, not a round trip later.
                let read_on = !self.must_pause();
                entries = self.handle(conn, entries, read_on)?;
            }
            self.backoff = RECONNECT_MIN;
            if self.refused.recover() {
                tracing::info!("Redis takes the stream ingress's commands again");
            }
        }
        Ok(())
    }

    /// Whether the loop must look at its other duties (backpressure, stop, claiming,
    /// trimming) before reading more.
    fn must_pause(&self) -> bool {
        self.busy.load(Relaxed)
            || self.ctx.stop.load(Relaxed)
            || self.last_claim.elapsed() >= self.claim_every()
            || self.trimmer.as_ref().is_some_and(|t| t.due(Instant::now()))
    }

    fn claim_every(&self) -> Duration {
        (self.ctx.cluster.claim_idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// A pipeline that starts with the waiting acknowledgements (every reply kept, errors
    /// too), for a round trip that carries them; `acked` judges their replies after.
    fn with_acks(&mut self) -> (redis::Pipeline, Option<(usize, bool)>) {
        match self.acks.take() {
            Some(a) => (a.pipe, Some((a.dead, a.xack))),
            None => {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                (pipe, None)
            }
        }
    }

    /// Runs `pipe` (the waiting acknowledgements, then one command) and returns the last
    /// reply once `acked` took the others.
    fn query_last(
        &self,
        conn: &mut Connection,
        pipe: &redis::Pipeline,
        acks: Option<(usize, bool)>,
    ) -> redis::RedisResult<Value> {
        let values: Vec<Value> = pipe.query(&mut super::Prompt(conn))?;
        let mut values = values.into_iter();
        self.acked(&mut values, acks)?;
        values.next().unwrap_or(Value::Nil).extract_error()
    }

    /// Judges the replies of the acknowledgements (`dead` DLQ copies, then with `xack`
    /// the XACK), if any went. A copy Redis refused (an out-of-memory Redis) is logged and
    /// counted, and its entry stays pending (claimed again after `claim_idle_ms`); the
    /// round trip goes on, since failing it would read the batch again and publish its
    /// good entries twice. A refused XACK (the group or the stream gone) is an error.
    fn acked(
        &self,
        replies: &mut impl Iterator<Item = Value>,
        acks: Option<(usize, bool)>,
    ) -> redis::RedisResult<()> {
        let Some((dead, xack)) = acks else {
            return Ok(());
        };
        let (mut copied, mut refused, mut why) = (0u64, 0u64, None);
        for v in replies.take(dead) {
            match v.extract_error() {
                Ok(_) => copied += 1,
                Err(e) => {
                    refused += 1;
                    why.get_or_insert(e);
                }
            }
        }
        let broker = &self.ctx.metrics.broker;
        if copied > 0 {
            broker.stream_dlq.fetch_add(copied, Relaxed);
            tracing::warn!(count = copied, "stream entries sent to {DLQ_STREAM}");
        }
        if let Some(e) = why {
            broker.errors.fetch_add(refused, Relaxed);
            tracing::warn!(count = refused, error = %e,
                "Redis refused to copy stream entries to {DLQ_STREAM}; they stay pending and are claimed again later");
        }
        if !xack {
            return Ok(());
        }
        match replies.next() {
            Some(xack) => xack.extract_error().map(drop),
            None => Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "Redis answered fewer replies than commands",
            ))),
        }
    }

    /// Sends the waiting acknowledgements in a round trip of their own.
    fn flush_acks(&mut self, conn: &mut Connection) -> redis::RedisResult<()> {
        if let Some(a) = self.acks.take() {
            let values: Vec<Value> = a.pipe.query(&mut super::Prompt(conn))?;
            self.acked(&mut values.into_iter(), Some((a.dead, a.xack)))?;
        }
        Ok(())
    }

    /// Trims what every group has acknowledged, when that is due.
    fn trim(&mut self, conn: &mut Connection) -> redis::RedisResult<()> {
        let Some(t) = self.trimmer.as_mut().filter(|t| t.due(Instant::now())) else {
            return Ok(());
        };
        if let Some(done) = t.run(conn)? {
            if done.removed > 0 {
                tracing::debug!(removed = done.removed, below = %done.floor, "trimmed {PUSH_STREAM}");
                self.ctx
                    .metrics
                    .broker
                    .stream_trimmed
                    .fetch_add(done.removed, Relaxed);
            }
        }
        Ok(())
    }

    /// Reads entries (`READ`) of `kind` from `from`; the next cursor and the entries.
    fn read(
        &mut self,
        conn: &mut Connection,
        kind: Read,
        from: &str,
    ) -> redis::RedisResult<(String, Vec<StreamEntry>)> {
        let (mut pipe, acks) = self.with_acks();
        pipe.add_command(self.read_cmd(kind, from));
        // The acknowledgements run first (a pipeline keeps its order), so a read of this
        // consumer's own pending entries does not see them again.
        let v = self.query_last(conn, &pipe, acks)?;
        Ok(read_reply(v))
    }

    /// Reads new entries (`READ`); when there are none, the next turn waits from the
    /// group's last delivered id.
    fn read_new(&mut self, conn: &mut Connection) -> redis::RedisResult<Vec<StreamEntry>> {
        let (cursor, entries) = self.read(conn, Read::New, ">")?;
        self.found(cursor, &entries);
        Ok(entries)
    }

    /// Notes what a read of new entries found: none, and the next turn waits after
    /// `cursor`.
    fn found(&mut self, cursor: String, entries: &[StreamEntry]) {
        self.waiting_from = entries.is_empty().then_some(cursor);
        self.read_at = Instant::now();
    }

    /// Waits up to `BLOCK_MS` for an entry after `waiting_from` (XREAD `COUNT 1 BLOCK`,
    /// which takes nothing from the group), after the acknowledgements waiting; whether
    /// one came. The entry comes whole and is dropped (the script reads it after): at most
    /// one entry, which Redis bounds (`proto-max-bulk-len`).
    fn wait_for_entry(&mut self, conn: &mut Connection) -> redis::RedisResult<bool> {
        // Taken, and put back if nothing came (a lost link resets it anyway).
        let from = self.waiting_from.take();
        let (mut pipe, acks) = self.with_acks();
        pipe.cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(PUSH_STREAM)
            // Never without a group's id (a missing group fails the read first); were it
            // so, what comes from now on, and the read every `REREAD_EVERY` sees the rest.
            .arg(from.as_deref().filter(|id| !id.is_empty()).unwrap_or("$"));
        let came = self.query_last(conn, &pipe, acks)? != Value::Nil;
        if !came {
            self.waiting_from = from;
        }
        Ok(came)
    }

    /// The `READ` script for at most `COUNT` entries or `READ_BYTES` of `kind` from
    /// `from`.
    fn read_cmd(&self, kind: Read, from: &str) -> redis::Cmd {
        // EVAL, not EVALSHA: a read of a Redis that lost its scripts (a restart, SCRIPT
        // FLUSH) must not fail after its batch went out and before the batch's
        // acknowledgement; reads come once per batch and per claim, not per poll.
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(READ)
            .arg(1)
            .arg(PUSH_STREAM)
            .arg(GROUP)
            .arg(&*self.ctx.node_id)
            .arg(kind.mode())
            .arg(from)
            .arg(COUNT)
            .arg(MAX_API_BODY_BYTES)
            .arg(READ_BYTES)
            .arg(self.ctx.cluster.claim_idle.as_millis() as u64);
        cmd
    }

    /// Tries this consumer's pending entries again, walking them once in id order (an
    /// entry still refused stays pending and is passed, not read again). Reading them
    /// renews their idle time, so other nodes never claim them while this one lives.
    /// Forgets held entries that are no longer this consumer's.
    fn retry_own(&mut self, conn: &mut Connection) -> redis::RedisResult<()> {
        if self.ctx.blocks.duplicate_id.load(Relaxed) {
            // Twins share one consumer: its pending entries include those the other has
            // just read and not acknowledged yet, and reading them again here would
            // publish them twice. A held entry is claimed once idle `claim_idle_ms`, by
            // whichever node claims it, a twin included.
            return Ok(());
        }
        let mut from = "0".to_string();
        let mut seen = HashSet::new();
        loop {
            if self.ctx.stop.load(Relaxed) {
                return Ok(());
            }
            let (_, mine) = self.read(conn, Read::Own, &from)?;
            let Some(last) = mine.last() else {
                break;
            };
            from = last.id.clone();
            seen.extend(mine.iter().map(|e| e.id.clone()));
            self.ctx
                .metrics
                .broker
                .stream_retried
                .fetch_add(mine.len() as u64, Relaxed);
            self.handle(conn, mine, false)?;
        }
        self.held.keep_only(&seen);
        Ok(())
    }

    /// Under backpressure, where nothing is tried again: renews the idle time of the
    /// entries that remember users reached and are still this node's, so that no other
    /// node claims them (and publishes them to those users again) while this one waits.
    fn renew_held(&mut self, conn: &mut Connection) -> redis::RedisResult<()> {
        let ids: Vec<&String> = self.held.ids().collect();
        for chunk in ids.chunks(COUNT) {
            renew_mine(conn, &self.ctx.node_id, chunk)?;
        }
        Ok(())
    }

    /// Tries this node's held entries again, then takes over entries idle longer than
    /// `claim_idle_ms` in other consumers (a dead node's), then counts what waits:
    /// entries that stay pending (a DLQ that refuses copies, a Redis out of memory) show
    /// in `throng_stream_pending`.
    fn claim(&mut self, conn: &mut Connection) -> redis::RedisResult<()> {
        self.retry_own(conn)?;
        let mut start = "0-0".to_string();
        loop {
            let (next, entries) = self.read(conn, Read::Claim, &start)?;
            if !entries.is_empty() {
                self.ctx
                    .metrics
                    .broker
                    .stream_claimed
                    .fetch_add(entries.len() as u64, Relaxed);
                tracing::info!(
                    count = entries.len(),
                    "claimed stream entries left pending by another node"
                );
                self.handle(conn, entries, false)?;
            }
            if next == "0-0" || next.is_empty() {
                break;
            }
            start = next;
        }
        // After the acknowledgements of what was handled above, which go first.
        let (mut pipe, acks) = self.with_acks();
        pipe.cmd("XPENDING").arg(PUSH_STREAM).arg(GROUP);
        let summary = self.query_last(conn, &pipe, acks)?;
        let waiting = as_list(summary)
            .into_iter()
            .next()
            .and_then(|n| redis::from_redis_value::<u64>(n).ok())
            .unwrap_or(0);
        self.ctx
            .metrics
            .broker
            .stream_pending
            .store(waiting, Relaxed);
        Ok(())
    }

    /// Publishes the valid entries, sends the rest to the DLQ, then acknowledges all (with
    /// the next round trip). The waiting acknowledgements ride with the publish, and with
    /// `read_on` so does a read of the entries that came meanwhile, which it returns.
    fn handle(
        &mut self,
        conn: &mut Connection,
        entries: Vec<StreamEntry>,
        read_on: bool,
    ) -> redis::RedisResult<Vec<StreamEntry>> {
        self.ctx
            .metrics
            .broker
            .stream_read
            .fetch_add(entries.len() as u64, Relaxed);
        let mut valid: Vec<(usize, ParsedPush)> = Vec::new();
        let mut dead: Vec<(usize, String)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match &e.push {
                Push::Missing => dead.push((i, "entry has no `push` field".into())),
                // The API's body limit holds for the stream too: Redis takes values of
                // up to 512 MB, a frame of which every recipient would queue. The read
                // brought only its length.
                Push::TooBig(n) => dead.push((i, too_big(*n))),
                Push::Raw(raw) if raw.len() > MAX_API_BODY_BYTES => {
                    dead.push((i, too_big(raw.len() as u64)))
                }
                Push::Raw(raw) => match parse_push(raw) {
                    Ok(mut p) => {
                        // Nothing to look up while nothing is held (the usual case).
                        if !self.held.is_empty() {
                            if let Some(reached) = self.held.reached(&e.id) {
                                leave_out(&mut p, reached);
                            }
                        }
                        valid.push((i, p));
                    }
                    Err(msg) => dead.push((i, msg)),
                },
            }
        }
        // Unmarked: entries are claimed across nodes, so marks in one node's order would
        // not tell what Redis took; `held` does that here.
        let refs: Vec<Sending<'_>> = valid
            .iter()
            .map(|(_, push)| Sending { push, mark: None })
            .collect();
        let (before, acks) = self.with_acks();
        let after = read_on.then(|| self.read_cmd(Read::New, ">"));
        // A connection error here leaves everything unacknowledged: read again later.
        let batch = self.sequencer.publish_between(conn, before, &refs, after)?;
        self.acked(&mut batch.before.into_iter(), acks)?;
        // Entries neither acknowledged nor dead-lettered now: claimed again later.
        let mut held = vec![false; entries.len()];
        let mut for_now = None;
        for ((i, _), refused) in valid.iter().zip(batch.refused) {
            let Some(refused) = refused else {
                continue;
            };
            // Whatever becomes of it, a retry (of a for-now refusal, or of a dead entry
            // whose DLQ copy Redis refuses) must not reach these users again.
            let for_good = refused.for_good().map(|(_, e)| e.clone());
            let first = refused.errors.first().map(|(_, e)| e.clone());
            self.held.remember(&entries[*i].id, refused.reached);
            match for_good {
                // Redis refused this push (not the link): it would fail again.
                Some(e) => dead.push((*i, format!("Redis refused the push: {e}"))),
                None => {
                    held[*i] = true;
                    for_now.get_or_insert((0u64, first.unwrap_or_default())).0 += 1;
                }
            }
        }
        if let Some((n, e)) = for_now {
            self.ctx.metrics.broker.errors.fetch_add(n, Relaxed);
            tracing::warn!(count = n, error = %e,
                "Redis refused stream pushes for now; they stay pending and are claimed again later");
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (i, why) in &dead {
            // Pending until its copy is made: tried again (as dead again) with the rest.
            held[*i] = true;
            // An oversized entry keeps its head only (`DLQ_KEEP_OVERSIZED`): the DLQ is
            // bounded by count, and each entry by this, not by what a producer sent.
            let (raw, from_stream) = match &entries[*i].push {
                Push::Raw(raw) => (&raw[..raw.len().min(DLQ_KEEP_BYTES)], false),
                Push::Missing => (&[][..], false),
                // The node never read it: the script copies its head from the entry.
                Push::TooBig(_) => (&[][..], true),
            };
            pipe.cmd("EVAL")
                .arg(DLQ_AND_ACK)
                .arg(2)
                .arg(PUSH_STREAM)
                .arg(DLQ_STREAM)
                .arg(DLQ_MAXLEN)
                .arg(raw)
                .arg(why)
                .arg(&*self.ctx.node_id)
                .arg(&entries[*i].id)
                .arg(GROUP);
            if from_stream {
                pipe.arg(DLQ_KEEP_OVERSIZED);
            }
        }
        let published: Vec<&str> = entries
            .iter()
            .zip(&held)
            .filter(|(_, &h)| !h)
            .map(|(e, _)| e.id.as_str())
            .collect();
        if !self.held.is_empty() {
            for id in &published {
                self.held.forget(id);
            }
        }
        let xack = !published.is_empty();
        if xack {
            pipe.cmd("XACK").arg(PUSH_STREAM).arg(GROUP).arg(published);
        }
        // Sent with the next read, claim or batch: one round trip fewer per batch. One
        // batch waits at a time (the one before went out with the publish above).
        if xack || !dead.is_empty() {
            self.acks = Some(Acks {
                pipe,
                dead: dead.len(),
                xack,
            });
        }
        let Some(read) = batch.after.map(|v| v.extract_error()).transpose()? else {
            return Ok(Vec::new());
        };
        // A read that found nothing: the next turn waits at once, not after one more.
        let (cursor, entries) = read_reply(read);
        self.found(cursor, &entries);
        Ok(entries)
    }
}

/// Takes the users an earlier attempt numbered out of a `users` push (the only kind Redis
/// can refuse partway).
fn leave_out(push: &mut ParsedPush, reached: &HashSet<String>) {
    if let Target::Users(list) = &mut push.target {
        list.retain(|u| !reached.contains(u));
    }
}

/// Why an entry whose push is `n` bytes is dead.
fn too_big(n: u64) -> String {
    format!("push is {n} bytes, larger than {MAX_API_BODY_BYTES} bytes")
}

/// A `READ` reply: the next cursor, then each entry's id and push.
fn read_reply(v: Value) -> (String, Vec<StreamEntry>) {
    let mut items = as_list(v).into_iter();
    let next = items
        .next()
        .and_then(|v| redis::from_redis_value(v).ok())
        .unwrap_or_default();
    let mut out = Vec::new();
    while let (Some(id), Some(push)) = (items.next(), items.next()) {
        let Ok(id) = redis::from_redis_value::<String>(id) else {
            continue;
        };
        let push = match push {
            Value::Int(n) => Push::TooBig(n.max(0) as u64),
            Value::Nil | Value::Boolean(false) => Push::Missing,
            v => redis::from_redis_value::<Vec<u8>>(v).map_or(Push::Missing, Push::Raw),
        };
        out.push(StreamEntry { id, push });
    }
    (next, out)
}

/// The items of an array reply (nothing for nil or anything else).
fn as_list(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_read_reply_gives_the_cursor_and_each_push_its_bytes_length_or_nothing() {
        let v = Value::Array(vec![
            bulk("5-0"),
            bulk("1-0"),
            bulk("{}"),
            bulk("2-0"),
            Value::Int(40 << 20),
            bulk("3-0"),
            Value::Nil,
            bulk("4-0"),
            Value::Boolean(false),
        ]);
        let (next, entries) = read_reply(v);
        assert_eq!(next, "5-0");
        let got: Vec<(&str, &Push)> = entries.iter().map(|e| (e.id.as_str(), &e.push)).collect();
        assert_eq!(
            got,
            [
                ("1-0", &Push::Raw(b"{}".to_vec())),
                ("2-0", &Push::TooBig(40 << 20)),
                ("3-0", &Push::Missing),
                ("4-0", &Push::Missing),
            ]
        );
        let (next, entries) = read_reply(Value::Nil);
        assert!(next.is_empty() && entries.is_empty());
        assert_eq!(
            too_big(1_048_577),
            "push is 1048577 bytes, larger than 1048576 bytes"
        );
    }
}
