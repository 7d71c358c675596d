//! Which offsets of a partition may be committed: records are done (delivered to the
//! shards, or put in the DLQ) in any order, but a commit says "everything before this
//! offset is done", so it may only move past a contiguous run of done records.

use std::collections::BTreeSet;

/// One partition's progress.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// The next offset to commit: every record before it is done.
    next: Option<i64>,
    /// Done records at or after `next` that wait for an earlier one.
    ahead: BTreeSet<i64>,
    /// The offset last committed (`None` until the first commit).
    committed: Option<i64>,
}

impl Progress {
    /// A partition whose first record to be read is `first` (the last commit).
    #[cfg(test)]
    pub(crate) fn starting_at(first: i64) -> Progress {
        Progress {
            next: Some(first),
            ahead: BTreeSet::new(),
            committed: None,
        }
    }

    /// Record `offset` is done.
    pub(crate) fn done(&mut self, offset: i64) {
        let next = *self.next.get_or_insert(offset);
        if offset < next {
            return;
        }
        if offset == next {
            let mut n = next + 1;
            while self.ahead.remove(&n) {
                n += 1;
            }
            self.next = Some(n);
        } else {
            self.ahead.insert(offset);
        }
    }

    /// The offset to commit now (the next record to read after a restart), when it moved
    /// since the last commit.
    pub(crate) fn to_commit(&self) -> Option<i64> {
        self.next.filter(|&n| self.committed != Some(n))
    }

    /// `offset` was committed.
    pub(crate) fn committed(&mut self, offset: i64) {
        self.committed = Some(offset);
    }

    /// The next offset to commit, whether or not it was committed already.
    pub(crate) fn position(&self) -> Option<i64> {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_past_a_contiguous_run() {
        let mut p = Progress::starting_at(10);
        assert_eq!(p.to_commit(), Some(10), "nothing done: the start itself");
        p.done(12);
        p.done(11);
        assert_eq!(p.to_commit(), Some(10), "10 is not done: 11 and 12 wait");
        p.done(10);
        assert_eq!(p.to_commit(), Some(13));
        p.committed(13);
        assert_eq!(p.to_commit(), None, "nothing new");
        p.done(9);
        p.done(13);
        assert_eq!(p.to_commit(), Some(14));
    }

    #[test]
    fn a_partition_of_unknown_start_begins_at_its_first_done_record() {
        let mut p = Progress::default();
        assert_eq!(p.to_commit(), None);
        p.done(5);
        assert_eq!(p.position(), Some(6));
    }
}
