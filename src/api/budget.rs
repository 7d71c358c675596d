//! The process-wide bound on push API request buffers (`api_max_buffered_bytes`).
//!
//! Every connection's input buffer counts by its capacity (the memory it takes). A
//! connection reads at most one head (16 KiB) on its own; a body still to come is read
//! only once it is admitted, which reserves its whole length. A body that does not fit
//! waits, unread, until buffers drain: nothing is refused or lost, its client just waits
//! (TCP backpressure). One body is always admitted when none is, so the API never stalls.

use std::collections::VecDeque;

/// What all API input buffers may hold together, and who waits for room.
pub(super) struct InputBudget {
    limit: usize,
    /// Bytes counted now, over every connection (the `api_input_bytes` gauge).
    held: usize,
    /// Connections whose body is admitted and still arriving.
    admitted: usize,
    /// Connections whose body waits for room, first come first served.
    waiting: VecDeque<usize>,
}

impl InputBudget {
    /// An empty budget of `limit` bytes.
    pub(super) fn new(limit: usize) -> InputBudget {
        InputBudget {
            limit,
            held: 0,
            admitted: 0,
            waiting: VecDeque::new(),
        }
    }

    /// The bytes counted now.
    pub(super) fn held(&self) -> usize {
        self.held
    }

    /// Counts a buffer that takes `now` bytes, `charged` (its count so far) updated.
    pub(super) fn charge(&mut self, charged: &mut usize, now: usize) {
        // `charged` is part of `held`, so this never underflows.
        self.held = self.held - *charged + now;
        *charged = now;
    }

    /// Whether a body may be read so that its buffer, counted `charged` now, grows to
    /// `needed` bytes: it fits, or no other body is being read (so one always moves).
    /// Admitted bodies are counted until `release`.
    pub(super) fn admit(&mut self, charged: usize, needed: usize) -> bool {
        let after = self.held - charged + needed.max(charged);
        if after <= self.limit || self.admitted == 0 {
            self.admitted += 1;
            true
        } else {
            false
        }
    }

    /// An admitted body arrived whole (or its connection ended).
    pub(super) fn release(&mut self) {
        self.admitted = self.admitted.saturating_sub(1);
    }

    /// `key`'s body waits for room, last in line.
    pub(super) fn wait(&mut self, key: usize) {
        self.waiting.push_back(key);
    }

    /// The one that went to wait last goes first in line instead: the first in line,
    /// taken out to try again, found no room.
    pub(super) fn last_goes_first(&mut self) {
        if let Some(key) = self.waiting.pop_back() {
            self.waiting.push_front(key);
        }
    }

    /// The connection first in line, taken out of it.
    pub(super) fn next_waiting(&mut self) -> Option<usize> {
        self.waiting.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_admitted_while_they_fit_and_one_always_is() {
        let mut b = InputBudget::new(1000);
        let (mut x, mut y, mut z) = (0, 0, 0);
        b.charge(&mut x, 100);
        b.charge(&mut y, 100);
        b.charge(&mut z, 100);
        assert_eq!(b.held(), 300);
        // x's body takes it to 600 in all: fits.
        assert!(b.admit(x, 400));
        b.charge(&mut x, 400);
        // y's would make 1100: waits.
        assert!(!b.admit(y, 600));
        // Room again once x is done.
        b.release();
        b.charge(&mut x, 0);
        assert!(b.admit(y, 600));
        b.charge(&mut y, 600);
        assert_eq!(b.held(), 700);
        // Far too large for what is left, but nothing else is being read: admitted.
        b.release();
        assert!(b.admit(z, 5000));
        assert!(!b.admit(y, 2000), "a second one waits");
    }

    #[test]
    fn waiting_is_first_come_first_served() {
        let mut b = InputBudget::new(10);
        b.wait(3);
        b.wait(7);
        assert_eq!(b.next_waiting(), Some(3));
        b.wait(3);
        b.last_goes_first();
        assert_eq!(b.next_waiting(), Some(3));
        assert_eq!(b.next_waiting(), Some(7));
        assert_eq!(b.next_waiting(), None);
    }
}
