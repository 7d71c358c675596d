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
    /// Ranges below `next` the server said it would not send (a resume answered
    /// `resumed:false` skipped them, see [`SeqTracker::skip_to`]): not missing, not gaps.
    skipped: Vec<(u64, u64)>,
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
            // n < next: fills a gap (or a skipped range: the server sent it after all), or
            // is a duplicate (including numbers before the start)
            if take(&mut self.gaps, n) || take(&mut self.skipped, n) {
                self.unique += 1;
                self.out_of_order += 1;
                true
            } else {
                self.duplicated += 1;
                false
            }
        }
    }

    /// The server answered a resume from `since` = [`SeqTracker::last`] with
    /// `resumed:false` and `seq`: the numbers after `since` up to `seq` will not be
    /// sent (not missing: the server said so), and the stream continues after `seq`.
    /// Gaps below `since` stay missing; a `seq` not beyond `since` skips nothing.
    pub fn skip_to(&mut self, seq: u64) {
        if seq < self.next {
            return;
        }
        match self.skipped.last_mut() {
            Some(last) if last.1 + 1 == self.next => last.1 = seq,
            _ => self.skipped.push((self.next, seq)),
        }
        self.next = seq + 1;
    }

    /// Numbers from the start up to `upto` (inclusive) that were skipped by
    /// [`SeqTracker::skip_to`] and never arrived.
    pub fn skipped_upto(&self, upto: u64) -> u64 {
        in_ranges_upto(&self.skipped, upto)
    }

    /// Every number skipped by [`SeqTracker::skip_to`] that never arrived.
    pub fn skipped(&self) -> u64 {
        self.skipped_upto(u64::MAX)
    }

    /// Of `expected` numbers from the start, the ones skipped by
    /// [`SeqTracker::skip_to`] that never arrived.
    pub fn skipped_of(&self, expected: u64) -> u64 {
        if expected == 0 {
            return 0;
        }
        self.skipped_upto(self.first + expected - 1)
    }

    #[cfg_attr(not(test), allow(dead_code))]
    /// Numbers skipped so far (below the highest seen) that never arrived.
    pub fn holes(&self) -> u64 {
        self.gaps.iter().map(|&(lo, hi)| hi - lo + 1).sum()
    }

    /// The highest number seen, or the start when none.
    pub fn last(&self) -> u64 {
        self.next - 1
    }

    /// Numbers from the start up to `upto` (inclusive) that never arrived: the gaps
    /// below it plus the tail above the highest seen.
    /// Numbers [`SeqTracker::skip_to`] skipped are not missing.
    pub fn missing_upto(&self, upto: u64) -> u64 {
        in_ranges_upto(&self.gaps, upto) + upto.saturating_sub(self.last())
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

/// Removes `n` from `ranges` (inclusive, ascending, disjoint); true when it was in one.
fn take(ranges: &mut Vec<(u64, u64)>, n: u64) -> bool {
    let found = ranges.binary_search_by(|&(lo, hi)| {
        if hi < n {
            std::cmp::Ordering::Less
        } else if lo > n {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    let Ok(i) = found else {
        return false;
    };
    let (lo, hi) = ranges[i];
    match (lo == n, hi == n) {
        (true, true) => {
            ranges.remove(i);
        }
        (true, false) => ranges[i].0 = n + 1,
        (false, true) => ranges[i].1 = n - 1,
        (false, false) => {
            ranges[i].1 = n - 1;
            ranges.insert(i + 1, (n + 1, hi));
        }
    }
    true
}

/// How many numbers of `ranges` (inclusive) are at most `upto`.
fn in_ranges_upto(ranges: &[(u64, u64)], upto: u64) -> u64 {
    ranges
        .iter()
        .filter(|&&(lo, _)| lo <= upto)
        .map(|&(lo, hi)| hi.min(upto) - lo + 1)
        .sum()
}

/// A set of numbers as inclusive ranges, ascending and disjoint (adjacent ones merged):
/// the numbers a push driver stream had accepted, which in a healthy run is one range.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    /// Adds `n` (already in: no change). Numbers mostly come in order, which extends the
    /// last range in place.
    pub fn insert(&mut self, n: u64) {
        let v = &mut self.0;
        match v.last_mut() {
            None => return v.push((n, n)),
            Some(last) if last.1.checked_add(1) == Some(n) => return last.1 = n,
            Some(last) if last.1 < n => return v.push((n, n)),
            _ => {}
        }
        // The first range that ends at or after n - 1 (it may hold n, or touch it).
        let i = v.partition_point(|&(_, hi)| hi.saturating_add(1) < n);
        if i < v.len() && v[i].0 <= n && n <= v[i].1 {
            return;
        }
        let joins_left = i < v.len() && v[i].1.saturating_add(1) == n;
        let right = if joins_left { i + 1 } else { i };
        let joins_right = right < v.len() && v[right].0 == n.saturating_add(1);
        match (joins_left, joins_right) {
            (true, true) => {
                v[i].1 = v[right].1;
                v.remove(right);
            }
            (true, false) => v[i].1 = n,
            (false, true) => v[right].0 = n,
            (false, false) => v.insert(i, (n, n)),
        }
    }

    /// Adds every number of `o`.
    pub fn union(&mut self, o: &Ranges) {
        if self.0.is_empty() {
            self.0 = o.0.clone();
            return;
        }
        let mut all: Vec<(u64, u64)> = self.0.iter().chain(&o.0).copied().collect();
        all.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(all.len());
        for (lo, hi) in all {
            match out.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        self.0 = out;
    }

    /// How many numbers the set holds.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.0.iter().map(|&(lo, hi)| hi - lo + 1).sum()
    }

    /// How many of its numbers are in `lo..=hi`.
    fn count_in(&self, lo: u64, hi: u64) -> u64 {
        if lo > hi {
            return 0;
        }
        self.0
            .iter()
            .filter(|&&(a, b)| a <= hi && b >= lo)
            .map(|&(a, b)| b.min(hi) - a.max(lo) + 1)
            .sum()
    }

    /// The ranges, for tests.
    #[cfg(test)]
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }
}

/// The numbers `n` a push driver had accepted per driver stream `s` (topic and broadcast
/// pushes, whose receivers number them by `(s, n)`), so that their delivery is judged by
/// number: a push given up that the server delivered anyway does not hide one missing.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Numbers(Vec<Ranges>);

impl Numbers {
    /// Most ranges in all that a worker hands on (`PUSHED`, `DRAIN`); a run with more
    /// (many scattered pushes given up, and it fails for them anyway) is judged by count.
    pub const MAX_WIRE_RANGES: usize = 100_000;

    /// Counts number `n` of driver stream `s` as accepted (streams past the last a
    /// receiver tells apart share the last, as on the receiving side).
    pub fn insert(&mut self, s: usize, n: u64) {
        let s = s.min(MAX_STREAMS - 1);
        if s >= self.0.len() {
            self.0.resize_with(s + 1, Ranges::default);
        }
        self.0[s].insert(n);
    }

    /// Adds every number of `o`.
    pub fn union(&mut self, o: &Numbers) {
        if o.0.len() > self.0.len() {
            self.0.resize_with(o.0.len(), Ranges::default);
        }
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            a.union(b);
        }
    }

    /// Numbers accepted in all.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.0.iter().map(Ranges::len).sum()
    }

    /// The set on one line for a worker's `PUSHED` or `DRAIN`: JSON without spaces, or
    /// `-` when it has more than [`Numbers::MAX_WIRE_RANGES`] ranges.
    pub fn to_wire(&self) -> String {
        let ranges: usize = self.0.iter().map(|r| r.0.len()).sum();
        if ranges > Self::MAX_WIRE_RANGES {
            return "-".into();
        }
        serde_json::to_string(self).unwrap_or_else(|_| "-".into())
    }

    /// What [`Numbers::to_wire`] wrote; `None` for `-` or anything unreadable.
    pub fn from_wire(s: &str) -> Option<Numbers> {
        serde_json::from_str(s.trim()).ok()
    }

    /// Of the numbers accepted, how many receiver `st` got (each once, however often it
    /// came).
    fn delivered_to(&self, st: &RecvState) -> u64 {
        self.0
            .iter()
            .zip(&st.streams)
            .map(|(acc, t)| {
                // What arrived of `t`: first..=last less its gaps.
                acc.count_in(t.first, t.last())
                    - t.gaps
                        .iter()
                        .map(|&(lo, hi)| acc.count_in(lo, hi))
                        .sum::<u64>()
            })
            .sum()
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

/// How [`Completeness::add_conn`] tells what is missing.
#[derive(Debug, Clone, Copy)]
pub enum Judge<'a> {
    /// Direct pushes: by the user's `seq`.
    Direct,
    /// Topic and broadcast pushes: by the numbers the driver had accepted.
    Numbers(&'a Numbers),
    /// Topic and broadcast pushes whose accepted numbers are not known: by count.
    Count,
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
    /// Adds one receiver that should have got `expected` messages. What is missing is
    /// counted by number, so an unexpected extra message never hides a missing one:
    /// with `Judge::Direct` (pushes to users) by the user's `seq` from its `welcome`;
    /// with `Judge::Numbers` (topic and broadcast pushes) by the `(s, n)` the driver had
    /// accepted. `Judge::Count` (the accepted numbers are not known) compares totals.
    pub fn add_conn(&mut self, expected: u64, st: Option<&RecvState>, judge: Judge<'_>) {
        self.expected += expected;
        let Some(s) = st else {
            self.missing += expected;
            return;
        };
        let uniq = s.unique();
        self.received += s.received;
        self.duplicated += s.duplicated();
        self.out_of_order += s.out_of_order();
        let missing = match judge {
            Judge::Direct => s.seq.missing_of(expected),
            Judge::Numbers(acc) => expected.saturating_sub(acc.delivered_to(s)),
            Judge::Count => expected.saturating_sub(uniq),
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
    fn skipped_numbers_are_neither_missing_nor_gaps() {
        let mut t = SeqTracker::after(0);
        t.record(1);
        t.record(3); // 2 lost
        t.skip_to(6); // 4..=6 will not be sent
        assert_eq!(t.last(), 6);
        t.skip_to(8); // adjacent: one range
        assert_eq!(t.skipped, vec![(4, 8)]);
        t.skip_to(5); // not beyond the last number: nothing
        assert_eq!(t.skipped, vec![(4, 8)]);
        t.record(10); // 9 lost after the skip
        assert_eq!((t.holes(), t.skipped()), (2, 5));
        // Of 12 expected: 2 and 9 lost, 11 and 12 never came, 4..=8 skipped.
        assert_eq!((t.missing_of(12), t.skipped_of(12)), (4, 5));
        assert_eq!((t.missing_of(6), t.skipped_of(6)), (1, 3));
        // A skipped number that comes after all is delivered (late), once.
        assert!(t.record(5));
        assert!(!t.record(5));
        assert_eq!(t.skipped, vec![(4, 4), (6, 8)]);
        assert_eq!((t.unique, t.out_of_order, t.duplicated), (4, 1, 1));
    }

    #[test]
    fn completeness_counts_missing_never_hides() {
        let mut c = Completeness::default();
        let mut a = RecvState::new(3);
        for s in [4, 5, 7, 7, 6] {
            a.record_seq(s);
        }
        c.add_conn(5, Some(&a), Judge::Direct); // expected 4..=8: got 4 distinct, 1 dup, 1 ooo
        c.add_conn(2, None, Judge::Direct); // saw nothing
        let mut b = RecvState::new(0);
        b.record_counter(1, 1);
        b.record_counter(1, 2);
        b.record_counter(0, 1);
        b.record_counter(1, 2);
        c.add_conn(2, Some(&b), Judge::Count); // 3 distinct > 2 expected
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
        c.add_conn(10, Some(&a), Judge::Direct);
        assert_eq!((c.expected, c.missing, c.unexpected), (10, 1, 1));
        // Holes above the expected range are not missing: 1..=8 and 12 of 10 expected.
        let mut b = RecvState::new(0);
        for s in (1..=8).chain([12]) {
            b.record_seq(s);
        }
        let mut c = Completeness::default();
        c.add_conn(10, Some(&b), Judge::Direct);
        assert_eq!((c.missing, c.unexpected), (2, 1));
        // From a welcome seq of 100: 101..=103 of 3 is complete.
        let mut w = RecvState::new(100);
        for s in 101..=103 {
            w.record_seq(s);
        }
        let mut c = Completeness::default();
        c.add_conn(3, Some(&w), Judge::Direct);
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
        c.add_conn(10, Some(&a), Judge::Direct);
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
        c.add_conn(10, Some(&lost), Judge::Direct);
        let mut open = RecvState::new(0);
        for s in 1..=10 {
            open.record_seq(s);
        }
        c.add_conn(10, Some(&open), Judge::Direct);
        // Dropped before its first push: everything is missing.
        c.add_conn(10, None, Judge::Direct);
        assert_eq!((c.expected, c.received, c.missing), (30, 13, 17));
    }

    #[test]
    fn ranges_merge_in_any_order() {
        let mut r = Ranges::default();
        for n in [1, 2, 3, 7, 5, 9, 6, 3, 8, 4] {
            r.insert(n);
        }
        assert_eq!(r.ranges(), &[(1, 9)]);
        let mut r = Ranges::default();
        for n in [10, 2, 5, 4, 11, 1] {
            r.insert(n);
        }
        assert_eq!(r.ranges(), &[(1, 2), (4, 5), (10, 11)]);
        assert_eq!(r.len(), 6);
        r.insert(3);
        assert_eq!(r.ranges(), &[(1, 5), (10, 11)]);
        let mut o = Ranges::default();
        for n in [6, 8, 20] {
            o.insert(n);
        }
        r.union(&o);
        assert_eq!(r.ranges(), &[(1, 6), (8, 8), (10, 11), (20, 20)]);
        assert_eq!((r.count_in(5, 10), r.count_in(12, 19)), (4, 0));
    }

    #[test]
    fn topic_delivery_is_judged_by_number() {
        // Stream 0 accepted 1..=10 but for 5 (given up); stream 1 accepted 1..=3. The
        // receiver got 5 after all (the server took it), and not 7: by count that nets
        // to "all there"; by number 7 is missing and 5 unexpected.
        let mut acc = Numbers::default();
        for n in (1..=10).filter(|&n| n != 5) {
            acc.insert(0, n);
        }
        for n in 1..=3 {
            acc.insert(1, n);
        }
        let mut st = RecvState::new(0);
        for n in (1..=10).filter(|&n| n != 7) {
            st.record_counter(0, n);
        }
        for n in [1, 3, 2, 2] {
            st.record_counter(1, n);
        }
        let mut by_count = Completeness::default();
        by_count.add_conn(acc.len(), Some(&st), Judge::Count);
        assert_eq!((by_count.missing, by_count.unexpected), (0, 0));
        let mut c = Completeness::default();
        c.add_conn(acc.len(), Some(&st), Judge::Numbers(&acc));
        assert_eq!(
            (
                c.expected,
                c.missing,
                c.unexpected,
                c.duplicated,
                c.out_of_order
            ),
            (12, 1, 1, 1, 1)
        );
        // Nothing received: everything missing. A stream nobody accepted: unexpected.
        let mut c = Completeness::default();
        c.add_conn(acc.len(), Some(&RecvState::new(0)), Judge::Numbers(&acc));
        assert_eq!((c.missing, c.unexpected), (12, 0));
        let mut other = RecvState::new(0);
        other.record_counter(3, 1);
        let mut c = Completeness::default();
        c.add_conn(0, Some(&other), Judge::Numbers(&Numbers::default()));
        assert_eq!((c.missing, c.unexpected), (0, 1));
    }

    #[test]
    fn numbers_cross_the_worker_pipe() {
        let mut a = Numbers::default();
        a.insert(2, 1);
        a.insert(2, 2);
        a.insert(0, 4);
        let wire = a.to_wire();
        assert!(!wire.contains(' '), "{wire}");
        assert_eq!(Numbers::from_wire(&wire), Some(a.clone()));
        assert_eq!(Numbers::from_wire("-"), None);
        let mut b = Numbers::default();
        b.insert(2, 3);
        b.union(&a);
        assert_eq!(b.len(), 4);
        let mut many = Numbers::default();
        for n in 0..=Numbers::MAX_WIRE_RANGES as u64 {
            many.insert(0, 2 * n);
        }
        assert_eq!(many.to_wire(), "-");
    }
}
