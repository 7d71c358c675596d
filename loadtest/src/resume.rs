//! Delivery across reconnects (PROTOCOL.md 4.2): every connection number tracks its user
//! stream and each topic stream (last `seq`, `epoch`, what arrived) across its sockets, so
//! a reconnect asks for exactly what it missed and the report proves what arrived. Also
//! the `resume` scenario: pushes flow while a share of the connections drop abruptly and
//! reconnect with `since`/`epoch`.

use crate::cli::{secs, ResumeArgs};
use crate::client::{ClientCfg, Shared};
use crate::local::Local;
use crate::push::PushOut;
use crate::report::Report;
use crate::track::{SeqTracker, Tally};
use crate::util::Url;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// How the event loops treat streams in the `resume` and `deploy` scenarios.
#[derive(Debug, Clone)]
pub struct StreamsCfg {
    /// Churn cycles drop the socket with a reset instead of a clean close (resume).
    pub abrupt_churn: bool,
    /// How long a dropped connection stays away before it reconnects (resume).
    pub offline: Duration,
    /// Deploy: after a drain's close 1001, reconnect here.
    pub reconnect_url: Option<Url>,
    /// Deploy: most jitter added to a hint's `after_ms`.
    pub jitter_ms: u64,
}

/// The placeholder epoch of a topic with no numbered push: never a stream's epoch, so a
/// `since` for it cannot resume.
const PLACEHOLDER_EPOCH: &str = "0000000000000000";

/// Most 100 ms buckets of the deploy reconnect curve (1000 s).
const MAX_BUCKETS: usize = 10_000;

/// One stream as one connection number saw it, across its sockets.
#[derive(Debug)]
struct Stream {
    epoch: Box<str>,
    /// This numbering's numbers (an epoch's, from the first answer or the last reset).
    seq: SeqTracker,
    /// Distinct, duplicated and out-of-order numbers, and numbers not replayed, of
    /// earlier numberings.
    before: (u64, u64, u64, u64),
    /// Whether a `resumed:false` restarted the numbering (another epoch, or a `since`
    /// beyond the server's `seq`): the stream is then judged by count, not by number.
    renumbered: bool,
    /// Push frames received (duplicates included).
    received: u64,
}

impl Stream {
    fn new(seq: u64, epoch: &str) -> Stream {
        Stream {
            epoch: epoch.into(),
            seq: SeqTracker::after(seq),
            before: (0, 0, 0, 0),
            renumbered: false,
            received: 0,
        }
    }

    /// The `since`/`epoch` to resume with.
    fn position(&self) -> (u64, &str) {
        (self.seq.last(), &self.epoch)
    }

    /// Takes the server's answer to a resume (or a first `welcome`/`subscribed` when
    /// `resumed` is `None` and nothing was asked).
    fn on_answer(&mut self, seq: u64, epoch: &str, resumed: Option<bool>, t: &mut StreamTotals) {
        if resumed == Some(true) {
            t.resumed_true += 1;
            t.replayed += seq.saturating_sub(self.seq.last());
            return; // the replay continues this epoch's numbers
        }
        let cause = if resumed.is_none() {
            "no_resumed_field"
        } else if &*self.epoch == PLACEHOLDER_EPOCH {
            "placeholder_epoch"
        } else if &*self.epoch != epoch {
            "epoch_changed"
        } else if self.seq.last() > seq {
            "since_beyond_seq"
        } else {
            "history_not_held"
        };
        t.resumed_false += 1;
        *t.resumed_false_because.entry(cause.into()).or_insert(0) += 1;
        if cause == "history_not_held" {
            // Same epoch, `since` <= `seq`: the server said it would not replay
            // `since`+1..=`seq` (the client reloads instead). Those are not replayed,
            // not missing; the numbering goes on, so a gap before `since` or after `seq`
            // is still missing.
            self.seq.skip_to(seq);
            return;
        }
        // Nothing old comes: continue from the server's position, in its epoch.
        self.before.0 += self.seq.unique;
        self.before.1 += self.seq.duplicated;
        self.before.2 += self.seq.out_of_order;
        self.before.3 += self.seq.skipped();
        self.seq = SeqTracker::after(seq);
        self.epoch = epoch.into();
        self.renumbered = true;
    }

