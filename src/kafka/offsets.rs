//! Which offset of a partition may be committed. A partition's records are done (taken
//! by the shards, or written to the DLQ) front first, in order, so the commit is the offset
//! after the last done record. Offsets are not contiguous (transaction markers, aborted
//! records and compaction leave gaps), so nothing may wait for an offset in between: it
//! may never come. The state is two numbers whatever the gaps.
//!
//! The offset goes to librdkafka's offset store, which commits it (on its timer, when
//! partitions are revoked and at close), counts it committed only once the broker took it,
//! and commits it again after a failure.

/// One partition's progress.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// The next offset to commit: every record before it is done.
    next: Option<i64>,
    /// The offset last handed to the offset store (`None` until then).
    stored: Option<i64>,
}

impl Progress {
    /// Record `offset` is done, and with it every record before it.
    pub(crate) fn done(&mut self, offset: i64) {
        let n = offset.saturating_add(1);
        if self.next.is_none_or(|next| n > next) {
            self.next = Some(n);
        }
    }

    /// The offset to store now (the next record to read after a restart), when it moved
    /// since it was last stored.
    pub(crate) fn to_store(&self) -> Option<i64> {
        self.next.filter(|&n| self.stored != Some(n))
    }

    /// `offset` was handed to the offset store.
    pub(crate) fn stored(&mut self, offset: i64) {
        self.stored = Some(offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_between_offsets_do_not_hold_the_commit_back() {
        // Offsets 0, 2, 4, 6, 8: what a consumer sees of a topic written in transactions
        // (each commit marker takes an offset) or compacted.
        let mut p = Progress::default();
        assert_eq!(p.to_store(), None, "nothing done yet");
        for offset in [0, 2, 4, 6, 8] {
            p.done(offset);
        }
        assert_eq!(p.to_store(), Some(9), "everything read is done");
        p.stored(9);
        assert_eq!(p.to_store(), None, "nothing new");
        p.done(20);
        assert_eq!(p.to_store(), Some(21));
    }

    #[test]
    fn an_earlier_record_does_not_move_it_back() {
        let mut p = Progress::default();
        p.done(5);
        p.done(3);
        assert_eq!(p.to_store(), Some(6));
    }
}
