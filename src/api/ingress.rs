//! Pushes from an ingress thread (Kafka, docs/protocol.md 7) on the push API thread, the
//! one sender of shard commands and owner of topic numbering and push-id dedup: each batch
//! is routed in order like pushes from HTTP, and the answer says how many were taken, so
//! the ingress commits only what the shards hold and retries the rest in order.

use std::sync::atomic::Ordering::Relaxed;

use super::routes::QueueError;
use super::Api;
use crate::command::{IngressAnswer, IngressBatch};

impl Api {
    /// Routes every batch an ingress sent, and answers each.
    pub(super) fn take_ingress(&mut self) {
        let Some(link) = self.ingress.take() else {
            return;
        };
        let mut answered = false;
        while let Ok(batch) = link.batches.try_recv() {
            let answer = self.route_ingress(batch);
            // The ingress outlives the API only at shutdown, when answers do not matter.
            let _ = link.answers.send(answer);
            answered = true;
        }
        if answered {
            let _ = link.waker.wake();
        }
        self.ingress = Some(link);
    }

    fn route_ingress(&mut self, batch: IngressBatch) -> IngressAnswer {
        let mut accepted = 0;
        let mut refused = None;
        for push in batch.pushes {
            match self.enqueue(push, None) {
                Ok(_) => {
                    accepted += 1;
                    self.metrics.pushes_accepted.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    refused = Some(
                        match e {
                            QueueError::Overloaded => "overloaded: shard queues are full",
                            QueueError::Draining => "draining: the server is shutting down",
                            QueueError::BrokerUnavailable => {
                                "broker_unavailable: cannot reach Redis"
                            }
                        }
                        .to_string(),
                    );
                    break;
                }
            }
        }
        IngressAnswer {
            id: batch.id,
            accepted,
            refused,
        }
    }
}
