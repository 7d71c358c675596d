//! Pushes from an ingress thread (Kafka, docs/protocol.md 7) on the push API thread, the
//! one sender of shard commands and owner of topic numbering and push-id dedup: each batch
//! is routed in order like pushes from HTTP, and the answer says how many were taken, so
//! the ingress commits only what the shards hold (in cluster mode: what Redis published)
//! and retries the rest in order.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

use rustc_hash::FxBuildHasher;

use super::routes::QueueError;
use super::Api;
use crate::broker::script::PublishError;
use crate::command::{IngressAnswer, IngressBatch, Reply, Ticket};

/// The `Ticket::conn` of an ingress push waiting for Redis (no API connection has it).
const INGRESS_TICKET: usize = usize::MAX - 1;

/// One push's outcome at Redis, once known.
type Outcome = Option<Result<(), String>>;

/// Cluster mode: batches whose pushes the publisher has not answered yet.
#[derive(Default)]
pub(super) struct AtRedis {
    /// By batch id: each push's outcome, and why the batch stopped early.
    batches: HashMap<u64, (Vec<Outcome>, Option<String>), FxBuildHasher>,
    /// By ticket serial: the batch and the push's place in it.
    tickets: HashMap<u64, (u64, usize), FxBuildHasher>,
}

fn refusal(e: &QueueError) -> String {
    match e {
        QueueError::Overloaded => {
            "overloaded: the queues to the shards (cluster mode: to Redis) are full"
        }
        QueueError::Draining => "draining: the server is shutting down",
        QueueError::BrokerUnavailable => "broker_unavailable: cannot reach Redis",
    }
    .to_string()
}

impl Api {
    /// Routes every batch an ingress sent, and answers each (in cluster mode once Redis
    /// answered every push of it).
    pub(super) fn take_ingress(&mut self) {
        let Some(link) = self.ingress.as_ref() else {
            return;
        };
        let batches: Vec<IngressBatch> = link.batches.try_iter().collect();
        for batch in batches {
            if let Some(answer) = self.route_ingress(batch) {
                self.answer_ingress(answer);
            }
        }
    }

    fn answer_ingress(&mut self, answer: IngressAnswer) {
        if let Some(link) = &self.ingress {
            // The ingress outlives the API only at shutdown, when answers do not matter.
            let _ = link.answers.send(answer);
            let _ = link.waker.wake();
        }
    }

    /// Routes a batch; its answer now, or `None` when it waits for Redis.
    fn route_ingress(&mut self, batch: IngressBatch) -> Option<IngressAnswer> {
        if self.broker.is_some() {
            return self.publish_ingress(batch);
        }
        let mut accepted = 0;
        let mut refused = None;
        for push in batch.pushes {
            match self.enqueue(push, None) {
                Ok(_) => {
                    accepted += 1;
                    self.metrics.pushes_accepted.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    refused = Some(refusal(&e));
                    break;
                }
            }
        }
        Some(IngressAnswer {
            id: batch.id,
            accepted,
            refused,
        })
    }

    /// Cluster mode: hands the pushes to the publisher with tickets, up to the first it
    /// cannot take; the batch is answered when Redis has answered each.
    fn publish_ingress(&mut self, batch: IngressBatch) -> Option<IngressAnswer> {
        let mut sent = 0;
        let mut refused = None;
        for push in batch.pushes {
            let serial = self.next_serial();
            let ticket = Ticket {
                conn: INGRESS_TICKET,
                serial,
            };
            match self.enqueue(push, Some(ticket)) {
                Ok(_) => {
                    self.ingress_at_redis
                        .tickets
                        .insert(serial, (batch.id, sent));
                    sent += 1;
                }
                Err(e) => {
                    refused = Some(refusal(&e));
                    break;
                }
            }
        }
        if sent == 0 {
            return Some(IngressAnswer {
                id: batch.id,
                accepted: 0,
                refused,
            });
        }
        self.ingress_at_redis
            .batches
            .insert(batch.id, (vec![None; sent], refused));
        None
    }

    /// A publisher reply for an ingress push is taken here (`None`); any other reply is
    /// given back. The batch is answered once every push of it has its reply: taken are
    /// the pushes before the first Redis refused.
    pub(super) fn ingress_reply(&mut self, r: Reply) -> Option<Reply> {
        if r.ticket.conn != INGRESS_TICKET {
            return Some(r);
        }
        let (id, index) = self.ingress_at_redis.tickets.remove(&r.ticket.serial)?;
        let outcome = match r.published {
            Some(Ok(_)) => Ok(()),
            Some(Err(PublishError::NotPublished(e))) => {
                Err(format!("broker_unavailable: Redis did not publish it: {e}"))
            }
            Some(Err(PublishError::Unanswered(e))) => Err(format!(
                "broker_unavailable: Redis may or may not have published it: {e}"
            )),
            None => Err("broker_unavailable: no answer from the publisher".into()),
        };
        let (outcomes, _) = self.ingress_at_redis.batches.get_mut(&id)?;
        if let Some(slot) = outcomes.get_mut(index) {
            *slot = Some(outcome);
        }
        if outcomes.iter().any(Option::is_none) {
            return None;
        }
        let (outcomes, stopped) = self.ingress_at_redis.batches.remove(&id)?;
        let accepted = outcomes
            .iter()
            .take_while(|o| matches!(o, Some(Ok(()))))
            .count();
        self.metrics
            .pushes_accepted
            .fetch_add(accepted as u64, Relaxed);
        let refused = match outcomes.get(accepted) {
            Some(Some(Err(e))) => Some(e.clone()),
            _ => stopped,
        };
        self.answer_ingress(IngressAnswer {
            id,
            accepted,
            refused,
        });
        None
    }
}
