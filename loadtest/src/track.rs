//! Completeness accounting for numbered message streams.
//!
//! A tracker follows one stream of numbers (per-user `seq`, or a push driver's counter `n`).
//! It keeps only the next expected number and the gaps below it, so an in-order stream
//! costs a few words. Every number is classified exactly once: first delivery (in order
//! or filling a gap, the latter counted out of order) or duplicate.

use serde::{Deserialize, Serialize};

/// Delivery figures of numbered streams against what they should have got (a report
/// section flattens them into its own fields).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Deliveries that should have arrived: accepted messages, once per receiver.
    pub expected: u64,
    /// Distinct expected deliveries that arrived.
    pub delivered: u64,
    /// Frames that arrived, duplicates included.
    pub received: u64,
    /// Expected deliveries that never arrived.
    pub missing: u64,
    /// Frames whose number had already arrived.
    pub duplicated: u64,
    /// Deliveries that arrived after a higher number (they filled a gap).
    pub out_of_order: u64,
    /// Distinct deliveries nobody said were sent (an answer lost on the way).
    pub unexpected: u64,
}

impl Tally {
    /// Adds `o`'s figures.
    pub fn add(&mut self, o: &Tally) {
        crate::util::add_fields!(
            self,
            o,
            [
                expected,
                delivered,
                received,
                missing,
                duplicated,
                out_of_order,
                unexpected
            ]
        );
    }
}

#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    /// The first number expected.
    first: u64,
    /// The next number expected in order.
    next: u64,
    /// Missing ranges below `next`, inclusive, ascending and disjoint.
    gaps: Vec<(u64, u64)>,
    /// Distinct numbers received.
    pub unique: u64,
    /// Numbers received again.
    pub duplicated: u64,
    /// Numbers that arrived after a larger one (they filled a gap).
    pub out_of_order: u64,
}

impl SeqTracker {
    /// A tracker for a stream whose numbers so far end at `last` (0 when none):
    /// the first expected number is `last + 1`.
    pub fn after(last: u64) -> Self {
        SeqTracker {
            first: last + 1,
            next: last + 1,
            ..Default::default()
        }
    }

    /// Counts number `n`; true when it had not been seen before.
    pub fn record(&mut self, n: u64) -> bool {
        if n == self.next {
            self.unique += 1;
            self.next += 1;
            true
        } else if n > self.next {
            self.gaps.push((self.next, n - 1));
            self.unique += 1;
            self.next = n + 1;
            true
        } else {
            // n < next: fills a gap, or is a duplicate (including numbers before the start)
            match self.gaps.binary_search_by(|&(lo, hi)| {
                if hi < n {
                    std::cmp::Ordering::Less
                } else if lo > n {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            }) {
                Ok(i) => {
                    let (lo, hi) = self.gaps[i];
                    match (lo == n, hi == n) {
                        (true, true) => {
                            self.gaps.remove(i);
                        }
                        (true, false) => self.gaps[i].0 = n + 1,
                        (false, true) => self.gaps[i].1 = n - 1,
                        (false, false) => {
                            self.gaps[i].1 = n - 1;
                            self.gaps.insert(i + 1, (n + 1, hi));
                        }
                    }
                    self.unique += 1;
                    self.out_of_order += 1;
                    true
                }
                Err(_) => {
                    self.duplicated += 1;
                    false
                }
            }
        }
    }

    #[cfg_attr(not(test), allow(dead_code))]
    /// Numbers skipped so far (below the highest seen) that never arrived.
    pub fn holes(&self) -> u64 {
        self.gaps.iter().map(|&(lo, hi)| hi - lo + 1).sum()
    }

    #[cfg_attr(not(test), allow(dead_code))]
    /// The highest number seen, or the start when none.
    pub fn last(&self) -> u64 {
        self.next - 1
    }

    /// Numbers from the start up to `upto` (inclusive) that never arrived: the gaps
    /// below it plus the tail above the highest seen.
    pub fn missing_upto(&self, upto: u64) -> u64 {
        let gaps: u64 = self
            .gaps
            .iter()
            .filter(|&&(lo, _)| lo <= upto)
            .map(|&(lo, hi)| hi.min(upto) - lo + 1)
            .sum();
        gaps + upto.saturating_sub(self.last())
    }

    /// Of `expected` numbers from the start, the ones that never arrived, by number
    /// (not by count: an extra number does not hide a missing one).
    pub fn missing_of(&self, expected: u64) -> u64 {
        if expected == 0 {
            return 0;
        }
        self.missing_upto(self.first + expected - 1)
    }
}

/// Numbered streams one receiver tells apart (a push's `s` past the last counts as the
/// last), which bounds a receiver's trackers.
pub const MAX_STREAMS: usize = 4096;

/// What one receiving connection saw during a push run.
#[derive(Debug, Default)]
pub struct RecvState {
    /// Direct pushes, by the server's per-user `seq`.
    pub seq: SeqTracker,
    /// Topic/broadcast pushes, by the driver's counter `n`, one tracker per driver stream `s`.
    pub streams: Vec<SeqTracker>,
    /// Every push frame received (including duplicates).
    pub received: u64,
    /// Set when the drain ended (the clean close began): new numbers from then on are
    /// `late`, still delivered.
    pub draining: bool,
    /// Distinct numbers that arrived after the drain ended.
    pub late: u64,
}

impl RecvState {
    pub fn new(welcome_seq: u64) -> Self {
        RecvState {
            seq: SeqTracker::after(welcome_seq),
            ..Default::default()
        }
    }

