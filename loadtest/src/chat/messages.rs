//! What a member reads: its `welcome` (then it subscribes to its room), the answers to
//! its `subscribe` and publishes, and its room's pushes, each fed to the room's book.

use super::event_loop::{Member, Room};
use super::measurements::ChatOut;
use super::shared::ChatShared;
use crate::client::bump;
use crate::frame::OP_TEXT;
use crate::server_msg::ServerMsg;
use crate::util;
use crate::ws_conn::{End, Handler, State, WsConn};
use serde::Deserialize;
use std::sync::atomic::Ordering::Relaxed;

/// The `ref` of a member's `subscribe`; publishes use `p<n>`.
const SUBSCRIBE_REF: &str = "s";

/// The state one member's messages are handled with.
pub struct Ctx<'a> {
    /// The member whose connection it is.
    pub mb: &'a mut Member,
    /// Its room.
    pub room: &'a mut Room,
    /// Its event loop's measurements.
    pub out: &'a mut ChatOut,
    /// The counters the driver reads.
    pub sh: &'a ChatShared,
}

impl Handler<WsConn> for Ctx<'_> {
    fn on_text(&mut self, c: &mut WsConn, text: &[u8]) -> Result<(), End> {
        on_message(c, text, self);
        Ok(())
    }

    fn on_binary(&mut self) {
        bump(&mut self.out.conns.server_errors, "binary_message");
    }

    fn on_ping(&mut self) {
        self.out.conns.pings_answered += 1;
    }

    fn on_tls(&mut self, done: &crate::tls::Done) {
        self.out.conns.tls.record(done);
    }
}

/// A server message, with this scenario's data.
type Msg<'a> = ServerMsg<'a, Sent>;

/// A message's data as this run publishes it (`pad` is skipped unread).
#[derive(Deserialize, Clone, Copy)]
struct Sent {
    /// Its schedule slot, µs on [`util::now_us`]'s clock.
    t: u64,
    /// The sender's member number in the room.
    m: u32,
    /// The sender-local id.
    n: u64,
}

/// The sender-local id in a publish's `ref` (`p17`).
fn publish_ref(r: Option<&str>) -> Option<u64> {
    r?.strip_prefix('p')?.parse().ok()
}

/// Handles one server message to member `cx.mb`.
fn on_message(c: &mut WsConn, text: &[u8], cx: &mut Ctx) {
    let Some(msg) = Msg::parse(text) else {
        bump(&mut cx.out.conns.server_errors, "unparsable_message");
        return;
    };
    let sh = cx.sh;
    match &*msg.ty {
        "welcome" if c.state == State::Welcome => {
            c.state = State::Open;
            util::record(
                &mut cx.out.conns.handshake,
                c.started.elapsed().as_micros() as u64,
            );
            let conns = &sh.conns;
            conns.opened.fetch_add(1, Relaxed);
            conns.open_now.fetch_add(1, Relaxed);
            conns
                .last_welcome_us
                .fetch_max(conns.since_start_us(), Relaxed);
            let sub = format!(
                "{{\"type\":\"subscribe\",\"topic\":{},\"ref\":\"{SUBSCRIBE_REF}\"}}",
                cx.room.topic_json
            );
            c.send(OP_TEXT, sub.as_bytes());
        }
        "subscribed"
            if msg.reference.as_deref() == Some(SUBSCRIBE_REF)
                && msg.topic.as_deref() == Some(&cx.room.topic)
                && !cx.mb.joined =>
        {
            cx.mb.joined = true;
            cx.out.subscribed += 1;
            cx.room.book.on_subscribed(cx.mb.m, msg.seq.unwrap_or(0));
            cx.mb.settle(sh);
        }
        "published" => {
            let n = publish_ref(msg.reference.as_deref());
            match (n.and_then(|n| take_pending(cx.mb, n)), msg.seq) {
                (Some((n, t)), Some(seq)) => {
                    util::record(&mut cx.out.publish, util::since_us(t));
                    cx.room.book.on_published(cx.mb.m, n, seq);
                    cx.out.published += 1;
                    sh.published.fetch_add(1, Relaxed);
                }
                (Some(_), None) => {
                    // Answered, but without the number its deliveries are judged by: they
                    // will show as unexpected. Counted as answered so the drain ends.
                    bump(&mut cx.out.conns.server_errors, "published_without_seq");
                    sh.refused.fetch_add(1, Relaxed);
                }
                (None, _) => bump(&mut cx.out.conns.server_errors, "published_unknown_ref"),
            }
        }
        "error" => {
            let code = msg.code.as_deref().unwrap_or("unknown");
            let r = msg.reference.as_deref();
            if r == Some(SUBSCRIBE_REF) {
                bump(
                    &mut cx.out.conns.server_errors,
                    &format!("subscribe_{code}"),
                );
                cx.mb.settle(sh);
            } else if publish_ref(r)
                .and_then(|n| take_pending(cx.mb, n))
                .is_some()
            {
                bump(&mut cx.out.publish_errors, code);
                sh.refused.fetch_add(1, Relaxed);
            } else {
                bump(&mut cx.out.conns.server_errors, &format!("error_{code}"));
            }
        }
        "push" if matches!(c.state, State::Open | State::Closing(_)) => on_push(&msg, cx),
        _ => {}
    }
}