    /// Takes the epoch a push names (a topic's first push names the epoch it starts): a
    /// stream known only by the placeholder resumes with it from then on.
    fn named(&mut self, epoch: &str) {
        if &*self.epoch == PLACEHOLDER_EPOCH && epoch != PLACEHOLDER_EPOCH {
            self.epoch = epoch.into();
        }
    }

    /// Records a push; true when its number is new.
    fn record(&mut self, seq: u64) -> bool {
        self.received += 1;
        let before = self.seq.unique;
        self.seq.record(seq);
        self.seq.unique > before
    }

    /// Adds this stream's figures against `expected` pushes: each is delivered, not
    /// replayed (inside a span a `resumed:false` answered for) or missing.
    fn settle(&self, expected: u64, t: &mut StreamTotals) {
        let unique = self.before.0 + self.seq.unique;
        let (missing, not_replayed) = if self.renumbered {
            // Several numberings: by count. An old epoch's pushes after `since` cannot
            // be numbered, so a shortfall there counts as missing.
            let not_replayed = (self.before.3 + self.seq.skipped()).min(expected);
            let missing = (expected - not_replayed).saturating_sub(unique);
            (missing, not_replayed)
        } else {
            // One numbering from the first answer, the expected pushes numbered after
            // it: by number, so an extra delivery never hides a missing one.
            (self.seq.missing_of(expected), self.seq.skipped_of(expected))
        };
        let delivered = expected - missing - not_replayed;
        t.streams += 1;
        t.not_replayed += not_replayed;
        let t = &mut t.tally;
        t.expected += expected;
        t.delivered += delivered;
        t.received += self.received;
        t.duplicated += self.before.1 + self.seq.duplicated;
        t.out_of_order += self.before.2 + self.seq.out_of_order;
        t.missing += missing;
        t.unexpected += unique.saturating_sub(delivered);
    }
}

/// Delivery figures of one kind of stream (user or topic), over every connection.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamTotals {
    /// Streams tracked (connections, or connection-topic pairs).
    pub streams: u64,
    /// Pushes the API accepted for these streams (once per receiving connection), and
    /// what arrived of them: `expected` = `delivered` + `not_replayed` + `missing`.
    /// `missing` is a real loss: a gap in live delivery or after `resumed:true`, or a
    /// push never delivered that no `resumed:false` covered.
    #[serde(flatten)]
    pub tally: Tally,
    /// Expected pushes not delivered because a resume was answered `resumed:false` for
    /// them (cause `history_not_held`: numbered after the client's `since`, up to the
    /// answer's `seq`, in the same epoch). The server said it would not replay them and
    /// the client reloads its state: not missing, and not a failure.
    #[serde(default)]
    pub not_replayed: u64,
    /// Resumes answered `resumed: true`.
    pub resumed_true: u64,
    /// Pushes those resumes owed by replay (the server's `seq` minus our `since`).
    pub replayed: u64,
    /// Resumes answered `resumed: false`, and why (see the README).
    pub resumed_false: u64,
    /// `resumed: false` by cause.
    pub resumed_false_because: BTreeMap<String, u64>,
}

impl StreamTotals {
    fn merge(&mut self, o: &StreamTotals) {
        self.streams += o.streams;
        self.tally.add(&o.tally);
        self.not_replayed += o.not_replayed;
        self.resumed_true += o.resumed_true;
        self.replayed += o.replayed;
        self.resumed_false += o.resumed_false;
        crate::client::merge_counts(
            &mut self.resumed_false_because,
            o.resumed_false_because.clone(),
        );
    }
}

/// What the deploy scenario's clients saw of the drain.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DrainSeen {
    /// `reconnect` hints received.
    pub hints: u64,
    /// Closes 1001 after the connection's hint.
    pub closes_after_hint: u64,
    /// Closes 1001 without a hint first.
    pub closes_without_hint: u64,
    /// The largest `after_ms` of a hint.
    pub after_ms_max: u64,
    /// Reconnects to the second server per 100 ms since the drain was asked for.
    pub buckets: Vec<u64>,
    /// Reconnects still waiting for their time when the run closed.
    pub not_reconnected: u64,
}

/// Everything the streams of one or more event loops saw.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Totals {
    /// The user streams.
    pub user: StreamTotals,
    /// The topic streams.
    pub topic: StreamTotals,
    /// Deploy: the drain.
    pub drain: DrainSeen,
    /// Pushes that named a topic this connection had no `subscribed` for.
    pub stray: u64,
}