    /// Counts a direct push; true when its `seq` is new.
    pub fn record_seq(&mut self, seq: u64) -> bool {
        self.received += 1;
        let new = self.seq.record(seq);
        self.late += u64::from(new && self.draining);
        new
    }

    /// Counts a topic or broadcast push of driver stream `stream`; true when `n` is new.
    pub fn record_counter(&mut self, stream: usize, n: u64) -> bool {
        self.received += 1;
        if stream >= self.streams.len() {
            self.streams
                .resize_with(stream + 1, || SeqTracker::after(0));
        }
        let new = self.streams[stream].record(n);
        self.late += u64::from(new && self.draining);
        new
    }

    pub fn unique(&self) -> u64 {
        self.seq.unique + self.streams.iter().map(|t| t.unique).sum::<u64>()
    }
    pub fn duplicated(&self) -> u64 {
        self.seq.duplicated + self.streams.iter().map(|t| t.duplicated).sum::<u64>()
    }
    pub fn out_of_order(&self) -> u64 {
        self.seq.out_of_order + self.streams.iter().map(|t| t.out_of_order).sum::<u64>()
    }
}

/// Totals over all receiving connections, computed against what the driver had accepted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Completeness {
    pub expected: u64,
    pub received: u64,
    pub missing: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Distinct messages beyond what was expected (e.g. a push whose API answer was lost).
    pub unexpected: u64,
    /// Of the distinct expected messages received, those that came after the drain
    /// ended (during the close): delivered, late, never missing.
    pub late: u64,
}

impl Completeness {
    /// Adds one receiver that should have got `expected` messages. With `direct`
    /// (pushes to users, numbered by the user's `seq` from its `welcome`) what is
    /// missing is counted by number, so an unexpected extra message never hides a
    /// missing one; topic and broadcast pushes are counted against the total.
    pub fn add_conn(&mut self, expected: u64, st: Option<&RecvState>, direct: bool) {
        self.expected += expected;
        let Some(s) = st else {
            self.missing += expected;
            return;
        };
        let uniq = s.unique();
        self.received += s.received;
        self.duplicated += s.duplicated();
        self.out_of_order += s.out_of_order();
        let missing = if direct {
            s.seq.missing_of(expected)
        } else {
            expected.saturating_sub(uniq)
        };
        self.missing += missing;
        // Delivered: expected - missing; what else arrived was not expected.
        self.unexpected += uniq.saturating_sub(expected - missing);
        self.late += s.late.min(expected - missing);
    }

