//! What the event loops of one chat process measured, and this process's report from it.

use super::plan::ChatCfg;
use super::report::{ChatReport, RoomReport, LATENCY_FROM};
use super::shared::ChatShared;
use crate::client::{merge_counts, ThreadOut};
use crate::report::Report;
use crate::util;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

/// What the event loops of one process measured: the connection figures every scenario
/// has, the publishes and their answers, and each room's verdict.
pub struct ChatOut {
    /// How the members' connections went (the figures every scenario reports).
    pub conns: ThreadOut,
    /// Fan-out latency of first deliveries.
    pub fanout: Histogram<u64>,
    /// Publish answer latency.
    pub publish: Histogram<u64>,
    /// Publishes answered `error`, by code.
    pub publish_errors: BTreeMap<String, u64>,
    /// Members whose `subscribe` was answered `subscribed`.
    pub subscribed: u64,
    /// Publishes the pace planned.
    pub planned: u64,
    /// Publishes sent.
    pub sent: u64,
    /// Publishes answered `published`.
    pub published: u64,
    /// Planned publishes of members not (or no longer) in their room.
    pub not_sent: u64,
    /// Publishes without an answer at the close.
    pub unanswered: u64,
    /// Publishes sent more than [`crate::push::LATE_SEND`] after their schedule slot.
    pub sent_late: u64,
    /// The longest a publish waited past its slot before it was sent, in µs.
    pub max_send_lag_us: u64,
    /// Per room, as its event loop judged it.
    pub rooms: Vec<RoomReport>,
}

impl ChatOut {
    /// Nothing measured yet.
    pub fn new() -> ChatOut {
        ChatOut {
            conns: ThreadOut::new(),
            fanout: util::new_hist(),
            publish: util::new_hist(),
            publish_errors: BTreeMap::new(),
            subscribed: 0,
            planned: 0,
            sent: 0,
            published: 0,
            not_sent: 0,
            unanswered: 0,
            sent_late: 0,
            max_send_lag_us: 0,
            rooms: Vec::new(),
        }
    }

    /// Adds another event loop's measurements.
    pub fn merge(&mut self, o: ChatOut) {
        self.conns.merge(o.conns);
        let _ = self.fanout.add(&o.fanout);
        let _ = self.publish.add(&o.publish);
        merge_counts(&mut self.publish_errors, o.publish_errors);
        util::add_fields!(
            self,
            o,
            [subscribed, planned, sent, published, not_sent, unanswered, sent_late]
        );
        self.max_send_lag_us = self.max_send_lag_us.max(o.max_send_lag_us);
        self.rooms.extend(o.rooms);
    }

    /// This process's report; `raw` keeps the histograms for a parent to merge (the
    /// connection figures always keep theirs, and the output strips them).
    pub fn report(self, cfg: &ChatCfg, sh: &ChatShared, raw: bool) -> Report {
        let go = sh.go_us.load(Relaxed);
        let since_go = |us: u64| {
            if go > 0 {
                us.saturating_sub(go) as f64 / 1e6
            } else {
                0.0
            }
        };
        let mut chat = ChatReport {
            rooms: cfg.rooms.count,
            members_per_room: cfg.rooms.members,
            rate_per_member: cfg.pace.rate,
            publish_claim: cfg.publish_claim,
            publishes_planned: self.planned,
            publishes_sent: self.sent,
            published: self.published,
            publish_errors: self.publish_errors,
            publishes_unanswered: self.unanswered,
            publishes_not_sent: self.not_sent,
            publish_secs: since_go(sh.last_sent_us.load(Relaxed)),
            publishes_sent_late: self.sent_late,
            publish_max_send_lag_us: self.max_send_lag_us,
            latency_from: LATENCY_FROM.into(),
            publish_latency_us: util::percentiles(&self.publish),
            fanout_latency_us: util::percentiles(&self.fanout),
            delivery_secs: since_go(sh.conns.last_recv_us.load(Relaxed)),
            per_room: self.rooms,
            ..Default::default()
        };
        if raw {
            chat.raw_publish_latency = util::hist_to_pairs(&self.publish);
            chat.raw_fanout_latency = util::hist_to_pairs(&self.fanout);
        }
        chat.settle();
        let mut rep = Report {
            mode: "chat".into(),
            procs: 1,
            connections_target: cfg.rooms.connections(),
            connections_opened: sh.conns.opened.load(Relaxed),
            connect_secs: sh.conns.last_welcome_us.load(Relaxed) as f64 / 1e6,
            subscriptions_confirmed: self.subscribed,
            chat: Some(chat),
            ..Default::default()
        };
        rep.fill_closed(&self.conns, None, false);
        rep
    }
}