/// Takes publish `n` off member `mb`'s outstanding list: (id, send time).
fn take_pending(mb: &mut Member, n: u64) -> Option<(u64, u64)> {
    // Answers come in order, so this is nearly always the front.
    let i = mb.pending.iter().position(|&(id, _)| id == n)?;
    mb.pending.remove(i)
}

/// Feeds a push to the member's room book, and times a first delivery.
fn on_push(msg: &Msg, cx: &mut Ctx) {
    let sh = cx.sh;
    sh.conns.push_received.fetch_add(1, Relaxed);
    cx.out.conns.wire.deliveries += 1;
    sh.conns
        .last_recv_us
        .fetch_max(sh.conns.since_start_us(), Relaxed);
    if msg.topic.as_deref() != Some(&cx.room.topic) {
        bump(&mut cx.out.conns.server_errors, "push_for_another_topic");
        return;
    }
    let Some(seq) = msg.seq else {
        bump(&mut cx.out.conns.server_errors, "push_without_seq");
        return;
    };
    let data = msg.data;
    let from_ok = match (data, msg.from.as_deref()) {
        (Some(d), Some(f)) => {
            f.strip_prefix('u').and_then(|u| u.parse::<u64>().ok())
                == Some(cx.room.user_base + d.m as u64)
        }
        _ => false,
    };
    let first = cx
        .room
        .book
        .on_push(cx.mb.m, seq, data.map(|d| (d.m, d.n)), from_ok);
    if first {
        sh.delivered.fetch_add(1, Relaxed);
        if let Some(d) = data {
            util::record(&mut cx.out.fanout, util::since_us(d.t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_and_messages_parse() {
        assert_eq!(publish_ref(Some("p17")), Some(17));
        assert_eq!(publish_ref(Some("s")), None);
        assert_eq!(publish_ref(Some("p")), None);
        assert_eq!(publish_ref(None), None);
        let m: Msg = serde_json::from_slice(
            br#"{"type":"push","seq":42,"topic":"room:1","from":"u3","ts":1,"data":{"t":5,"m":3,"n":7,"pad":"xx"}}"#,
        )
        .unwrap();
        let d = m.data.unwrap();
        assert_eq!((m.seq, d.t, d.m, d.n), (Some(42), 5, 3, 7));
        assert_eq!(m.from.as_deref(), Some("u3"));
        let e: Msg = serde_json::from_slice(
            br#"{"type":"error","code":"rate_limited","message":"slow down","ref":"p9"}"#,
        )
        .unwrap();
        assert_eq!(
            (e.code.as_deref(), e.reference.as_deref()),
            (Some("rate_limited"), Some("p9"))
        );
        // Someone else's push does not parse as ours.
        assert!(serde_json::from_slice::<Msg>(br#"{"type":"push","seq":1,"data":"hi"}"#).is_err());
    }
}