impl Totals {
    /// Adds another event loop's figures.
    pub fn merge(&mut self, o: &Totals) {
        self.user.merge(&o.user);
        self.topic.merge(&o.topic);
        let (d, od) = (&mut self.drain, &o.drain);
        d.hints += od.hints;
        d.closes_after_hint += od.closes_after_hint;
        d.closes_without_hint += od.closes_without_hint;
        d.after_ms_max = d.after_ms_max.max(od.after_ms_max);
        d.not_reconnected += od.not_reconnected;
        if od.buckets.len() > d.buckets.len() {
            d.buckets.resize(od.buckets.len(), 0);
        }
        for (a, b) in d.buckets.iter_mut().zip(&od.buckets) {
            *a += b;
        }
        self.stray += o.stray;
    }
}

/// One connection number's streams and drain state.
#[derive(Debug, Default)]
struct ConnStreams {
    user: Option<Stream>,
    topics: Vec<Option<Stream>>,
    /// Deploy: when the hint came and its `after_ms`.
    hint: Option<(Instant, u64)>,
    /// Deploy: its next sockets go to the second server.
    moved: bool,
}

/// One event loop's streams, by connection number.
pub struct Book {
    cfg: StreamsCfg,
    topics: usize,
    conns: HashMap<u32, ConnStreams>,
    totals: Totals,
}

/// A `subscribe` message, with `since`/`epoch` when `from` is given.
pub fn subscribe_json(topic: &str, from: Option<(u64, &str)>) -> String {
    let t = serde_json::to_string(topic).unwrap_or_default();
    match from {
        Some((since, epoch)) => format!(
            "{{\"type\":\"subscribe\",\"topic\":{t},\"since\":{since},\"epoch\":{}}}",
            serde_json::to_string(epoch).unwrap_or_default()
        ),
        None => format!("{{\"type\":\"subscribe\",\"topic\":{t}}}"),
    }
}

