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

/// Entries read per round trip.
const COUNT: usize = 256;
/// How long one XREADGROUP waits for entries.
const BLOCK_MS: u64 = 100;
/// Bytes of an invalid entry's `push` kept in the DLQ (the API's body limit: a valid
/// push always fits).
const DLQ_KEEP_BYTES: usize = MAX_API_BODY_BYTES;
/// DLQ length bound (approximate trim).
const DLQ_MAXLEN: u64 = 10_000;

/// Copies one dead entry to the DLQ and acknowledges it, in one step: an entry whose copy
/// Redis refuses (out of memory, a DLQ key of another type) stays pending and is claimed
/// again later, never acknowledged without its copy. KEYS: the push stream, the DLQ.
/// ARGV: DLQ length bound, push, error, node, entry id, group.
const DLQ_AND_ACK: &str = r#"
local r = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'push', ARGV[2],
  'error', ARGV[3], 'node', ARGV[4], 'id', ARGV[5])
if type(r) == 'table' and r.err then return r end
return redis.call('XACK', KEYS[1], ARGV[6], ARGV[5])
"#;

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

/// One stream entry: its id and its `push` field, if it had one.
struct StreamEntry {
    id: String,
    push: Option<Vec<u8>>,
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
    /// The acknowledgements (and DLQ copies) of the entries handled last: sent ahead of
    /// the next read, claim or batch, in its round trip.
    acks: Option<Acks>,
    /// Entries this node left pending after an attempt reached some of their users, with
    /// those users: a retry leaves them out.
    held: Held,
}

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
            acks: None,
            held: Held::default(),
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
                    let Err(e) = self.serve(&mut conn) else {
                        continue;
                    };
                    if super::is_interrupted(&e) {
                        // SIGSTOP and SIGCONT interrupt the blocked read (a socket with a
                        // timeout is not restarted): nothing is wrong. The link is out of
                        // step (a reply half read), so the read is tried again on a new
                        // one at once; this consumer's pending entries are read first, so
                        // what the lost reply held is not lost.
                        tracing::debug!(
                            "stream ingress read interrupted by a signal; reading again"
                        );
                        continue;
                    }
                    let e = super::describe(&e, self.ctx.redis.is_tls());
                    tracing::warn!(error = %e, "stream ingress lost Redis; reconnecting");
                    lost = true;
                    self.ctx.metrics.broker.errors.fetch_add(1, Relaxed);
                    // Not at once: an error that repeats must not become a busy loop.
                    pause(self.backoff, &self.ctx.stop);
                    self.backoff = next_backoff(self.backoff);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "stream ingress cannot reach Redis");
                    pause(self.backoff, &self.ctx.stop);
                    self.backoff = next_backoff(self.backoff);
                }
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
            self.trim(conn)?;
            let mut entries = self.read(conn, ">", BLOCK_MS)?;
            while !entries.is_empty() {
                // A blocked read returns at a producer's first XADD: the rest of its
                // pipeline comes back with this batch's publish, not a round trip later.
                let read_on = !self.must_pause();
                entries = self.handle(conn, entries, read_on)?;
            }
            self.backoff = RECONNECT_MIN;
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

    /// XREADGROUP from `from` (`>`: new entries; `0`: this consumer's pending ones).
    fn read(
        &mut self,
        conn: &mut Connection,
        from: &str,
        block_ms: u64,
    ) -> redis::RedisResult<Vec<StreamEntry>> {
        let (mut pipe, acks) = self.with_acks();
        pipe.add_command(self.read_cmd(from, block_ms));
        // The acknowledgements run first (a pipeline keeps its order), so a read of this
        // consumer's own pending entries does not see them again.
        let v = self.query_last(conn, &pipe, acks)?;
        Ok(read_entries(v))
    }

    /// XREADGROUP of `COUNT` entries from `from`, waiting `block_ms` (0: not at all).
    fn read_cmd(&self, from: &str, block_ms: u64) -> redis::Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&*self.ctx.node_id)
            .arg("COUNT")
            .arg(COUNT);
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS").arg(PUSH_STREAM).arg(from);
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
            let mine = self.read(conn, &from, 0)?;
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
            let (mut pipe, acks) = self.with_acks();
            pipe.cmd("XAUTOCLAIM")
                .arg(PUSH_STREAM)
                .arg(GROUP)
                .arg(&*self.ctx.node_id)
                .arg(self.ctx.cluster.claim_idle.as_millis() as u64)
                .arg(&start)
                .arg("COUNT")
                .arg(COUNT);
            let v = self.query_last(conn, &pipe, acks)?;
            let mut parts = as_list(v).into_iter();
            let next: String = parts
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_else(|| "0-0".into());
            let entries: Vec<StreamEntry> = parts
                .next()
                .map(as_list)
                .unwrap_or_default()
                .into_iter()
                .filter_map(entry)
                .collect();
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
            if next == "0-0" {
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
                None => dead.push((i, "entry has no `push` field".into())),
                // The API's body limit holds for the stream too: Redis takes values of
                // up to 512 MB, a frame of which every recipient would queue.
                Some(raw) if raw.len() > MAX_API_BODY_BYTES => {
                    dead.push((i, format!("push is larger than {MAX_API_BODY_BYTES} bytes")))
                }
                Some(raw) => match parse_push(raw) {
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
        let after = read_on.then(|| self.read_cmd(">", 0));
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
            let raw = entries[*i].push.as_deref().unwrap_or_default();
            // An oversized entry keeps its head only: the DLQ is bounded by count, and
            // each entry by this, not by what a producer sent.
            let raw = &raw[..raw.len().min(DLQ_KEEP_BYTES)];
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
        let read = batch.after.map(|v| v.extract_error()).transpose()?;
        Ok(read.map(read_entries).unwrap_or_default())
    }
}

/// Takes the users an earlier attempt numbered out of a `users` push (the only kind Redis
/// can refuse partway).
fn leave_out(push: &mut ParsedPush, reached: &HashSet<String>) {
    if let Target::Users(list) = &mut push.target {
        list.retain(|u| !reached.contains(u));
    }
}

/// The entries of an XREADGROUP reply: `[[stream, [entry, ...]]]`, or nil when nothing
/// came.
fn read_entries(v: Value) -> Vec<StreamEntry> {
    let mut out = Vec::new();
    for stream in as_list(v) {
        let mut parts = as_list(stream).into_iter();
        let _name = parts.next();
        if let Some(entries) = parts.next() {
            out.extend(as_list(entries).into_iter().filter_map(entry));
        }
    }
    out
}

/// The items of an array reply (nothing for nil or anything else).
fn as_list(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// `[id, [field, value, ...]]` into an entry; a deleted entry (nil fields) has no push.
fn entry(v: Value) -> Option<StreamEntry> {
    let mut parts = as_list(v).into_iter();
    let id: String = redis::from_redis_value(parts.next()?).ok()?;
    let fields = parts.next().map(as_list).unwrap_or_default();
    let mut push = None;
    let mut it = fields.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let k: Vec<u8> = redis::from_redis_value(k).unwrap_or_default();
        if k == b"push" {
            push = redis::from_redis_value::<Vec<u8>>(v).ok();
        }
    }
    Some(StreamEntry { id, push })
}