    pub fn merge(&mut self, o: &Completeness) {
        self.expected += o.expected;
        self.received += o.received;
        self.missing += o.missing;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.unexpected += o.unexpected;
        self.late += o.late;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream() {
        let mut t = SeqTracker::after(10);
        for n in 11..=20 {
            t.record(n);
        }
        assert_eq!(
            (t.unique, t.duplicated, t.out_of_order, t.holes()),
            (10, 0, 0, 0)
        );
        assert_eq!(t.last(), 20);
        assert!(
            t.gaps.capacity() == 0,
            "no allocation for an in-order stream"
        );
    }

    #[test]
    fn gaps_reorder_and_duplicates() {
        let mut t = SeqTracker::after(0);
        let new: Vec<bool> = [1, 2, 5, 3, 9, 4, 4, 2, 0, 7]
            .into_iter()
            .map(|n| t.record(n))
            .collect();
        // What `record` says matches the counts: the load generator counts new pushes by it.
        assert_eq!(
            new,
            [true, true, true, true, true, true, false, false, false, true]
        );
        // unique: 1,2,5,3,9,4,7 = 7; dups: 4,2,0 = 3; ooo: 3,4,7 = 3; holes: 6,8
        assert_eq!(t.unique, 7);
        assert_eq!(t.duplicated, 3);
        assert_eq!(t.out_of_order, 3);
        assert_eq!(t.holes(), 2);
        assert_eq!(t.gaps, vec![(6, 6), (8, 8)]);
        t.record(8);
        t.record(6);
        assert_eq!(t.holes(), 0);
        assert_eq!(t.out_of_order, 5);
        assert!(!t.record(6));
        assert_eq!(t.duplicated, 4);
    }

    #[test]
    fn gap_split_in_middle() {
        let mut t = SeqTracker::after(0);
        t.record(10); // gap 1..=9
        t.record(5); // splits into 1..=4, 6..=9
        assert_eq!(t.gaps, vec![(1, 4), (6, 9)]);
        t.record(1);
        t.record(9);
        assert_eq!(t.gaps, vec![(2, 4), (6, 8)]);
        assert_eq!(t.holes(), 6);
        assert_eq!((t.unique, t.out_of_order, t.duplicated), (4, 3, 0));
    }

    #[test]
    fn completeness_counts_missing_never_hides() {
        let mut c = Completeness::default();
        let mut a = RecvState::new(3);
        for s in [4, 5, 7, 7, 6] {
            a.record_seq(s);
        }
        c.add_conn(5, Some(&a), true); // expected 4..=8: got 4 distinct, 1 dup, 1 ooo
        c.add_conn(2, None, true); // saw nothing
        let mut b = RecvState::new(0);
        b.record_counter(1, 1);
        b.record_counter(1, 2);
        b.record_counter(0, 1);
        b.record_counter(1, 2);
        c.add_conn(2, Some(&b), false); // 3 distinct > 2 expected
        assert_eq!(
            c,
            Completeness {
                expected: 9,
                received: 9,
                missing: 3,
                duplicated: 2,
                out_of_order: 1,
                unexpected: 1,
                late: 0,
            }
        );
    }

    #[test]
    fn an_extra_message_never_hides_a_missing_one() {
        // Expected seq 1..=10: 5 never came, 11 (a push the driver gave up on, which the
        // server still delivered) came instead. By count that nets to "all there"; by
        // number it is 1 missing and 1 unexpected (review s16b 3).
        let mut a = RecvState::new(0);
        for s in (1..=11).filter(|&s| s != 5) {
            a.record_seq(s);
        }
        let mut c = Completeness::default();
        c.add_conn(10, Some(&a), true);
        assert_eq!((c.expected, c.missing, c.unexpected), (10, 1, 1));
        // Holes above the expected range are not missing: 1..=8 and 12 of 10 expected.
        let mut b = RecvState::new(0);
        for s in (1..=8).chain([12]) {
            b.record_seq(s);
        }
        let mut c = Completeness::default();
        c.add_conn(10, Some(&b), true);
        assert_eq!((c.missing, c.unexpected), (2, 1));
        // From a welcome seq of 100: 101..=103 of 3 is complete.
        let mut w = RecvState::new(100);
        for s in 101..=103 {
            w.record_seq(s);
        }
        let mut c = Completeness::default();
        c.add_conn(3, Some(&w), true);
        assert_eq!((c.missing, c.unexpected), (0, 0));
    }

    #[test]
    fn messages_after_the_drain_are_late_not_missing() {
        let mut a = RecvState::new(0);
        for s in 1..=6 {
            a.record_seq(s);
        }
        a.draining = true;
        for s in [8, 7, 7] {
            a.record_seq(s);
        }
        let mut c = Completeness::default();
        c.add_conn(10, Some(&a), true);
        assert_eq!(
            (c.received, c.missing, c.late, c.duplicated),
            (9, 2, 2, 1),
            "9 frames, 8 distinct of which 2 late, 9 and 10 missing"
        );
    }

    #[test]
    fn lost_receiver_counts_what_it_never_got() {
        // A receiver the server dropped after 3 of its user's 10 pushes is judged against
        // the final 10, like one still open: 7 missing, not hidden.
        let mut c = Completeness::default();
        let mut lost = RecvState::new(0);
        for s in 1..=3 {
            lost.record_seq(s);
        }
        c.add_conn(10, Some(&lost), true);
        let mut open = RecvState::new(0);
        for s in 1..=10 {
            open.record_seq(s);
        }
        c.add_conn(10, Some(&open), true);
        // Dropped before its first push: everything is missing.
        c.add_conn(10, None, true);
        assert_eq!((c.expected, c.received, c.missing), (30, 13, 17));
    }
}
