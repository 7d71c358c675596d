//! The counters a chat process's event loops share with its driver.

use crate::client::Shared;
use std::sync::atomic::{AtomicU64, AtomicUsize};

/// Counters shared between the event loops and the driver: the connection counters every
/// scenario keeps, and the publishing ones.
pub struct ChatShared {
    /// Connections: attempted, opened, open now, failed, dropped; pushes received, the
    /// last welcome and push; the close phase and the loops that ended.
    pub conns: Shared,
    /// Microseconds after `conns.start` when publishing begins (0: not yet).
    pub go_us: AtomicU64,
    /// Members that joined their room, or that never will (failed, refused, dropped).
    pub settled: AtomicU64,
    /// Publishes sent.
    pub sent: AtomicU64,
    /// `published` answers.
    pub published: AtomicU64,
    /// `error` answers to publishes.
    pub refused: AtomicU64,
    /// First deliveries of this run's messages.
    pub delivered: AtomicU64,
    /// Microseconds after `conns.start` of the last publish sent.
    pub last_sent_us: AtomicU64,
    /// Event loops whose publishing schedule has ended.
    pub loops_sent: AtomicUsize,
}

impl ChatShared {
    /// Counters at zero, the clock started now.
    pub fn new() -> ChatShared {
        let z = || AtomicU64::new(0);
        ChatShared {
            conns: Shared::new(0),
            go_us: z(),
            settled: z(),
            sent: z(),
            published: z(),
            refused: z(),
            delivered: z(),
            last_sent_us: z(),
            loops_sent: AtomicUsize::new(0),
        }
    }
}
