//! What the three event loops (acceptor, shards, push API) share: the reserved tokens, the
//! waker, one poll step that treats an interrupted wait as an empty turn, and the clock
//! that counts time in wheel ticks.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};

/// The token of a loop's waker (other threads wake it after sending).
pub(crate) const WAKER: Token = Token(usize::MAX);
/// The token of a loop's listening socket.
pub(crate) const LISTENER: Token = Token(usize::MAX - 1);
/// Milliseconds per timing-wheel tick.
pub const TICK_MS: u64 = 10;

/// A loop's waker, made before its thread starts so senders and shutdown can reach it.
pub(crate) fn waker(poll: &Poll) -> io::Result<Arc<Waker>> {
    Ok(Arc::new(Waker::new(poll.registry(), WAKER)?))
}

/// Waits up to `timeout` for events. A wait interrupted by a signal (EINTR) is an empty
/// turn, not an error; any other error is the loop's end.
pub(crate) fn poll_step(poll: &mut Poll, events: &mut Events, timeout: Duration) -> io::Result<()> {
    match poll.poll(events, Some(timeout)) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            events.clear();
            Ok(())
        }
        other => other,
    }
}

/// Whole ticks in `d`, rounded up: a deadline never fires early.
pub fn ticks_ceil(d: Duration) -> u64 {
    duration_ms(d).div_ceil(TICK_MS)
}

/// Whole ticks in `d`, rounded down.
pub fn ticks_floor(d: Duration) -> u64 {
    duration_ms(d) / TICK_MS
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Where a loop's time comes from: real time since the loop started, or, in tests, a time
/// that moves only when told to.
#[derive(Debug, Clone)]
pub struct Clock {
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    Real(Instant),
    Manual(Arc<AtomicU64>),
}

/// The handle that moves a manual [`Clock`].
#[derive(Debug, Clone)]
pub struct ManualTime(Arc<AtomicU64>);

impl ManualTime {
    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(duration_ms(d), Relaxed);
    }
}

impl Clock {
    /// Real time, starting now.
    pub fn real() -> Clock {
        Clock {
            source: Source::Real(Instant::now()),
        }
    }

    /// A clock at 0 that moves only through the returned handle.
    pub fn manual() -> (Clock, ManualTime) {
        let ms = Arc::new(AtomicU64::new(0));
        (
            Clock {
                source: Source::Manual(Arc::clone(&ms)),
            },
            ManualTime(ms),
        )
    }

    /// Milliseconds since the clock started.
    pub fn now_ms(&self) -> u64 {
        match &self.source {
            Source::Real(start) => duration_ms(start.elapsed()),
            Source::Manual(ms) => ms.load(Relaxed),
        }
    }

    /// The current tick.
    pub fn tick(&self) -> u64 {
        self.now_ms() / TICK_MS
    }

    /// How long until `tick` begins (zero if it has).
    pub fn until_tick(&self, tick: u64) -> Duration {
        Duration::from_millis(tick.saturating_mul(TICK_MS).saturating_sub(self.now_ms()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_as_named() {
        assert_eq!(ticks_ceil(Duration::from_millis(25)), 3);
        assert_eq!(ticks_floor(Duration::from_millis(25)), 2);
        assert_eq!(ticks_ceil(Duration::ZERO), 0);
        assert_eq!(ticks_ceil(Duration::MAX), u64::MAX.div_ceil(TICK_MS));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let (clock, time) = Clock::manual();
        assert_eq!(clock.tick(), 0);
        time.advance(Duration::from_millis(35));
        assert_eq!(clock.now_ms(), 35);
        assert_eq!(clock.tick(), 3);
        assert_eq!(clock.until_tick(5), Duration::from_millis(15));
        assert_eq!(clock.until_tick(1), Duration::ZERO);
    }

    #[test]
    fn poll_step_waits_and_wakes() {
        let mut poll = Poll::new().unwrap();
        let w = waker(&poll).unwrap();
        let mut events = Events::with_capacity(4);
        w.wake().unwrap();
        poll_step(&mut poll, &mut events, Duration::from_secs(1)).unwrap();
        assert!(events.iter().any(|e| e.token() == WAKER));
    }
}
