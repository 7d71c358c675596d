//! One assigned partition: the records read and not yet done, in order, and where its
//! front records are: at the push API (one batch at a time), at the DLQ, or waiting to go
//! again. Records are done front first, so its offsets are committed in order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::dlq::{DlqError, KEEP_VALUE};
use super::offsets::Progress;

/// Records read and not yet taken, per partition, above which it is paused.
pub(super) const PENDING_HIGH: usize = 10_000;
/// Bytes of records read and not yet taken, per partition, above which it is paused
/// (10,000 records of up to 1 MiB would otherwise be 10 GiB).
pub(super) const PENDING_BYTES_HIGH: usize = 64 << 20;
/// First wait after a failed DLQ write; doubled up to `DLQ_BACKOFF_MAX`.
pub(super) const DLQ_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between tries of a failing DLQ write.
pub(super) const DLQ_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A record read and not yet taken.
pub(super) struct Record {
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub value: Vec<u8>,
}

impl Record {
    /// Bytes of its key and value.
    pub(super) fn size(&self) -> usize {
        self.value.len() + self.key.as_ref().map_or(0, Vec::len)
    }
}

/// Where a DLQ write is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriteState {
    /// Sent; its report has not come.
    InFlight,
    /// The broker has the copy.
    Done,
    /// It failed: it goes again.
    Failed,
}

/// The DLQ write of one of the partition's front records.
#[derive(Debug)]
pub(super) struct DlqWrite {
    /// Names its report.
    pub id: u64,
    /// Where it is.
    pub state: WriteState,
    /// How much of the record the next try keeps (an index of `dlq::KEEP_VALUE`).
    pub cut: usize,
}

/// One assigned partition.
pub(super) struct Partition {
    /// Records read and not yet done, in offset order.
    pub pending: VecDeque<Record>,
    /// Bytes of `pending`'s keys and values.
    pub pending_bytes: usize,
    /// What may be committed.
    pub progress: Progress,
    /// The batch at the push API: its id and how many records it holds.
    pub in_flight: Option<(u64, usize)>,
    /// The DLQ writes of the first `at_dlq.len()` pending records, in order.
    pub at_dlq: VecDeque<DlqWrite>,
    /// After a refusal or a failed DLQ write: nothing goes before then.
    pub retry_at: Option<Instant>,
    /// A DLQ write failed and waits to go again: nothing behind it can go meanwhile.
    pub stalled: bool,
    /// The wait after the next failed DLQ write.
    pub dlq_backoff: Duration,
    /// Paused in the consumer.
    pub paused: bool,
}

impl Default for Partition {
    fn default() -> Partition {
        Partition {
            pending: VecDeque::new(),
            pending_bytes: 0,
            progress: Progress::default(),
            in_flight: None,
            at_dlq: VecDeque::new(),
            retry_at: None,
            stalled: false,
            dlq_backoff: DLQ_BACKOFF_MIN,
            paused: false,
        }
    }
}

impl Partition {
    /// Appends a record read.
    pub(super) fn push(&mut self, r: Record) {
        self.pending_bytes += r.size();
        self.pending.push_back(r);
    }

    /// Takes the oldest pending record.
    pub(super) fn pop_front(&mut self) -> Option<Record> {
        let r = self.pending.pop_front()?;
        self.pending_bytes -= r.size();
        Some(r)
    }

    /// The `n` front records were taken (by the API): they are done.
    pub(super) fn taken(&mut self, n: usize) {
        for _ in 0..n {
            if let Some(r) = self.pop_front() {
                self.progress.done(r.offset);
            }
        }
    }

    /// Ends the DLQ writes the broker confirmed at the front: their records are done.
    /// Returns how many.
    pub(super) fn finish_dlq(&mut self) -> usize {
        let mut n = 0;
        while self
            .at_dlq
            .front()
            .is_some_and(|w| w.state == WriteState::Done)
        {
            self.at_dlq.pop_front();
            if let Some(r) = self.pop_front() {
                self.progress.done(r.offset);
            }
            n += 1;
        }
        if self.at_dlq.is_empty() && self.stalled {
            self.stalled = false;
            self.dlq_backoff = DLQ_BACKOFF_MIN;
        }
        n
    }

