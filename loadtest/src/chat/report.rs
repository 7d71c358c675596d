//! The chat section of the report: per room and in all, its verdict and its merge
//! across worker processes (its human lines are in [`super::summary`]).

use crate::client::merge_counts;
use crate::report::round1;
use crate::track::Tally;
use crate::util::{self, Percentiles};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Delivery figures of one room or of all: every member should get every accepted
/// message once, in order.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// By `seq`: `expected` is `published` times `members`, `unexpected` counts
    /// deliveries of a `seq` no `published` answer named, and `out_of_order` those that
    /// came after a higher `seq` (a room's order is strictly increasing).
    #[serde(flatten)]
    pub tally: Tally,
    /// Deliveries whose data, sender or `from` disagree with the `published` answer of
    /// their `seq` (or with another member's delivery of it).
    pub mismatched: u64,
    /// Pushes to the room that this run did not publish (someone else's).
    pub foreign: u64,
}

impl Delivery {
    /// Adds `o`'s figures.
    fn add(&mut self, o: &Delivery) {
        self.tally.add(&o.tally);
        util::add_fields!(self, o, [mismatched, foreign]);
    }

    /// Whether anything went missing, came twice, out of order, unasked or altered.
    pub fn failed(&self) -> bool {
        let t = &self.tally;
        t.missing + t.duplicated + t.out_of_order + t.unexpected + self.mismatched > 0
    }
}

/// One room's delivery figures.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomReport {
    /// The room's topic.
    pub topic: String,
    /// Members of the room.
    pub members: u64,
    /// Members whose `subscribe` was answered `subscribed`.
    pub joined: u64,
    /// Messages the room accepted (`published` answers).
    pub published: u64,
    /// What its members got of them.
    #[serde(flatten)]
    pub delivery: Delivery,
}

impl RoomReport {
    /// Whether anything went wrong in this room.
    pub fn failed(&self) -> bool {
        self.delivery.failed()
    }
}

/// `latency_from` of every chat report: publishes are always paced.
pub const LATENCY_FROM: &str = "schedule";

/// The chat section of the report.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatReport {
    /// Rooms in all.
    pub rooms: u64,
    /// Members per room.
    pub members_per_room: u64,
    /// Messages per second each member publishes.
    pub rate_per_member: f64,
    /// Whether the tokens carried the `publish` claim (else only `--public-publish` lets
    /// the members publish).
    pub publish_claim: bool,
    /// Members whose `subscribe` was answered `subscribed`.
    pub members_joined: u64,
    /// Publishes the pace planned.
    pub publishes_planned: u64,
    /// Publishes sent.
    pub publishes_sent: u64,
    /// `published` answers.
    pub published: u64,
    /// Publishes answered `error`, by code.
    pub publish_errors: BTreeMap<String, u64>,
    /// Publishes with neither answer when the run closed.
    pub publishes_unanswered: u64,
    /// Planned publishes of members that were not (or no longer) in their room.
    pub publishes_not_sent: u64,
    /// Seconds from the first publish to the last.
    pub publish_secs: f64,
    /// Publishes sent per second over `publish_secs`.
    pub publish_rate_per_sec: f64,
    /// Publishes sent more than 100 ms after their schedule slot (the load generator
    /// fell behind its pace: a stalled or overloaded process).
    pub publishes_sent_late: u64,
    /// The longest a publish waited past its schedule slot before it was sent, in µs.
    pub publish_max_send_lag_us: u64,
    /// Where the latencies count from: `schedule`, each publish's slot at --rate (the
    /// only pace chat has), not its send.
    pub latency_from: String,
    /// From a publish's schedule slot to its `published` answer.
    pub publish_latency_us: Percentiles,
    /// From a publish's schedule slot to each member's receipt of it (first deliveries).
    pub fanout_latency_us: Percentiles,
    /// The rooms' delivery figures added up.
    #[serde(flatten)]
    pub delivery: Delivery,
    /// Seconds from the first publish to the last push received.
    pub delivery_secs: f64,
    /// Push frames received per second over `delivery_secs`.
    pub deliveries_per_sec: f64,
    /// Rooms with anything missing, duplicated, out of order, unexpected or mismatched.
    pub rooms_failed: u64,
    /// Nothing missing, duplicated, out of order, unexpected, mismatched or unanswered,
    /// and at least one message published (else the exit status is 1).
    pub delivery_ok: bool,
    /// Per room, in room order.
    pub per_room: Vec<RoomReport>,
    /// Raw histograms (value, count), only between worker processes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raw_publish_latency: Vec<(u64, u64)>,
    /// Raw fan-out latency histogram, as `raw_publish_latency`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raw_fanout_latency: Vec<(u64, u64)>,
}

