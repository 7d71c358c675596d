//! Per-room exactly-once accounting: what a room accepted (`published` answers) against
//! what each of its members received, by the room's `seq`.

use super::report::RoomReport;
use crate::track::SeqTracker;
use std::collections::hash_map::Entry;
use std::collections::HashMap;

/// The first delivery of one `seq` of a room: whose message it carried, and how many
/// members have had it.
#[derive(Debug, Clone, Copy)]
struct Receipt {
    sender: u32,
    n: u64,
    members: u32,
}

/// What one room's members published and received, as the messages arrive. Pure: the
/// event loop feeds it, [`RoomBook::finish`] judges it.
#[derive(Debug, Default)]
pub struct RoomBook {
    members: u32,
    /// Per member, its `seq`s since its `subscribed` (`None` until then).
    seqs: Vec<Option<SeqTracker>>,
    /// `published` answers: seq to (sender, sender-local id).
    accepted: HashMap<u64, (u32, u64)>,
    /// First deliveries by seq.
    receipts: HashMap<u64, Receipt>,
    /// Push frames received, repeats included.
    received: u64,
    /// Pushes whose data, sender or `from` disagree with their seq's first delivery or
    /// the publisher; and `published` answers naming a seq already answered.
    mismatched: u64,
    /// Pushes that arrived before the member's `subscribed`.
    early: u64,
    /// Pushes to the room that no member of this run published.
    foreign: u64,
}

impl RoomBook {
    /// A room of `members` members, none subscribed yet.
    pub fn new(members: u32) -> RoomBook {
        RoomBook {
            members,
            seqs: vec![None; members as usize],
            ..Default::default()
        }
    }

    /// Member `m` subscribed when the room's stream was at `seq`: its deliveries start
    /// after it. A second answer changes nothing.
    pub fn on_subscribed(&mut self, m: u32, seq: u64) {
        if let Some(s @ None) = self.seqs.get_mut(m as usize) {
            *s = Some(SeqTracker::after(seq));
        }
    }

    /// The room accepted member `sender`'s message `n` as `seq`.
    pub fn on_published(&mut self, sender: u32, n: u64, seq: u64) {
        if self.accepted.insert(seq, (sender, n)).is_some() {
            self.mismatched += 1;
        }
    }

    /// Member `m` received `seq`, carrying member `sender`'s message `n` when it is one of
    /// this run's (`None`: someone else's), `from_ok` when its `from` names that sender.
    /// True for a first delivery of one of this run's messages.
    pub fn on_push(&mut self, m: u32, seq: u64, sender: Option<(u32, u64)>, from_ok: bool) -> bool {
        self.received += 1;
        let Some(t) = self.seqs.get_mut(m as usize).and_then(Option::as_mut) else {
            self.early += 1;
            return false;
        };
        let before = t.unique;
        t.record(seq);
        let Some((s, n)) = sender else {
            self.foreign += 1;
            return false;
        };
        if !from_ok || s >= self.members {
            self.mismatched += 1;
            return false;
        }
        if t.unique == before {
            return false; // a repeat; the tracker counts it
        }
        match self.receipts.entry(seq) {
            Entry::Vacant(e) => {
                e.insert(Receipt {
                    sender: s,
                    n,
                    members: 1,
                });
            }
            Entry::Occupied(mut e) => {
                let r = e.get_mut();
                if (r.sender, r.n) != (s, n) {
                    self.mismatched += 1;
                    return false;
                }
                r.members += 1;
            }
        }
        true
    }

