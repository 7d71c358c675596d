//! A chat event loop: it owns whole rooms (so a room's accounting never leaves its
//! thread), opens their members' connections at the connect pace, sends each member's
//! publishes on schedule once the driver says go, and closes cleanly at the end. What the
//! members read is handled in [`super::messages`].

use super::accounting::RoomBook;
use super::measurements::ChatOut;
use super::messages::Ctx;
use super::plan::ChatCfg;
use super::shared::ChatShared;
use crate::cli::secs;
use crate::client::{bump, mint_token, PHASE_CLOSE};
use crate::frame::OP_TEXT;
use crate::util;
use crate::ws_conn::{self, io_cause, End, Inbound, State, WsConn};
use jsonwebtoken::EncodingKey;
use mio::{Events, Interest, Poll, Token};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One read's buffer per event loop.
const SCRATCH: usize = 64 * 1024;
/// Most connections opened in one event-loop turn, so open sockets are served meanwhile.
const OPEN_PER_TURN: usize = 1024;
/// Most publishes sent in one event-loop turn, for the same reason.
const PUBLISH_PER_TURN: usize = 4096;

/// One member: its place, its publishing, its answers outstanding.
pub struct Member {
    /// Connection number in this process: room r's member m is r * members + m.
    g: u64,
    /// Index into the event loop's rooms.
    room: usize,
    /// Its number in its room.
    pub m: u32,
    /// Its `subscribe` was answered `subscribed`.
    pub joined: bool,
    /// Counted in `settled` (joined, or never will).
    settled: bool,
    quota: u64,
    /// Messages sent; the next one's sender-local id is `sent + 1`.
    sent: u64,
    /// Publishes awaiting their answer: (id, send time in µs on [`util::now_us`]'s clock).
    pub pending: VecDeque<(u64, u64)>,
}

impl Member {
    /// Counts this member as settled once: it joined its room, or never will.
    pub fn settle(&mut self, sh: &ChatShared) {
        if !self.settled {
            self.settled = true;
            sh.settled.fetch_add(1, Relaxed);
        }
    }
}

/// One room of an event loop.
pub struct Room {
    /// Its topic.
    pub topic: String,
    /// The topic as a JSON string, for building messages.
    pub topic_json: String,
    /// The user number of member 0 (`from` of member m is `u{user_base + m}`).
    pub user_base: u64,
    /// What its members published and received.
    pub book: RoomBook,
}

/// One event loop with its whole rooms.
struct Loop {
    cfg: Arc<ChatCfg>,
    sh: Arc<ChatShared>,
    poll: Poll,
    key: EncodingKey,
    members: Vec<Member>,
    conns: Vec<Option<WsConn>>,
    rooms: Vec<Room>,
    out: ChatOut,
    /// Handshake deadlines in opening order: (deadline, member).
    deadlines: VecDeque<(Instant, usize)>,
    /// Publishes due, once publishing has begun: (due, member).
    schedule: Option<BinaryHeap<Reverse<(Instant, usize)>>>,
    /// When publishing began.
    go: Option<Instant>,
    /// `go` on [`util::now_us`]'s clock (µs): each publish's data carries its
    /// schedule slot, `go_us + (due - go)`, as `t`.
    go_us: u64,
    /// Sockets now held.
    live: usize,
}

/// Starts the event loops; each returns what it measured once closed.
pub fn spawn(cfg: Arc<ChatCfg>, sh: Arc<ChatShared>) -> Result<Vec<JoinHandle<ChatOut>>, String> {
    let key = EncodingKey::from_secret(cfg.dial.jwt_secret.as_bytes())
        .map_err(|e| format!("--jwt-secret: {e}"))?;
    let mut hs = Vec::new();
    for tid in 0..cfg.dial.threads {
        let poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
        let l = Loop::new(tid, cfg.clone(), sh.clone(), poll, key.clone());
        let sh = sh.clone();
        let h = std::thread::Builder::new()
            .name(format!("chat-{tid}"))
            .spawn(move || {
                let out = l.run();
                sh.conns.threads_done.fetch_add(1, Relaxed);
                out
            })
            .map_err(|e| format!("threads: {e}"))?;
        hs.push(h);
    }
    Ok(hs)
}