/// `x` to three decimals.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl ChatReport {
    /// Adds up the rooms, derives the rates and the verdict.
    pub fn settle(&mut self) {
        self.per_room.sort_by(|a, b| room_order(&a.topic, &b.topic));
        self.delivery = Delivery::default();
        for r in &self.per_room {
            self.delivery.add(&r.delivery);
        }
        self.members_joined = self.per_room.iter().map(|r| r.joined).sum();
        self.rooms_failed = self.per_room.iter().filter(|r| r.failed()).count() as u64;
        self.publish_secs = round3(self.publish_secs);
        self.delivery_secs = round3(self.delivery_secs);
        self.publish_rate_per_sec = if self.publish_secs > 0.0 {
            round1(self.publishes_sent as f64 / self.publish_secs)
        } else {
            0.0
        };
        self.deliveries_per_sec = if self.delivery_secs > 0.0 {
            round1(self.delivery.tally.received as f64 / self.delivery_secs)
        } else {
            0.0
        };
        self.delivery_ok = self.problems().is_empty();
    }

    /// What fails the run, in words (empty when it passed).
    pub fn problems(&self) -> Vec<String> {
        let t = &self.delivery.tally;
        let mut p: Vec<String> = [
            ("missing", t.missing),
            ("duplicated", t.duplicated),
            ("out of order", t.out_of_order),
            ("unexpected", t.unexpected),
            ("mismatched", self.delivery.mismatched),
            ("unanswered publishes", self.publishes_unanswered),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{what} {n}"))
        .collect();
        if self.published == 0 {
            p.push("no message was published".into());
        }
        p
    }

    /// Merges worker sections (each with whole rooms).
    pub fn merge(parts: &[&ChatReport]) -> ChatReport {
        let mut m = ChatReport::default();
        let mut publish = util::new_hist();
        let mut fanout = util::new_hist();
        for p in parts {
            util::add_fields!(
                m,
                p,
                [
                    rooms,
                    publishes_planned,
                    publishes_sent,
                    published,
                    publishes_unanswered,
                    publishes_not_sent,
                    publishes_sent_late
                ]
            );
            m.publish_max_send_lag_us = m.publish_max_send_lag_us.max(p.publish_max_send_lag_us);
            m.latency_from = p.latency_from.clone();
            m.members_per_room = p.members_per_room;
            m.rate_per_member = p.rate_per_member;
            m.publish_claim = p.publish_claim;
            merge_counts(&mut m.publish_errors, p.publish_errors.clone());
            m.publish_secs = m.publish_secs.max(p.publish_secs);
            m.delivery_secs = m.delivery_secs.max(p.delivery_secs);
            m.per_room.extend(p.per_room.iter().cloned());
            util::hist_add_pairs(&mut publish, &p.raw_publish_latency);
            util::hist_add_pairs(&mut fanout, &p.raw_fanout_latency);
        }
        m.publish_latency_us = util::percentiles(&publish);
        m.fanout_latency_us = util::percentiles(&fanout);
        m.settle();
        m
    }
}

/// Orders room topics by their number when they share a prefix (`room:2` before `room:10`).
fn room_order(a: &str, b: &str) -> std::cmp::Ordering {
    let split = |t: &str| {
        let digits = t.len() - t.bytes().rev().take_while(u8::is_ascii_digit).count();
        let (p, n) = t.split_at(digits);
        (p.to_string(), n.parse::<u64>().unwrap_or(0))
    };
    split(a).cmp(&split(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_merge_and_judge() {
        let room = |topic: &str, missing| RoomReport {
            topic: topic.into(),
            members: 2,
            joined: 2,
            published: 3,
            delivery: Delivery {
                tally: Tally {
                    expected: 6,
                    delivered: 6 - missing,
                    received: 6 - missing,
                    missing,
                    ..Default::default()
                },
                ..Default::default()
            },
        };
        let mut a = ChatReport {
            rooms: 1,
            members_per_room: 2,
            publishes_sent: 3,
            published: 3,
            publish_secs: 1.0,
            per_room: vec![room("room:10", 0)],
            raw_fanout_latency: vec![(100, 6)],
            ..Default::default()
        };
        a.publish_errors.insert("rate_limited".into(), 2);
        let mut b = a.clone();
        b.per_room = vec![room("room:9", 1)];
        let m = ChatReport::merge(&[&a, &b]);
        assert_eq!(m.rooms, 2);
        assert_eq!(m.per_room[0].topic, "room:9", "rooms in number order");
        let d = &m.delivery.tally;
        assert_eq!((d.expected, d.delivered, d.missing), (12, 11, 1));
        assert_eq!(m.publish_errors["rate_limited"], 4);
        assert_eq!(m.fanout_latency_us.count, 12);
        assert_eq!(m.rooms_failed, 1);
        assert!(!m.delivery_ok);
        assert_eq!(m.problems(), vec!["missing 1".to_string()]);
        let s = m.summary();
        assert!(s.contains("room:9: 2/2 joined"), "{s}");
        assert!(s.contains("--client-rate"), "{s}");
        assert!(s.contains("FAILED in 1 of 2 rooms"), "{s}");
        let ok = ChatReport::merge(&[&a]);
        assert!(ok.delivery_ok);
        let none = ChatReport::merge(&[]);
        assert_eq!(
            none.problems(),
            vec!["no message was published".to_string()]
        );
    }

    #[test]
    fn the_json_keeps_its_flat_fields() {
        let mut r = ChatReport::default();
        r.per_room.push(RoomReport::default());
        let j = serde_json::to_value(&r).unwrap();
        for k in [
            "expected",
            "delivered",
            "missing",
            "foreign",
            "delivery_secs",
        ] {
            assert!(j.get(k).is_some(), "{k} in {j}");
            assert!(
                j["per_room"][0].get(k).is_some() || k == "delivery_secs",
                "{k}"
            );
        }
        assert!(j.get("delivery").is_none());
        let back: ChatReport = serde_json::from_value(j).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn rooms_sort_by_number() {
        assert!(room_order("room:2", "room:10").is_lt());
        assert!(room_order("a:9", "b:1").is_lt());
    }
}