    /// A DLQ write failed at `now`: the partition waits, longer after each failure.
    pub(super) fn dlq_failed(&mut self, now: Instant) {
        self.stalled = true;
        self.retry_at = Some(now + self.dlq_backoff);
        self.dlq_backoff = (self.dlq_backoff * 2).min(DLQ_BACKOFF_MAX);
    }

    /// Applies the report of DLQ write `id` at `now`. A copy too large for the DLQ topic
    /// goes again at once, cut further; any other failure makes the partition wait, and is
    /// returned (to be counted and logged). A report for a write no longer here (its
    /// partition was revoked, and maybe assigned again) changes nothing.
    pub(super) fn dlq_report(
        &mut self,
        id: u64,
        result: Result<(), DlqError>,
        now: Instant,
    ) -> Option<DlqError> {
        let w = self.at_dlq.iter_mut().find(|w| w.id == id)?;
        match result {
            Ok(()) => {
                w.state = WriteState::Done;
                None
            }
            Err(DlqError::TooLarge { .. }) if w.cut + 1 < KEEP_VALUE.len() => {
                w.cut += 1;
                w.state = WriteState::Failed;
                None
            }
            Err(error) => {
                w.state = WriteState::Failed;
                self.dlq_failed(now);
                Some(error)
            }
        }
    }

    /// Whether a failed DLQ write is to be sent again (every write sent has its report).
    pub(super) fn dlq_retry_due(&self) -> bool {
        self.at_dlq.iter().any(|w| w.state == WriteState::Failed)
            && self.at_dlq.iter().all(|w| w.state != WriteState::InFlight)
    }
}