impl Loop {
    /// Event loop `tid`'s rooms (every `threads`th) and their members.
    fn new(
        tid: usize,
        cfg: Arc<ChatCfg>,
        sh: Arc<ChatShared>,
        poll: Poll,
        key: EncodingKey,
    ) -> Loop {
        let mut rooms = Vec::new();
        let mut members = Vec::new();
        let mut planned = 0;
        let rs = &cfg.rooms;
        for r in (tid as u64..rs.count).step_by(cfg.dial.threads.max(1)) {
            let topic = rs.topic(r);
            for m in 0..rs.members {
                let g = r * rs.members + m;
                let quota = cfg.pace.quota(g);
                planned += quota;
                members.push(Member {
                    g,
                    room: rooms.len(),
                    m: m as u32,
                    joined: false,
                    settled: false,
                    quota,
                    sent: 0,
                    pending: VecDeque::new(),
                });
            }
            rooms.push(Room {
                topic_json: serde_json::to_string(&topic).unwrap_or_default(),
                topic,
                user_base: rs.user(r * rs.members),
                book: RoomBook::new(rs.members as u32),
            });
        }
        let mut out = ChatOut::new();
        out.planned = planned;
        Loop {
            conns: members.iter().map(|_| None).collect(),
            members,
            rooms,
            out,
            cfg,
            sh,
            poll,
            key,
            deadlines: VecDeque::new(),
            schedule: None,
            go: None,
            go_us: 0,
            live: 0,
        }
    }

    /// When member `g`'s connection attempt is due.
    fn connect_due(&self, g: u64) -> Instant {
        let start = self.sh.conns.start;
        if self.cfg.dial.connect_rate > 0.0 {
            start + secs(g as f64 / self.cfg.dial.connect_rate)
        } else {
            start
        }
    }

