//! Cluster mode: events appended to the Redis stream `throng:events`, one entry each with
//! the field `event`, trimmed to about `events_maxlen` entries.

use super::{DeliverError, Event, Target};

/// The stream every node appends its events to.
pub(super) const EVENTS_STREAM: &str = "throng:events";

/// Appends batches to `throng:events` in one pipelined round trip each.
pub(crate) struct StreamTarget {
    redis: std::sync::Arc<crate::broker::RedisConnector>,
    conn: Option<redis::Connection>,
    maxlen: u64,
}

impl StreamTarget {
    /// A target on the cluster's Redis.
    pub(crate) fn new(
        redis: std::sync::Arc<crate::broker::RedisConnector>,
        maxlen: u64,
    ) -> StreamTarget {
        StreamTarget {
            redis,
            conn: None,
            maxlen,
        }
    }
}

impl Target for StreamTarget {
    // Redis's own timeouts bound a try (a few seconds), `until` or not.
    fn deliver(
        &mut self,
        batch: &[Event],
        _until: Option<std::time::Instant>,
    ) -> Result<(), DeliverError> {
        // Redis's errors are its state's (unreachable, out of memory, a replica), never the
        // batch's: retried for as long as they last.
        let retry = |e: redis::RedisError| DeliverError::Unreachable(format!("Redis: {e}"));
        if self.conn.is_none() {
            self.conn = Some(self.redis.connect().map_err(retry)?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(DeliverError::Unreachable("no Redis connection".into()));
        };
        // All or none (MULTI/EXEC), so a retry after an error repeats nothing; a link lost
        // after EXEC ran can still repeat a batch: delivery is at least once.
        let mut pipe = redis::pipe();
        pipe.atomic();
        for e in batch {
            pipe.cmd("XADD")
                .arg(EVENTS_STREAM)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.maxlen)
                .arg("*")
                .arg("event")
                .arg(e.as_str())
                .ignore();
        }
        // A silent Redis costs one timeout, not one per event of the batch.
        match pipe.query::<()>(&mut crate::broker::Prompt(conn)) {
            Ok(()) => Ok(()),
            Err(e) => {
                // The link may be broken: reconnect on the next try.
                self.conn = None;
                Err(retry(e))
            }
        }
    }

    fn describe(&self) -> String {
        format!("Redis stream {EVENTS_STREAM}")
    }
}