    /// The room's figures: every accepted message against every member.
    pub fn finish(&self, topic: &str) -> RoomReport {
        let members = self.members as u64;
        let mut r = RoomReport {
            topic: topic.to_string(),
            members,
            joined: self.seqs.iter().filter(|s| s.is_some()).count() as u64,
            published: self.accepted.len() as u64,
            ..Default::default()
        };
        r.delivery.mismatched = self.mismatched;
        r.delivery.foreign = self.foreign;
        let mismatched = &mut r.delivery.mismatched;
        let d = &mut r.delivery.tally;
        d.expected = self.accepted.len() as u64 * members;
        d.received = self.received;
        d.unexpected = self.early;
        for t in self.seqs.iter().flatten() {
            d.duplicated += t.duplicated;
            d.out_of_order += t.out_of_order;
        }
        for (seq, &(s, n)) in &self.accepted {
            match self.receipts.get(seq) {
                Some(x) if (x.sender, x.n) == (s, n) => {
                    let got = (x.members as u64).min(members);
                    d.delivered += got;
                    d.missing += members - got;
                }
                Some(x) => {
                    // The room numbered another message than the one it delivered.
                    *mismatched += x.members as u64;
                    d.missing += members;
                }
                None => d.missing += members,
            }
        }
        for (seq, x) in &self.receipts {
            if !self.accepted.contains_key(seq) {
                d.unexpected += x.members as u64;
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A push to the book: (member, seq, sender and its id, whether `from` names it).
    type Push = (u32, u64, Option<(u32, u64)>, bool);

    /// A room of 3, everyone subscribed at `seq` 0, that accepted `published` (sender,
    /// id, seq) and then got `pushes` in this order: which were first deliveries, and the
    /// room's figures in report order (expected, delivered, received, missing,
    /// duplicated, out of order, unexpected, mismatched, foreign).
    fn play(published: &[(u32, u64, u64)], pushes: &[Push]) -> (Vec<bool>, RoomReport, [u64; 9]) {
        let mut b = RoomBook::new(3);
        for m in 0..3 {
            b.on_subscribed(m, 0);
        }
        for &(sender, n, seq) in published {
            b.on_published(sender, n, seq);
        }
        let firsts = pushes
            .iter()
            .map(|&(m, seq, sender, from_ok)| b.on_push(m, seq, sender, from_ok))
            .collect();
        let r = b.finish("room:0");
        let (t, d) = (&r.delivery.tally, &r.delivery);
        let figures = [
            t.expected,
            t.delivered,
            t.received,
            t.missing,
            t.duplicated,
            t.out_of_order,
            t.unexpected,
            d.mismatched,
            d.foreign,
        ];
        (firsts, r, figures)
    }

    #[test]
    fn a_complete_room_has_nothing_missing() {
        let pushes: Vec<Push> = (0..3)
            .flat_map(|m| [(m, 1, Some((0, 1)), true), (m, 2, Some((2, 1)), true)])
            .collect();
        let (firsts, r, figures) = play(&[(0, 1, 1), (2, 1, 2)], &pushes);
        assert!(firsts.iter().all(|&f| f));
        assert_eq!((r.joined, r.published), (3, 2));
        assert_eq!(figures, [6, 6, 6, 0, 0, 0, 0, 0, 0]);
        assert!(!r.failed(), "{r:?}");
    }

    #[test]
    fn missing_and_duplicated_are_counted_per_member() {
        // Member 0 gets both, member 1 only the first (twice), member 2 nothing.
        let (one, two) = (Some((1, 1)), Some((1, 2)));
        let pushes = [
            (0, 1, one, true),
            (0, 2, two, true),
            (1, 1, one, true),
            (1, 1, one, true),
        ];
        let (firsts, r, figures) = play(&[(1, 1, 1), (1, 2, 2)], &pushes);
        assert_eq!(firsts, [true, true, true, false]);
        // Missing 3: member 1 lacks seq 2, member 2 lacks both.
        assert_eq!(figures, [6, 3, 4, 3, 1, 0, 0, 0, 0]);
        assert!(r.failed());
    }

    #[test]
    fn order_identity_and_strays_are_checked() {
        let pushes = [
            // Member 0 sees 2 before 1: both count, one out of order.
            (0, 2, Some((0, 2)), true),
            (0, 1, Some((0, 1)), true),
            // Member 1 gets seq 1 carrying another message than the one numbered 1.
            (1, 1, Some((2, 9)), true),
            // Member 2: a wrong `from`, then a seq nobody was told of, then someone else's.
            (2, 2, Some((0, 2)), false),
            (2, 3, Some((1, 5)), true),
            (2, 4, None, false),
        ];
        let (firsts, _, figures) = play(&[(0, 1, 1), (0, 2, 2)], &pushes);
        assert_eq!(firsts, [true, true, false, false, true, false]);
        // Delivered 2, missing 4: seq 1 and seq 2 both lack members 1 and 2 (the wrong
        // `from` is not a delivery); one out of order, two mismatched, one unexpected,
        // one foreign.
        assert_eq!(figures, [6, 2, 6, 4, 0, 1, 1, 2, 1]);
    }

    #[test]
    fn deliveries_start_at_the_subscription_and_absent_members_miss_everything() {
        let mut b = RoomBook::new(2);
        b.on_subscribed(0, 40);
        b.on_subscribed(0, 99); // a second answer changes nothing
        assert!(
            !b.on_push(1, 41, Some((0, 1)), true),
            "member 1 never joined"
        );
        b.on_published(0, 1, 41);
        assert!(b.on_push(0, 41, Some((0, 1)), true));
        assert!(
            !b.on_push(0, 40, Some((0, 1)), true),
            "before its start: a repeat"
        );
        b.on_published(0, 2, 41); // the room numbered two messages 41
        let r = b.finish("room:3");
        let t = &r.delivery.tally;
        assert_eq!(r.joined, 1);
        assert_eq!(t.unexpected, 1, "the push before member 1's subscription");
        assert_eq!(t.duplicated, 1);
        assert_eq!(t.expected, 2);
        assert!(r.delivery.mismatched >= 1);
        assert!(t.missing >= 1);
    }
}