/// Percent-encodes an epoch for the query string (the server's are hex digits).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Book {
    /// An empty book for `topics` topics.
    pub fn new(cfg: &StreamsCfg, topics: usize) -> Book {
        Book {
            cfg: cfg.clone(),
            topics,
            conns: HashMap::new(),
            totals: Totals::default(),
        }
    }

    fn conn(&mut self, g: u32) -> &mut ConnStreams {
        let topics = self.topics;
        self.conns.entry(g).or_insert_with(|| ConnStreams {
            topics: (0..topics).map(|_| None).collect(),
            ..Default::default()
        })
    }

    /// Where connection number `g` connects, and whether that is the second server.
    pub fn url_for<'a>(&'a self, g: u32, first: &'a Url) -> (&'a Url, bool) {
        match (&self.cfg.reconnect_url, self.conns.get(&g)) {
            (Some(second), Some(c)) if c.moved => (second, true),
            _ => (first, false),
        }
    }

    /// `since=..&epoch=..` for connection number `g`'s next upgrade, once it has a stream.
    pub fn user_query(&self, g: u32) -> Option<String> {
        let (since, epoch) = self.conns.get(&g)?.user.as_ref()?.position();
        Some(format!("since={since}&epoch={}", query_escape(epoch)))
    }

    /// Takes a `welcome`.
    pub fn on_welcome(&mut self, g: u32, seq: u64, epoch: &str, resumed: Option<bool>) {
        let mut t = std::mem::take(&mut self.totals.user);
        let c = self.conn(g);
        match c.user.as_mut() {
            Some(s) => s.on_answer(seq, epoch, resumed, &mut t),
            None => c.user = Some(Stream::new(seq, epoch)),
        }
        self.totals.user = t;
    }

    /// Counts a reconnect to the second server `us` microseconds after the drain began.
    pub fn count_move(&mut self, us: u64) {
        let i = ((us / 100_000) as usize).min(MAX_BUCKETS - 1);
        let b = &mut self.totals.drain.buckets;
        if b.len() <= i {
            b.resize(i + 1, 0);
        }
        b[i] += 1;
    }

    /// The `subscribe` for topic `i` of connection number `g`: resuming when it has a
    /// numbered position in that topic.
    pub fn subscribe_msg(&self, g: u32, i: usize, topic: &str) -> String {
        let from = self
            .conns
            .get(&g)
            .and_then(|c| c.topics.get(i)?.as_ref())
            .map(Stream::position);
        subscribe_json(topic, from)
    }

    /// Takes a `subscribed`.
    pub fn on_subscribed(
        &mut self,
        g: u32,
        topic: &str,
        seq: u64,
        epoch: &str,
        resumed: Option<bool>,
        names: &[String],
    ) {
        let Some(i) = names.iter().position(|n| n == topic) else {
            return;
        };
        let mut t = std::mem::take(&mut self.totals.topic);
        let c = self.conn(g);
        if let Some(slot) = c.topics.get_mut(i) {
            match slot.as_mut() {
                Some(s) => s.on_answer(seq, epoch, resumed, &mut t),
                None => *slot = Some(Stream::new(seq, epoch)),
            }
        }
        self.totals.topic = t;
    }

    /// Records a numbered push (naming `epoch` when it starts one); true when it is a
    /// first delivery.
    pub fn on_push(
        &mut self,
        g: u32,
        topic: Option<&str>,
        (seq, epoch): (u64, Option<&str>),
        names: &[String],
    ) -> bool {
        let c = self.conn(g);
        let s = match topic {
            None => c.user.as_mut(),
            Some(t) => names
                .iter()
                .position(|n| n == t)
                .and_then(|i| c.topics.get_mut(i)?.as_mut()),
        };
        match s {
            Some(s) => {
                if let Some(e) = epoch {
                    s.named(e);
                }
                s.record(seq)
            }
            None => {
                self.totals.stray += 1;
                false
            }
        }
    }

    /// Takes a `reconnect` hint.
    pub fn on_hint(&mut self, g: u32, after_ms: u64) {
        let d = &mut self.totals.drain;
        d.hints += 1;
        d.after_ms_max = d.after_ms_max.max(after_ms);
        self.conn(g).hint = Some((Instant::now(), after_ms));
    }

    /// Whether a connection that ended with `end` follows a drain to the second server.
    pub fn follows_drain(&self, end: Option<&str>) -> bool {
        self.cfg.reconnect_url.is_some() && end == Some("close_1001")
    }

    /// A drain closed connection number `g`: when it reconnects (its hint's time plus
    /// jitter, never before now).
    pub fn on_drain_close(&mut self, g: u32, now: Instant) -> Instant {
        let jitter = Duration::from_millis(rand::rng().random_range(0..=self.cfg.jitter_ms));
        let c = self.conn(g);
        c.moved = true;
        let hint = c.hint.take();
        let d = &mut self.totals.drain;
        let at = match hint {
            Some((t, after)) => {
                d.closes_after_hint += 1;
                (t + Duration::from_millis(after)).max(now)
            }
            None => {
                d.closes_without_hint += 1;
                now
            }
        };
        at + jitter
    }

    /// A reconnect waiting for its time was dropped by the end of the run.
    pub fn not_reconnected(&mut self, _g: u32) {
        self.totals.drain.not_reconnected += 1;
    }

    /// The final figures: each stream against what the API accepted for it.
    pub fn finish(mut self: Box<Self>, sh: &Shared, cfg: &ClientCfg) -> Totals {
        let spu = cfg.sessions_per_user.max(1);
        for (&g, c) in self.conns.iter() {
            if let Some(s) = &c.user {
                let u = (g as u64 / spu) as usize;
                let expected = sh.accepted.get(u).map_or(0, |a| a.load(Relaxed));
                s.settle(expected, &mut self.totals.user);
            }
            for (i, s) in c.topics.iter().enumerate() {
                if let Some(s) = s {
                    let expected = sh.accepted_topic.get(i).map_or(0, |a| a.load(Relaxed));
                    s.settle(expected, &mut self.totals.topic);
                }
            }
        }
        self.totals
    }
}

/// Distinct deliveries every tracked stream should have now (all connections up, each on
/// all topics), for the drain wait.
pub fn expected_now(sh: &Shared, cfg: &ClientCfg) -> u64 {
    let spu = cfg.sessions_per_user.max(1);
    let users: u64 = sh
        .accepted
        .iter()
        .enumerate()
        .map(|(u, a)| {
            let sessions = cfg.connections.saturating_sub(u as u64 * spu).min(spu);
            a.load(Relaxed) * sessions
        })
        .sum();
    let topics: u64 = sh.accepted_topic.iter().map(|a| a.load(Relaxed)).sum();
    users + topics * cfg.connections
}

/// Whether the delivery figures fail the gate: anything missing or duplicated. Pushes
/// not replayed after `resumed:false` do not fail it (the server said so; the report
/// counts them apart).
pub fn failed(t: &Totals) -> bool {
    let (u, tp) = (&t.user.tally, &t.topic.tally);
    u.missing + u.duplicated + tp.missing + tp.duplicated > 0
}

