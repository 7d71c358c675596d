//! What goes from a session to the upstream (docs/protocol.md 6): the client's `send`
//! messages, and lifecycle events when `lifecycle_events` is on, each queued on the
//! events thread without waiting (`crate::events`).

use std::sync::atomic::Ordering::Relaxed;

use crate::events::{Detail, QueueError};
use crate::messages::{self, Refused};

use super::Shard;

impl Shard {
    /// The session's user and session id, for an event.
    fn names(&self, key: u32) -> Option<(String, String)> {
        let c = self.conns.get(key)?;
        let user = self.users.get(c.user)?.id.to_string();
        Some((user, self.session_id(c.stamp.session)))
    }

    /// Queues lifecycle event `kind` for session `key` when lifecycle events are on. When
    /// the queue is full the event is skipped and counted: a session's own life goes on.
    pub(super) fn lifecycle(&mut self, key: u32, kind: &str, detail: Detail<'_>) {
        if self.shared.events.as_ref().is_some_and(|e| e.lifecycle()) {
            self.emit_lifecycle(key, kind, detail);
        }
    }

    // Out of line: the connect and close paths only pay for the check above.
    #[inline(never)]
    fn emit_lifecycle(&mut self, key: u32, kind: &str, detail: Detail<'_>) {
        let Some((user, session)) = self.names(key) else {
            return;
        };
        if let Some(events) = &self.shared.events {
            if events.emit(kind, &user, &session, detail).is_err() {
                self.shared
                    .metrics
                    .events
                    .lifecycle_skipped
                    .fetch_add(1, Relaxed);
            }
        }
    }

    /// A client's `send`: queued for the upstream and answered `sent`, or refused (no
    /// upstream, too large, queue full), never dropped in silence.
    pub(super) fn send_upstream(
        &mut self,
        key: u32,
        data: &str,
        reference: Option<&str>,
    ) -> Result<(), Refused> {
        let max = self.shared.config.max_client_data_bytes;
        if data.len() > max {
            return Err(Refused {
                code: "too_large",
                message: format!(
                    "data is {} bytes; a send carries at most {max} (max_client_data_bytes)",
                    data.len()
                ),
            });
        }
        let Some(events) = &self.shared.events else {
            return Err(Refused {
                code: "unavailable",
                message: "this server has no upstream for send (events_url is not set)".into(),
            });
        };
        let Some((user, session)) = self.names(key) else {
            return Ok(());
        };
        match events.emit("send", &user, &session, Detail::Data(data)) {
            Ok(()) => {
                self.send_frame(key, messages::sent_frame(reference));
                Ok(())
            }
            Err(QueueError::Full) => {
                self.shared.metrics.events.refused.fetch_add(1, Relaxed);
                Err(Refused {
                    code: "overloaded",
                    message: "the upstream is not taking messages fast enough; retry shortly"
                        .into(),
                })
            }
            Err(QueueError::Stopped) => Err(Refused {
                code: "draining",
                message: "the server is shutting down".into(),
            }),
        }
    }
}
