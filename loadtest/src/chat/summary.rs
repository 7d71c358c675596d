//! The human lines of the chat report: what was published and answered, the latencies,
//! the deliveries, the rooms that failed, hints for the server's refusals, the verdict.

use super::report::{ChatReport, Delivery};
use crate::util::{fmt_us, Percentiles};

/// Rooms named one by one in the human summary when they lost or doubled messages.
const ROOMS_SHOWN: usize = 10;

impl ChatReport {
    /// The human lines of the summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "chat: {} rooms x {} members, {} msg/s per member; {} of {} members joined\n",
            self.rooms,
            self.members_per_room,
            self.rate_per_member,
            self.members_joined,
            self.rooms * self.members_per_room
        );
        let errors = if self.publish_errors.is_empty() {
            "none".to_string()
        } else {
            self.publish_errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        s += &format!(
            "publishes: {} planned, {} sent in {:.1}s ({:.0}/s), {} published, errors: {}, {} unanswered, {} not sent (member not in its room)\n",
            self.publishes_planned,
            self.publishes_sent,
            self.publish_secs,
            self.publish_rate_per_sec,
            self.published,
            errors,
            self.publishes_unanswered,
            self.publishes_not_sent
        );
        if self.publishes_sent_late > 0 {
            s += &format!(
                "publishes sent more than 100ms after their slot at --rate: {} (longest wait {:.1}ms): the load generator fell behind its pace\n",
                self.publishes_sent_late,
                self.publish_max_send_lag_us as f64 / 1e3
            );
        }
        s += &format!(
            "publish answer latency (from each publish's slot at --rate): {}\n",
            latency(&self.publish_latency_us)
        );
        s += &format!(
            "fan-out latency (from each publish's slot at --rate to each member's receipt): {}\n",
            latency(&self.fanout_latency_us)
        );
        s += &format!(
            "deliveries: {}; {:.0}/s over {:.1}s\n",
            words(&self.delivery, true),
            self.deliveries_per_sec,
            self.delivery_secs
        );
        for r in self
            .per_room
            .iter()
            .filter(|r| r.failed())
            .take(ROOMS_SHOWN)
        {
            s += &format!(
                "  {}: {}/{} joined, published {} {}\n",
                r.topic,
                r.joined,
                r.members,
                r.published,
                words(&r.delivery, false)
            );
        }
        if self.rooms_failed > ROOMS_SHOWN as u64 {
            s += &format!(
                "  ... {} more rooms failed (see per_room in --json)\n",
                self.rooms_failed - ROOMS_SHOWN as u64
            );
        }
        s += &self.hints();
        let problems = self.problems();
        if problems.is_empty() {
            s += &format!(
                "chat delivery: all {} rooms complete: every member got every published message once, in order\n",
                self.rooms
            );
        } else {
            let rooms = if self.rooms_failed > 0 {
                format!(" in {} of {} rooms", self.rooms_failed, self.rooms)
            } else {
                String::new()
            };
            s += &format!(
                "chat delivery: FAILED{rooms} ({}; exit status 1)\n",
                problems.join(", ")
            );
        }
        s
    }

    /// What to change when the server refused publishes.
    fn hints(&self) -> String {
        let mut s = String::new();
        if let Some(n) = self.publish_errors.get("rate_limited") {
            s += &format!(
                "hint: {n} publishes were refused with rate_limited: the server lets each connection send \
                 --client-rate messages per second (0 = unlimited); this run sends {} per member plus its \
                 subscribe, so start the server with a higher --client-rate, or lower --rate\n",
                self.rate_per_member
            );
        }
        if let Some(n) = self.publish_errors.get("forbidden_topic") {
            s += &format!("hint: {n} publishes were refused with forbidden_topic: ");
            s += if self.publish_claim {
                "the tokens' publish claim grants <room-prefix>*, so does the server check \
                 another secret or claim?\n"
            } else {
                "with --no-publish-claim only the server's --public-publish '<room-prefix>*' \
                 lets members publish\n"
            };
        }
        s
    }
}

/// A latency line's figures, or `none` without samples.
fn latency(l: &Percentiles) -> String {
    if l.count == 0 {
        return "none".to_string();
    }
    format!(
        "p50 {} p90 {} p99 {} max {} ({} samples)",
        fmt_us(l.p50),
        fmt_us(l.p90),
        fmt_us(l.p99),
        fmt_us(l.max),
        l.count
    )
}

/// `d`'s figures in the summary's words; `received` and `foreign` only with `all` (the
/// per-room lines leave them out).
fn words(d: &Delivery, all: bool) -> String {
    let t = &d.tally;
    let figures = [
        ("expected", t.expected, true),
        ("delivered", t.delivered, true),
        ("received", t.received, all),
        ("missing", t.missing, true),
        ("duplicated", t.duplicated, true),
        ("out-of-order", t.out_of_order, true),
        ("unexpected", t.unexpected, true),
        ("mismatched", d.mismatched, true),
        ("foreign", d.foreign, all),
    ];
    let shown = figures.iter().filter(|(_, _, shown)| *shown);
    let words: Vec<String> = shown.map(|(k, n, _)| format!("{k} {n}")).collect();
    words.join(" ")
}