/// One push per topic before any connection, so every topic has a real epoch when the
/// clients subscribe (a topic never pushed shows a placeholder epoch, which cannot be
/// resumed).
pub fn prime_topics(p: &crate::cli::PushArgs, topics: &[String]) -> Result<(), String> {
    let url = crate::push::ApiTarget::from_flags(&p.api, &p.conn.sock.tls)
        .map_err(|e| format!("--api: {e}"))?;
    let key = p.api_key.as_deref();
    for t in topics {
        let body = format!(
            "{{\"topic\":{},\"data\":{{\"prime\":true}}}}",
            serde_json::to_string(t).unwrap_or_default()
        );
        let (status, answer) = crate::push::post(&url, key, "/v1/push", &body)
            .map_err(|e| format!("priming topic {t:?}: {e}"))?;
        if !(200..300).contains(&status) {
            return Err(format!(
                "priming topic {t:?}: POST /v1/push answered {status}: {}",
                String::from_utf8_lossy(&answer).trim()
            ));
        }
    }
    Ok(())
}

/// The `resume` scenario in this process: connect, push (users, and topics at
/// `--topic-rate`) while churners drop abruptly and resume, drain, close. Returns the
/// report and the exit status (1 when anything went missing or came twice).
pub fn run(a: &ResumeArgs) -> Result<(Report, i32), String> {
    let p = &a.churn.push;
    let c = &p.conn;
    if !c.topics.is_empty() {
        prime_topics(p, &c.topics)?;
    }
    let streams = StreamsCfg {
        abrupt_churn: true,
        offline: Duration::from_millis(a.offline_ms),
        reconnect_url: None,
        jitter_ms: 0,
    };
    let mut l = Local::start_with(c, Some(p), Some(&a.churn), false, Some(streams))?;
    l.ticker.note(&format!(
        "throng-load resume: {} connections to {}, {:.0}% dropping at {}/s, {} ms offline each time",
        c.connections,
        c.url,
        a.churn.churn_fraction * 100.0,
        a.churn.churn_rate,
        a.offline_ms
    ));
    l.wait_connected();
    let connect_secs = l.connect_secs();
    l.sleep_ticking(secs(c.settle_secs));
    let mut rep = l.report_start(Some(p), Some(&a.churn), connect_secs);
    rep.mode = "resume".into();
    let t0 = l.sh.start.elapsed().as_micros() as u64;
    let pushed = push_users_and_topics(&mut l, p, a.topic_rate, true)?;
    l.wait_churn_settled();
    drain_streams(&mut l, secs(p.drain_secs));
    let delivery_secs = l.sh.last_recv_us.load(Relaxed).saturating_sub(t0) as f64 / 1e6;
    let t = l.close();
    rep.fill_streams(&t, &pushed, delivery_secs);
    let code = i32::from(failed(&t.delivery));
    Ok((rep, code))
}

/// Pushes to users at `--rate` and, with `--topics`, to the topics at `topic_rate`, at
/// once, for `--duration-secs` (or `--count` user pushes); churn runs meanwhile when asked.
pub fn push_users_and_topics(
    l: &mut Local,
    p: &crate::cli::PushArgs,
    topic_rate: f64,
    churn: bool,
) -> Result<PushOut, String> {
    let mut cfgs = vec![l.push_cfg(p)?];
    if !l.cfg.topics.is_empty() && topic_rate > 0.0 {
        let mut t = l.push_cfg(p)?;
        t.target = crate::client::Target::Topic;
        t.rate = topic_rate;
        t.count = None;
        t.concurrency = 1;
        t.duration = cfgs[0].duration;
        cfgs.push(t);
    }
    Ok(l.push_all(cfgs, churn))
}

