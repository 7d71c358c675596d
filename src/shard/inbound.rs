//! Bytes from a client: reads into the shard's scratch buffer, frames decoded in place,
//! and the client messages they carry.

use std::io::{self, Read};
use std::sync::atomic::Ordering::Relaxed;

use crate::api::sequencer::NO_EPOCH;
use crate::events::Detail;
use crate::frame::{self, Close, CloseCause, FrameError, Head, Kind};
use crate::messages::{self, ClientMsg, Refused};
use crate::topic;

use super::conn::{trim_leftover, PARKED, PING_SENT, TLS, WAITING_TOPIC};
use super::Shard;

/// A message larger than this from a connection in debt (`rate`) is refused without being
/// read, so without its `ref`; a smaller one is read to answer with it.
const UNREAD_REFUSAL_BYTES: usize = 4096;
/// The largest message read from a connection a whole bucket in debt (`Rates::at_floor`),
/// where a charge costs it nothing more: an ack (20 to 40 bytes), never one padded to
/// make the shard parse more than the connection sends (review s20b).
const FLOOR_READ_BYTES: usize = 64;

/// Refused client messages in a row that are tolerated; one more closes with 1008.
const MAX_REFUSED_IN_ROW: u8 = 10;
// The count is kept in a nibble that saturates at 15 (`Conn::note_refused`).
const _: () = assert!(MAX_REFUSED_IN_ROW < 15);

