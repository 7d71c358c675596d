//! A warning that repeats while a fault lasts is logged at its first occurrence, then at
//! most once per interval with how many were held back, so an outage cannot flood the log.

use std::time::{Duration, Instant};

/// Gates one repeated warning.
#[derive(Debug)]
pub(crate) struct LogGate {
    every: Duration,
    /// When the last warning was let through; `None` while there is no fault.
    last: Option<Instant>,
    /// Occurrences held back since then.
    held: u64,
}

impl LogGate {
    /// A gate letting one warning through per `every`.
    pub(crate) const fn new(every: Duration) -> LogGate {
        LogGate {
            every,
            last: None,
            held: 0,
        }
    }

    /// The fault happened again at `now`: `Some(n)` when this occurrence is to be logged
    /// (`n`: those held back since the last one logged), `None` when it is held back.
    pub(crate) fn fail(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }

    /// The fault is over: true when it had been logged, so that its end deserves a line.
    pub(crate) fn recover(&mut self) -> bool {
        self.held = 0;
        self.last.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_then_once_per_interval_with_the_count_held_back() {
        let mut g = LogGate::new(Duration::from_secs(60));
        let t = Instant::now();
        assert_eq!(g.fail(t), Some(0));
        assert_eq!(g.fail(t + Duration::from_secs(1)), None);
        assert_eq!(g.fail(t + Duration::from_secs(59)), None);
        assert_eq!(g.fail(t + Duration::from_secs(60)), Some(2));
        assert!(g.recover(), "the fault had been logged");
        assert!(!g.recover(), "nothing to say twice");
        assert_eq!(g.fail(t + Duration::from_secs(61)), Some(0), "a new fault");
    }
}