/// Whether partition `p` should be paused in the consumer: while it waits for a failed DLQ
/// write to go again (nothing behind it can go), while it holds too many records or bytes
/// read and not yet taken, and while all partitions together hold `total_bytes` at or above
/// the process's bound `max_total` (which bounds one partition too when it is the smaller).
/// A short wait after a refusal does not pause: each resume makes librdkafka fetch again
/// what it had already fetched.
pub(super) fn should_pause(p: &Partition, total_bytes: usize, max_total: usize) -> bool {
    p.stalled
        || p.pending.len() >= PENDING_HIGH
        || p.pending_bytes >= PENDING_BYTES_HIGH.min(max_total)
        || total_bytes >= max_total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(records: usize, bytes: usize) -> Partition {
        let mut p = Partition::default();
        for i in 0..records {
            p.pending.push_back(Record {
                offset: i as i64,
                key: None,
                value: Vec::new(),
            });
        }
        p.pending_bytes = bytes;
        p
    }

    #[test]
    fn a_partition_pauses_for_its_own_backlog_or_for_the_process_s() {
        const TOTAL: usize = crate::config::KAFKA_MAX_BUFFERED_BYTES;
        let pause = |p: &Partition, total| should_pause(p, total, TOTAL);
        let mut small = holding(10, 1 << 10);
        assert!(!pause(&small, 1 << 10));
        small.retry_at = Some(Instant::now() + Duration::from_secs(1));
        assert!(!pause(&small, 1 << 10), "a retry after a refusal is short");
        small.stalled = true;
        assert!(pause(&small, 1 << 10), "waiting for the DLQ");
        small.stalled = false;
        assert!(pause(&holding(PENDING_HIGH, 0), 0));
        assert!(pause(&holding(1, PENDING_BYTES_HIGH), PENDING_BYTES_HIGH));
        // Three partitions just under their own bound hold more than the process's:
        // every one pauses, even one that holds little.
        let total = 3 * (PENDING_BYTES_HIGH - 1);
        assert!(total >= TOTAL);
        assert!(pause(&holding(1, PENDING_BYTES_HIGH - 1), total));
        assert!(pause(&small, total));
        assert!(!pause(&small, TOTAL - 1));
        // A process bound below a partition's own bounds that one partition too.
        let tight = 4 << 20;
        assert!(should_pause(&holding(1, tight), tight, tight));
        assert!(!should_pause(&holding(1, tight - 1), tight - 1, tight));
    }

    #[test]
    fn dlq_writes_finish_front_first_and_a_failure_holds_the_ones_behind() {
        let mut p = holding(3, 0);
        for id in 0..3 {
            p.at_dlq.push_back(DlqWrite {
                id,
                state: WriteState::InFlight,
                cut: 0,
            });
        }
        // The second and third are confirmed first: nothing is done before the first.
        p.at_dlq[1].state = WriteState::Done;
        p.at_dlq[2].state = WriteState::Done;
        assert_eq!(p.finish_dlq(), 0);
        assert!(!p.dlq_retry_due());
        p.at_dlq[0].state = WriteState::Failed;
        p.dlq_failed(Instant::now());
        assert!(p.stalled);
        assert!(p.dlq_retry_due(), "only the failed one goes again");
        assert_eq!(p.finish_dlq(), 0);
        p.at_dlq[0].state = WriteState::Done;
        assert_eq!(p.finish_dlq(), 3);
        assert_eq!(p.progress.to_store(), Some(3));
        assert!(!p.stalled, "the DLQ takes records again");
        assert_eq!(p.dlq_backoff, DLQ_BACKOFF_MIN);
    }

    fn writing(ids: std::ops::Range<u64>) -> Partition {
        let mut p = holding(ids.clone().count(), 0);
        for id in ids {
            p.at_dlq.push_back(DlqWrite {
                id,
                state: WriteState::InFlight,
                cut: 0,
            });
        }
        p
    }

    #[test]
    fn a_copy_too_large_goes_again_cut_further_then_the_partition_waits() {
        let now = Instant::now();
        let too_large = || {
            Err(DlqError::TooLarge {
                topic: "t.dlq".into(),
                bytes: 1 << 20,
                reason: "Broker: Message size too large".into(),
            })
        };
        let mut p = writing(0..1);
        assert_eq!(p.dlq_report(0, too_large(), now), None, "not a failure yet");
        assert_eq!(
            (p.at_dlq[0].cut, p.at_dlq[0].state),
            (1, WriteState::Failed)
        );
        assert!(!p.stalled, "goes again at once");
        assert!(p.dlq_retry_due());
        p.at_dlq[0].state = WriteState::InFlight;
        assert!(
            p.dlq_report(0, too_large(), now).is_some(),
            "the smallest copy too"
        );
        assert!(p.stalled);
        assert_eq!(p.at_dlq[0].cut, 1, "no smaller copy");
    }

    #[test]
    fn a_failed_dlq_write_stalls_its_partition_and_late_reports_are_ignored() {
        let now = Instant::now();
        let mut p = writing(5..7);
        let missing = Err(DlqError::Missing {
            topic: "t.dlq".into(),
        });
        assert!(p.dlq_report(6, missing, now).is_some());
        assert!(p.stalled);
        assert_eq!(p.retry_at, Some(now + DLQ_BACKOFF_MIN));
        assert!(!p.dlq_retry_due(), "write 5 has no report yet");
        assert_eq!(
            p.dlq_report(99, Ok(()), now),
            None,
            "a write of an earlier assignment"
        );
        assert_eq!(p.dlq_report(5, Ok(()), now), None);
        assert_eq!(p.finish_dlq(), 1, "5 is done; 6 waits");
        assert!(p.dlq_retry_due());
    }

    #[test]
    fn dlq_failures_back_off_up_to_a_bound() {
        let mut p = Partition::default();
        let now = Instant::now();
        for _ in 0..20 {
            p.dlq_failed(now);
        }
        assert_eq!(p.dlq_backoff, DLQ_BACKOFF_MAX);
        assert_eq!(p.retry_at, Some(now + DLQ_BACKOFF_MAX));
    }
}