impl Shard {
    /// Reads what the socket has, within the read budget. A read that does not fill the
    /// scratch buffer has drained the socket, so the read that would only say
    /// `WouldBlock` is skipped (one syscall per idle connection's pong): with
    /// edge-triggered polling, bytes arriving later raise a new event. `to_eagain` reads
    /// on to `WouldBlock` regardless, for when the event said the peer closed or errored
    /// (the FIN may wait behind the data) and for the backlog.
    pub(super) fn on_readable(&mut self, key: u32, to_eagain: bool) {
        for _ in 0..super::READS_PER_EVENT {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if conn.flags & (PARKED | WAITING_TOPIC) != 0 {
                // Read once its stream is loaded (it is put in the backlog then).
                return;
            }
            let n = match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    // EOF: after our close frame this is the clean end; before it, the
                    // client vanished without a close.
                    self.abort(key);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.abort(key);
                    return;
                }
            };
            conn.last_rx = self.tick;
            conn.flags &= !PING_SENT;
            if conn.closing() {
                // Only the client's close or FIN matter now.
                continue;
            }
            let drained = n < self.scratch.len() && !to_eagain;
            let tls = conn.flags & TLS != 0;
            let mut scratch = std::mem::take(&mut self.scratch);
            if tls {
                match self.conns.take_sealed(key) {
                    Some(mut kept) => {
                        kept.extend_from_slice(&scratch[..n]);
                        self.open_records(key, &mut kept);
                    }
                    None => self.open_records(key, &mut scratch[..n]),
                }
            } else {
                self.ingest_read(key, &mut scratch[..n]);
            }
            self.scratch = scratch;
            if drained {
                return;
            }
        }
        // Budget spent with the socket still readable: continue next turn.
        self.backlog.push(key);
    }

    /// Processes bytes just read (after an incomplete frame kept from before).
    fn ingest_read(&mut self, key: u32, bytes: &mut [u8]) {
        match self.conns.take_leftover(key) {
            Some(mut buf) => {
                buf.extend_from_slice(bytes);
                self.ingest(key, &mut buf);
            }
            None => self.ingest_slice(key, bytes),
        }
    }

    /// TLS: opens the complete records in `buf`, processes the frames they carry and
    /// keeps the start of an incomplete record. A record that fails (bad MAC, a fatal
    /// alert, renegotiation) drops the connection after our alert saying why;
    /// close_notify is answered with ours and ends the connection like a FIN.
    fn open_records(&mut self, key: u32, buf: &mut [u8]) {
        let Some(session) = self.conns.tls_session(key) else {
            return;
        };
        let opened = match session.open(buf) {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!(error = %e, "closing a TLS connection");
                self.shared.metrics.tls.record_errors.fetch_add(1, Relaxed);
                if let Some(alert) = e.alert() {
                    self.conns.send_fatal_alert(key, alert);
                }
                self.abort(key);
                return;
            }
        };
        if opened.consumed < buf.len() && !opened.peer_closed {
            self.conns.keep_sealed(key, buf[opened.consumed..].to_vec());
        }
        if opened.plain > 0 {
            self.ingest_read(key, &mut buf[..opened.plain]);
        }
        if opened.peer_closed {
            self.answer_close_notify(key);
        }
    }

    /// A subscribe that waited for its topic was answered: the messages read after it are
    /// handled now, then the socket is read again (from the backlog).
    pub(super) fn resume_reading(&mut self, key: u32) {
        if let Some(mut rest) = self.conns.take_leftover(key) {
            self.ingest(key, &mut rest);
        }
        self.backlog.push(key);
    }

    /// Processes bytes held in an owned buffer; keeps the unprocessed tail as leftover.
    pub(super) fn ingest(&mut self, key: u32, buf: &mut Vec<u8>) {
        let used = self.frames(key, buf);
        if used < buf.len() {
            buf.drain(..used);
            self.keep_leftover(key, std::mem::take(buf));
        }
        self.conns.settle_partial(key);
    }

    /// Processes bytes in the scratch buffer; copies an incomplete frame out.
    fn ingest_slice(&mut self, key: u32, buf: &mut [u8]) {
        let used = self.frames(key, buf);
        if used < buf.len() {
            self.keep_leftover(key, buf[used..].to_vec());
        }
        self.conns.settle_partial(key);
    }

    fn keep_leftover(&mut self, key: u32, mut rest: Vec<u8>) {
        trim_leftover(&mut rest);
        if let Some(p) = self.conns.partial_entry(key) {
            p.leftover = rest;
        }
    }

    /// Decodes and handles every complete frame in `buf`; returns the bytes used. Stops
    /// after a subscribe that waits for its topic to load (cluster mode): what follows it
    /// (an unsubscribe, another subscribe) is kept and handled once it is answered
    /// (`resume_reading`), so answers keep the order of the requests.
    fn frames(&mut self, key: u32, buf: &mut [u8]) -> usize {
        let max = self.shared.config.max_message_size;
        let mut pos = 0;
        loop {
            let Some(c) = self.conns.get(key) else {
                return buf.len();
            };
            if c.closing() {
                return buf.len();
            }
            if c.flags & WAITING_TOPIC != 0 {
                return pos;
            }
            let assembled = self
                .conns
                .partial(key)
                .and_then(|p| p.message.as_ref())
                .map_or(0, Vec::len);
            let deflate = c.deflate_bits() != 0;
            let head = match frame::parse_head(&buf[pos..], max - assembled.min(max), deflate) {
                Ok(Some(h)) if buf.len() - pos >= h.total_len() => h,
                Ok(_) => {
                    self.conns.settle_partial(key);
                    return pos;
                }
                Err(e) => {
                    self.protocol_close(key, e);
                    return buf.len();
                }
            };
            let payload = &mut buf[pos + head.header_len..pos + head.total_len()];
            frame::unmask(payload, head.mask);
            pos += head.total_len();
            if let Err(e) = self.frame(key, head, payload) {
                self.protocol_close(key, e);
                return buf.len();
            }
        }
    }

    fn protocol_close(&mut self, key: u32, e: FrameError) {
        let reason = e.to_string();
        self.close(
            key,
            Close {
                code: e.close_code(),
                reason: &reason,
                cause: CloseCause::Protocol,
            },
        );
    }

    /// Handles one unmasked frame.
    fn frame(&mut self, key: u32, head: Head, payload: &mut [u8]) -> Result<(), FrameError> {
        match head.kind {
            Kind::Ping => {
                self.answer_ping(key, payload);
                Ok(())
            }
            Kind::Pong => Ok(()),
            Kind::Close => {
                let (code, echo) = match frame::parse_close(payload)? {
                    Some((code, _)) => (Some(code), frame::close_frame(code, "")),
                    None => (None, frame::close_empty()),
                };
                self.close_echo(key, code, echo);
                Ok(())
            }
            Kind::Text => {
                let in_message = self.conns.partial(key).is_some_and(|p| p.message.is_some());
                if in_message {
                    return Err(FrameError::BadContinuation);
                }
                if head.fin {
                    if head.compressed {
                        self.inflate(key, payload)
                    } else {
                        self.text(key, payload)
                    }
                } else {
                    if let Some(p) = self.conns.partial_entry(key) {
                        p.message = Some(payload.to_vec());
                        p.compressed = head.compressed;
                    }
                    Ok(())
                }
            }
            Kind::Continue => {
                let max = self.shared.config.max_message_size;
                if self.conns.get(key).is_none() {
                    return Ok(());
                }
                let Some(p) = self.conns.partial_mut(key) else {
                    return Err(FrameError::BadContinuation);
                };
                let Some(msg) = p.message.as_mut() else {
                    return Err(FrameError::BadContinuation);
                };
                if msg.len() + payload.len() > max {
                    return Err(FrameError::TooBig);
                }
                msg.extend_from_slice(payload);
                if head.fin {
                    let mut whole = p.message.take().unwrap_or_default();
                    if std::mem::take(&mut p.compressed) {
                        self.inflate(key, &whole)
                    } else {
                        self.text(key, &mut whole)
                    }
                } else {
                    Ok(())
                }
            }
        }
    }

    /// A complete compressed text message: inflated within `max_message_size` (1009
    /// beyond, however small the compressed form), then handled like any other. From a
    /// connection in debt for what it sent (`rate`) only a small message is inflated (an
    /// ack, say); a larger one gets `rate_limited` without being inflated further.
    fn inflate(&mut self, key: u32, compressed: &[u8]) -> Result<(), FrameError> {
        let max = self.shared.config.max_message_size;
        let cap = if self.rates.has_credit(key, self.tick) {
            max
        } else if self.rates.at_floor(key, self.tick) {
            FLOOR_READ_BYTES.min(max)
        } else {
            UNREAD_REFUSAL_BYTES.min(max)
        };
        let mut out = std::mem::take(&mut self.inflated);
        let result = self.inflater.message(compressed, cap, &mut out);
        let handled = match result {
            Ok(()) => {
                self.counters().inflated_messages.fetch_add(1, Relaxed);
                self.text(key, &mut out)
            }
            Err(FrameError::TooBig) if cap < max => {
                self.refuse_unread(key);
                Ok(())
            }
            Err(e) => Err(e),
        };
        // Keep the buffer for the next message unless a large one grew it.
        if out.capacity() <= 64 * 1024 {
            out.clear();
            self.inflated = out;
        }
        handled
    }

    /// A complete text message. Its text is charged to the connection's rate (`rate`); a
    /// large one from a connection in debt is refused unread (small ones are read, so their
    /// refusal can carry their `ref`), and any but the smallest from a connection a whole
    /// bucket in debt.
    fn text(&mut self, key: u32, payload: &mut [u8]) -> Result<(), FrameError> {
        if payload.len() > FLOOR_READ_BYTES && self.rates.at_floor(key, self.tick) {
            self.refuse_unread(key);
            return Ok(());
        }
        if check_utf8(payload).is_err() {
            return Err(FrameError::InvalidUtf8);
        }
        if payload.len() > UNREAD_REFUSAL_BYTES && !self.rates.has_credit(key, self.tick) {
            self.refuse_unread(key);
            return Ok(());
        }
        let len = payload.len();
        // The parser's buffers are reused in place: taking them out (`mem::take`) built a
        // fresh set, four allocations, for every client message.
        let parsed = messages::parse(payload, &mut self.json);
        if len > 64 * 1024 {
            // A large message grew them: not kept for the shard's life (a 16 MiB message
            // left them at about 80 MB).
            self.json = simd_json::Buffers::default();
        }
        let reference = parsed.reference;
        let mut ack = false;
        let outcome = match parsed.msg {
            Ok(msg) => {
                ack = matches!(msg, ClientMsg::Ack { .. });
                self.client_message(key, msg, reference.as_deref())
            }
            Err(e) => Err(e),
        };
        // After its token was taken (so a bucket of one takes any message): the text may
        // leave a debt, paid back before the next message is taken.
        self.rates.charge_bytes(key, self.tick, len);
        match outcome {
            // An ack does not end a run of refusals: one after each flooded message would
            // keep a flooding client open.
            Ok(()) if ack => {}
            Ok(()) => {
                if let Some(c) = self.conns.get_mut(key) {
                    c.clear_refused();
                }
            }
            Err(refused) => self.refuse(key, &refused, reference.as_deref()),
        }
        Ok(())
    }

    /// Answers a refused message with `error`, or closes the connection 1008 at the 11th
    /// refusal in a row that counts.
    fn refuse(&mut self, key: u32, refused: &Refused, reference: Option<&str>) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if refused.counts() && c.note_refused() > MAX_REFUSED_IN_ROW {
            self.close(key, Close::TOO_MANY_REFUSED);
        } else {
            self.send_frame(key, messages::error_frame(refused, reference));
        }
    }

    /// Refuses a message for the connection's rate without reading it (its `error` has no
    /// `ref`).
    fn refuse_unread(&mut self, key: u32) {
        let refused = self.rate_limited();
        self.refuse(key, &refused, None);
    }

    /// A message refused for the connection's rate, counted.
    fn rate_limited(&self) -> Refused {
        self.counters().rate_limited.fetch_add(1, Relaxed);
        Refused {
            code: "rate_limited",
            message: format!(
                "more than {rate} messages, or {rate} x {} KiB of message text, per second (client_rate); slow down",
                super::rate::BYTES_PER_TOKEN / 1024,
                rate = self.shared.config.client_rate
            ),
        }
    }

    fn client_message(
        &mut self,
        key: u32,
        msg: ClientMsg<'_>,
        reference: Option<&str>,
    ) -> Result<(), Refused> {
        // An ack takes no token (a client acks the pushes it processes, as fast as they
        // come: refusals would end in 1008, which clients take as "do not reconnect"); its
        // text is charged after, like any message's. A whole bucket in debt, only a small
        // one is read (`FLOOR_READ_BYTES`): padded acks are refused unread there.
        if !matches!(msg, ClientMsg::Ack { .. }) && !self.rates.take(key, self.tick) {
            return Err(self.rate_limited());
        }
        match msg {
            ClientMsg::Publish { topic, data } => self.publish(key, &topic, data, reference),
            ClientMsg::Send { data } => self.send_upstream(key, &data, reference),
            ClientMsg::Ping => {
                self.send_frame(key, messages::pong_frame(reference));
                Ok(())
            }
            ClientMsg::Ack { seq } => self.ack(key, seq),
            ClientMsg::Refresh { token } => self.refresh(key, &token, reference),
            ClientMsg::Subscribe { topic, resume } => {
                // A topic the connection holds already has had its pushes sent live: a
                // replay would send them again. Answered with the position, no replay, no
                // `resumed`.
                let joined = self.subscribe(key, &topic)?;
                let resume = resume.filter(|_| joined);
                let r = resume.as_ref().map(|(s, e)| (*s, &**e));
                if self.subscribe_cluster(key, &topic, joined, r, reference) {
                    return Ok(());
                }
                // Told before the answer: a replay that closes it (4008) is told after.
                if joined {
                    self.lifecycle(key, "subscribe", Detail::Topic(&topic));
                }
                // Granted: the stream's position, then what was missed, before any live
                // push (this shard handles one thing at a time, so none can come between).
                let (seq, epoch) = self
                    .streams
                    .current(&topic, self.tick)
                    .unwrap_or((0, NO_EPOCH));
                let mut replay = Vec::new();
                let resumed = resume.map(|(since, e)| {
                    self.streams
                        .resume(&topic, since, &e, self.tick, &mut replay)
                });
                let frame = messages::subscribed_frame(&topic, seq, epoch, resumed, reference);
                self.send_frame(key, frame);
                for f in replay {
                    if !self.deliver(key, f) {
                        break;
                    }
                }
                Ok(())
            }
            ClientMsg::Unsubscribe { topic } => {
                topic::validate(&topic).map_err(|e| bad_topic(&e))?;
                self.leave(key, &topic);
                self.send_frame(
                    key,
                    messages::topic_ack_frame("unsubscribed", &topic, reference),
                );
                Ok(())
            }
        }
    }

    /// Takes `key` out of topic `name`, if it is a member (told to the upstream).
    pub(super) fn leave(&mut self, key: u32, name: &str) {
        if self.leave_unannounced(key, name) {
            self.lifecycle(key, "unsubscribe", Detail::Topic(name));
        }
    }

    /// Takes `key` out of topic `name` without a lifecycle event; true if it was a member.
    pub(super) fn leave_unannounced(&mut self, key: u32, name: &str) -> bool {
        let Some(t) = self.topics.find(name) else {
            return false;
        };
        if !self.conns.remove_topic(key, t) {
            return false;
        }
        if let Some(user) = self.conns.get(key).map(|c| c.user) {
            self.leave_topic(t, key, user);
        }
        true
    }

    /// Joins `key` to topic `name` if allowed: true when it joined now, false when it held
    /// the topic already (or is gone).
    fn subscribe(&mut self, key: u32, name: &str) -> Result<bool, Refused> {
        topic::validate(name).map_err(|e| bad_topic(&e))?;
        if self.conns.get(key).is_none() {
            return Ok(false);
        }
        let granted =
            topic::allowed(&self.shared.config.public_topics, name) || self.grants(key, name);
        if !granted {
            return Err(Refused {
                code: "forbidden_topic",
                message: format!("not allowed to subscribe to {name:?}"),
            });
        }
        let held = self.conns.topics_of(key);
        if let Some(t) = self.topics.find(name) {
            if held.contains(&t) {
                return Ok(false);
            }
        }
        if held.len() >= self.shared.config.max_topics_per_connection {
            return Err(Refused {
                code: "too_many_topics",
                message: format!(
                    "at most {} topics per connection",
                    self.shared.config.max_topics_per_connection
                ),
            });
        }
        if let Some(refused) = self.refuse_new_topic(name) {
            return Err(refused);
        }
        let (t, _) = self.topics.join(name, key);
        self.conns.add_topic(key, t);
        if let Some(user) = self.conns.get(key).map(|c| c.user) {
            self.membership_changed(name, user);
        }
        // The `subscribe` lifecycle event goes once it is answered (cluster mode: once its
        // stream loaded; a failed load is never told).
        Ok(true)
    }

    /// Records that the session processed its user stream up to `seq` (docs/protocol.md
    /// 4.3). Replay never depends on it. An ack beyond the stream's current `seq` names a
    /// push that does not exist (a client bug, or a `seq` from another epoch): refused, so
    /// the client learns of it, and not recorded. Acks never go backwards: the highest is
    /// kept. Only sessions that acked have an entry, dropped when the connection ends.
    ///
    /// The first ack of a session that covers a push still in history adds the time since
    /// the API accepted the push (of the acked `seq` itself) to the ack latency histogram.
    fn ack(&mut self, key: u32, seq: u64) -> Result<(), Refused> {
        let Some(c) = self.conns.get(key) else {
            return Ok(());
        };
        let user = c.user;
        let current = self.users.get(user).map_or(0, |u| u.seq);
        if seq > current {
            return Err(Refused {
                code: "bad_json",
                message: format!("ack seq {seq} is beyond the user stream's current seq {current}"),
            });
        }
        self.counters().acks.fetch_add(1, Relaxed);
        if seq > 0 {
            let acked = self.acks.entry(key).or_insert(0);
            if seq > *acked {
                *acked = seq;
                if let Some(at) = self.users.accepted_stamp(user, seq) {
                    self.acked_at.push(at);
                }
            }
        }
        Ok(())
    }

    /// Whether the connection's token grants `name`.
    fn grants(&self, key: u32, name: &str) -> bool {
        self.conns
            .get(key)
            .and_then(|c| self.grants.get(c.grant))
            .is_some_and(|patterns| topic::allowed(patterns, name))
    }
}

pub(super) fn bad_topic(e: &topic::TopicError) -> Refused {
    Refused {
        code: "bad_topic",
        message: e.to_string(),
    }
}

/// Whether a text payload is valid UTF-8 (close 1007 otherwise).
fn check_utf8(b: &[u8]) -> Result<(), std::str::Utf8Error> {
    std::str::from_utf8(b).map(|_| ())
}