/// Waits (at most `max`) until every tracked stream has what the API accepted for it.
pub fn drain_streams(l: &mut Local, max: Duration) {
    let end = Instant::now() + max;
    while Instant::now() < end {
        if l.sh.push_unique.load(Relaxed) >= expected_now(&l.sh, &l.cfg) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        l.tick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals() -> StreamTotals {
        StreamTotals::default()
    }

    #[test]
    fn resumed_true_keeps_counting_the_same_epoch() {
        let mut t = totals();
        let mut s = Stream::new(3, "e1");
        assert!(s.record(4));
        assert_eq!(s.position(), (4, "e1"));
        s.on_answer(9, "e1", Some(true), &mut t);
        assert_eq!(t.replayed, 5, "5..=9 are owed by the replay");
        for n in 5..=9 {
            assert!(s.record(n));
        }
        assert!(!s.record(9), "a second 9 is a duplicate");
        s.settle(6, &mut t);
        let d = &t.tally;
        assert_eq!((d.delivered, d.missing, d.duplicated), (6, 0, 1));
        assert_eq!((t.resumed_true, t.resumed_false), (1, 0));
    }

    #[test]
    fn a_stream_known_by_the_placeholder_resumes_with_the_epoch_its_first_push_names() {
        let mut t = totals();
        let mut p = Stream::new(0, PLACEHOLDER_EPOCH);
        p.named("e1");
        assert!(p.record(1));
        assert_eq!(p.position(), (1, "e1"));
        p.named("e2"); // only the placeholder is replaced
        assert_eq!(p.position(), (1, "e1"));
        p.on_answer(1, "e1", Some(true), &mut t);
        assert_eq!(t.resumed_false, 0);
    }

    #[test]
    fn resumed_false_is_counted_with_its_cause_and_what_it_did_not_replay() {
        let mut t = totals();
        let mut s = Stream::new(0, "e1");
        s.record(1);
        s.on_answer(5, "e1", Some(false), &mut t); // 2..=5 no longer held
        assert_eq!(s.position(), (5, "e1"), "the next resume asks from 5");
        s.record(6);
        let mut b = Stream::new(0, "e1");
        b.record(1);
        b.on_answer(0, "e2", Some(false), &mut t); // another epoch
        b.record(1);
        let mut p = Stream::new(0, PLACEHOLDER_EPOCH);
        p.on_answer(0, "e3", Some(false), &mut t);
        s.settle(6, &mut t);
        assert_eq!(
            (t.tally.delivered, t.not_replayed, t.tally.missing),
            (2, 4, 0),
            "2..=5 are not replayed (the server said so), not missing"
        );
        assert_eq!(t.resumed_false, 3);
        let because: Vec<_> = t.resumed_false_because.into_iter().collect();
        assert_eq!(
            because,
            vec![
                ("epoch_changed".to_string(), 1),
                ("history_not_held".to_string(), 1),
                ("placeholder_epoch".to_string(), 1)
            ]
        );
    }

    #[test]
    fn a_false_span_is_not_replayed_but_gaps_around_it_are_missing() {
        // From 10, expected 11..=30. Live: 11, 13 (12 lost live). Offline from 13; the
        // server answers resumed:false at 20 (14..=20 not replayed), then skips 22 and
        // never sends 30.
        let mut t = totals();
        let mut s = Stream::new(10, "e");
        for n in [11, 13] {
            s.record(n);
        }
        s.on_answer(20, "e", Some(false), &mut t);
        for n in (21..=29).filter(|&n| n != 22) {
            s.record(n);
        }
        s.settle(20, &mut t);
        let d = &t.tally;
        assert_eq!(t.not_replayed, 7, "14..=20");
        assert_eq!(
            (d.expected, d.delivered, d.missing, d.unexpected),
            (20, 10, 3, 0),
            "12 (live), 22 (after the answer's seq) and 30 (never sent) are missing"
        );
        assert!(failed(&Totals {
            topic: t,
            ..Default::default()
        }));
    }

    #[test]
    fn only_not_replayed_pushes_pass_the_gate() {
        // Two false spans and a true resume, every other push delivered: passes.
        let mut t = totals();
        let mut s = Stream::new(0, "e");
        s.record(1);
        s.on_answer(4, "e", Some(false), &mut t); // 2..=4
        s.record(5);
        s.on_answer(7, "e", Some(true), &mut t); // 6, 7 replayed
        s.record(6);
        s.record(7);
        s.on_answer(9, "e", Some(false), &mut t); // 8, 9
        s.record(10);
        s.settle(10, &mut t);
        assert_eq!(
            (t.tally.delivered, t.not_replayed, t.tally.missing),
            (5, 5, 0)
        );
        assert_eq!((t.resumed_true, t.resumed_false), (1, 2));
        let ok = Totals {
            user: t,
            ..Default::default()
        };
        assert!(!failed(&ok));
    }

    #[test]
    fn a_gap_after_a_true_resume_is_missing() {
        let mut t = totals();
        let mut s = Stream::new(0, "e");
        s.record(1);
        s.on_answer(5, "e", Some(true), &mut t); // 2..=5 owed by the replay
        for n in [2, 3, 5, 6] {
            s.record(n); // 4 never replayed
        }
        s.settle(6, &mut t);
        assert_eq!(
            (t.tally.delivered, t.not_replayed, t.tally.missing),
            (5, 0, 1)
        );
    }

    #[test]
    fn an_extra_push_never_hides_a_missing_one_or_a_false_span() {
        // Expected 1..=5; 2..=3 not replayed, 5 lost, 6 extra (a push the driver gave up
        // on that the server still numbered): by count it would net to nothing missing.
        let mut t = totals();
        let mut s = Stream::new(0, "e");
        s.record(1);
        s.on_answer(3, "e", Some(false), &mut t);
        s.record(4);
        s.record(6);
        s.settle(5, &mut t);
        let d = &t.tally;
        assert_eq!(
            (d.delivered, t.not_replayed, d.missing, d.unexpected),
            (2, 2, 1, 1)
        );
    }

    #[test]
    fn after_an_epoch_change_false_spans_are_counted_by_count() {
        // Epoch e1 from 0: 1, 2; resumed:false into e2 at 0 (the old epoch's tail
        // cannot be numbered); then 1, resumed:false at 4 (2..=4 not replayed), 5.
        let mut t = totals();
        let mut s = Stream::new(0, "e1");
        s.record(1);
        s.record(2);
        s.on_answer(0, "e2", Some(false), &mut t);
        s.record(1);
        s.on_answer(4, "e2", Some(false), &mut t);
        s.record(5);
        s.settle(9, &mut t);
        assert_eq!(
            (t.tally.delivered, t.not_replayed, t.tally.missing),
            (4, 3, 2),
            "the rest of e1 after 2 is missing: no answer numbered it"
        );
    }

    #[test]
    fn book_builds_resume_requests_and_counts_strays() {
        let cfg = StreamsCfg {
            abrupt_churn: true,
            offline: Duration::ZERO,
            reconnect_url: None,
            jitter_ms: 0,
        };
        let names = vec!["a b".to_string()];
        let mut b = Book::new(&cfg, 1);
        assert_eq!(b.user_query(7), None, "no since before the first welcome");
        assert_eq!(
            b.subscribe_msg(7, 0, "a b"),
            r#"{"type":"subscribe","topic":"a b"}"#
        );
        b.on_welcome(7, 2, "ab/c", None);
        b.on_subscribed(7, "a b", 5, "t1", None, &names);
        assert!(b.on_push(7, None, (3, None), &names));
        assert!(b.on_push(7, Some("a b"), (6, None), &names));
        assert!(!b.on_push(7, Some("other"), (1, None), &names));
        assert_eq!(b.user_query(7).as_deref(), Some("since=3&epoch=ab%2Fc"));
        assert_eq!(
            b.subscribe_msg(7, 0, "a b"),
            r#"{"type":"subscribe","topic":"a b","since":6,"epoch":"t1"}"#
        );
        assert_eq!(b.totals.stray, 1);
    }

    #[test]
    fn drain_close_waits_for_the_hint() {
        let second = crate::util::parse_ws_url("ws://127.0.0.1:2/ws").unwrap();
        let first = crate::util::parse_ws_url("ws://127.0.0.1:1/ws").unwrap();
        let cfg = StreamsCfg {
            abrupt_churn: false,
            offline: Duration::ZERO,
            reconnect_url: Some(second.clone()),
            jitter_ms: 0,
        };
        let mut b = Book::new(&cfg, 0);
        assert!(b.follows_drain(Some("close_1001")));
        assert!(!b.follows_drain(Some("close_4008")));
        assert_eq!(b.url_for(1, &first), (&first, false));
        let now = Instant::now();
        b.on_hint(1, 500);
        let at = b.on_drain_close(1, now);
        assert!(at >= now + Duration::from_millis(400), "{:?}", at - now);
        assert_eq!(b.url_for(1, &first), (&second, true));
        assert_eq!(b.on_drain_close(2, now), now, "no hint: at once");
        b.count_move(250_000);
        assert_eq!(b.totals.drain.buckets, vec![0, 0, 1]);
        assert_eq!(
            (
                b.totals.drain.closes_after_hint,
                b.totals.drain.closes_without_hint
            ),
            (1, 1)
        );
    }
}