    /// Runs until the driver's close has ended every connection (or the close timeout);
    /// returns what it measured, its rooms judged.
    fn run(mut self) -> ChatOut {
        let mut events = Events::with_capacity(1024);
        let mut inbound = Inbound::new(SCRATCH, self.cfg.dial.compression);
        let mut next = 0usize;
        let mut closing: Option<Instant> = None;
        let mut sent_done = false;
        loop {
            let now = Instant::now();
            if closing.is_none() && self.sh.conns.phase.load(Relaxed) == PHASE_CLOSE {
                closing = Some(now + self.cfg.dial.close_timeout);
                self.begin_close();
            }
            if let Some(deadline) = closing {
                if self.live == 0 || now >= deadline {
                    for li in 0..self.conns.len() {
                        self.end(li, Some("close_timeout".into()));
                    }
                    break;
                }
            } else {
                for _ in 0..OPEN_PER_TURN {
                    if next >= self.members.len() || self.connect_due(self.members[next].g) > now {
                        break;
                    }
                    self.open(next);
                    next += 1;
                }
                self.expire(now);
                self.publish_due(now);
                if !sent_done && self.schedule.as_ref().is_some_and(BinaryHeap::is_empty) {
                    sent_done = true;
                    self.sh.loops_sent.fetch_add(1, Relaxed);
                }
            }
            let mut timeout = Duration::from_millis(100);
            if closing.is_none() {
                if next < self.members.len() {
                    let d = self.connect_due(self.members[next].g);
                    timeout = timeout.min(d.saturating_duration_since(now));
                }
                if let Some(Reverse((d, _))) = self.schedule.as_ref().and_then(|h| h.peek()) {
                    timeout = timeout.min(d.saturating_duration_since(now));
                }
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("throng-load chat: poll: {e}");
                    break;
                }
            }
            for ev in events.iter() {
                let li = ev.token().0;
                if let Some(end) = self.drive(li, &mut inbound) {
                    self.end(li, end);
                }
            }
        }
        // A loop that ends early (poll failure) still lets the driver's waits end.
        if !sent_done {
            self.sh.loops_sent.fetch_add(1, Relaxed);
        }
        for li in 0..self.conns.len() {
            self.end(li, Some("aborted".into()));
        }
        let mut out = self.out;
        out.conns.wire.add(&inbound.rx.stats);
        for mb in &self.members {
            out.unanswered += mb.pending.len() as u64;
        }
        out.rooms = self.rooms.iter().map(|r| r.book.finish(&r.topic)).collect();
        out
    }

    /// Opens member `li`'s connection: a non-blocking connect, the upgrade request queued.
    fn open(&mut self, li: usize) {
        self.sh.conns.attempted.fetch_add(1, Relaxed);
        let g = self.members[li].g;
        let cfg = &self.cfg;
        let url = cfg.dial.url_for(g);
        let sub = format!("u{}", cfg.rooms.user(g));
        let token = match mint_token(
            &self.key,
            &sub,
            cfg.dial.token_ttl_secs,
            &cfg.grant,
            if cfg.publish_claim { &cfg.grant } else { &[] },
        ) {
            Ok(t) => t,
            Err(e) => return self.open_failed(li, &format!("jwt_{e}")),
        };
        let tls = match cfg.dial.tls_for(url) {
            Ok(t) => t,
            Err(cause) => return self.open_failed(li, &cause),
        };
        let mut stream = match ws_conn::connect(url.addr, cfg.dial.source_for(g)) {
            Ok(s) => s,
            Err(cause) => return self.open_failed(li, &cause),
        };
        if tls.is_some() {
            self.out.conns.tls.attempts += 1;
        }
        if cfg.dial.compression {
            self.out.conns.wire.offered += 1;
        }
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(li),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.open_failed(li, &format!("register_{}", io_cause(&e)));
        }
        let ws = WsConn::upgrading(
            stream,
            Instant::now(),
            &url.path,
            &url.authority,
            &token,
            tls,
            self.cfg.dial.compression,
        );
        self.conns[li] = Some(ws);
        self.live += 1;
        self.deadlines
            .push_back((Instant::now() + self.cfg.dial.handshake_timeout, li));
    }

    /// Counts member `li`'s attempt that failed before it had a socket.
    fn open_failed(&mut self, li: usize, cause: &str) {
        bump(&mut self.out.conns.connect_errors, cause);
        self.sh.conns.failed.fetch_add(1, Relaxed);
        self.members[li].settle(&self.sh);
    }

    /// Ends the handshakes past their deadline.
    fn expire(&mut self, now: Instant) {
        while let Some(&(d, li)) = self.deadlines.front() {
            if d > now {
                break;
            }
            self.deadlines.pop_front();
            let overdue = self.conns[li].as_ref().and_then(WsConn::handshake_overdue);
            if let Some(cause) = overdue {
                self.end(li, Some(cause.into()));
            }
        }
    }

    /// Sends every publish that is due (bounded per turn); builds the schedule once the
    /// driver says go.
    fn publish_due(&mut self, now: Instant) {
        if self.schedule.is_none() {
            let go = self.sh.go_us.load(Relaxed);
            if go == 0 {
                return;
            }
            let at = self.sh.conns.start + Duration::from_micros(go);
            let pace = self.cfg.pace;
            let h = self
                .members
                .iter()
                .enumerate()
                .filter(|(_, mb)| mb.quota > 0)
                .map(|(li, mb)| Reverse((at + secs(pace.offset_secs(mb.g)), li)))
                .collect();
            self.go = Some(at);
            self.go_us = wall_us(at, now);
            self.schedule = Some(h);
        }
        let (Some(mut h), Some(go)) = (self.schedule.take(), self.go) else {
            return;
        };
        for _ in 0..PUBLISH_PER_TURN {
            match h.peek() {
                Some(&Reverse((due, li))) if due <= now => {
                    h.pop();
                    // Counted from the slot, not the send (no coordinated omission): a
                    // loop held up (a stalled process, a full turn) shows in the latencies.
                    let lag = now.saturating_duration_since(due);
                    let slot_us = self.go_us + due.saturating_duration_since(go).as_micros() as u64;
                    if self.publish(li, slot_us) {
                        if lag > crate::push::LATE_SEND {
                            self.out.sent_late += 1;
                        }
                        let lag_us = lag.as_micros() as u64;
                        self.out.max_send_lag_us = self.out.max_send_lag_us.max(lag_us);
                        let mb = &self.members[li];
                        if mb.sent < mb.quota {
                            let due = go + secs(self.cfg.pace.due_secs(mb.g, mb.sent));
                            h.push(Reverse((due, li)));
                        }
                    } else {
                        // Not in its room (never joined, or gone): the rest is not sent.
                        let mb = &self.members[li];
                        self.out.not_sent += mb.quota - mb.sent;
                    }
                }
                _ => break,
            }
        }
        self.schedule = Some(h);
    }

    /// Sends member `li`'s next message, due at `slot_us` (µs on [`util::now_us`]'s clock): its
    /// latencies count from there. False when it is not in its room.
    fn publish(&mut self, li: usize, slot_us: u64) -> bool {
        let mb = &mut self.members[li];
        let Some(c) = self.conns[li].as_mut() else {
            return false;
        };
        if c.state != State::Open || !mb.joined {
            return false;
        }
        let room = &self.rooms[mb.room];
        let n = mb.sent + 1;
        let t = slot_us;
        let msg = format!(
            "{{\"type\":\"publish\",\"topic\":{},\"data\":{{\"t\":{t},\"m\":{},\"n\":{n},\"pad\":\"{}\"}},\"ref\":\"p{n}\"}}",
            room.topic_json, mb.m, self.cfg.pad
        );
        c.send(OP_TEXT, msg.as_bytes());
        mb.sent = n;
        mb.pending.push_back((n, t));
        self.out.sent += 1;
        let sh = &self.sh;
        sh.sent.fetch_add(1, Relaxed);
        sh.last_sent_us
            .fetch_max(sh.conns.since_start_us(), Relaxed);
        if let Err(e) = c.flush() {
            // Counted as sent: its answer never comes, and the report says so.
            self.end(li, Some(io_cause(&e)));
        }
        true
    }

    /// Starts a clean close on every open connection; drops the others.
    fn begin_close(&mut self) {
        for li in 0..self.conns.len() {
            let Some(c) = self.conns[li].as_mut() else {
                continue;
            };
            if c.state != State::Open {
                self.end(li, Some("not_open_at_close".into()));
                continue;
            }
            self.out.conns.open_at_close += 1;
            if let Err(e) = c.start_close() {
                self.end(li, Some(io_cause(&e)));
            }
        }
    }

    /// Removes member `li`'s socket (if any) and counts how it ended.
    fn end(&mut self, li: usize, end: End) {
        let Some(mut c) = self.conns.get_mut(li).and_then(Option::take) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.stream);
        self.live -= 1;
        let cause = end.clone().unwrap_or_else(|| "closed".into());
        let (sh, out) = (&self.sh.conns, &mut self.out.conns);
        match c.state {
            State::Connecting | State::Upgrading | State::Welcome => {
                bump(&mut out.connect_errors, &cause);
                sh.failed.fetch_add(1, Relaxed);
            }
            State::Open => {
                bump(&mut out.disconnects, &cause);
                sh.disconnected.fetch_add(1, Relaxed);
                sh.open_now.fetch_sub(1, Relaxed);
            }
            State::Closing(_) => {
                match end {
                    None => out.closed_clean += 1,
                    Some(cause) => bump(&mut out.close_errors, &cause),
                }
                sh.open_now.fetch_sub(1, Relaxed);
            }
        }
        self.members[li].settle(&self.sh);
        // dropping `c` closes the socket
    }

    /// Handles readiness on member `li`'s socket; `Some(end)` removes it.
    fn drive(&mut self, li: usize, inbound: &mut Inbound) -> Option<End> {
        let c = self.conns.get_mut(li)?.as_mut()?;
        let mb = self.members.get_mut(li)?;
        let room = self.rooms.get_mut(mb.room)?;
        let mut cx = Ctx {
            mb,
            room,
            out: &mut self.out,
            sh: &self.sh,
        };
        ws_conn::drive(c, inbound, &mut cx)
    }
}

/// `at` on [`util::now_us`]'s clock (µs), given that `now` is now.
fn wall_us(at: Instant, now: Instant) -> u64 {
    let now_us = util::now_us();
    if at >= now {
        now_us + (at - now).as_micros() as u64
    } else {
        now_us.saturating_sub((now - at).as_micros() as u64)
    }
}
