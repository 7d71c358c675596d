//! Clients' publishes (docs/protocol.md 6) on the push API thread, the one owner of topic
//! numbering: each is numbered and fanned out like a topic push from the API (in cluster
//! mode, through Redis), and its outcome goes back to the publisher's shard as a
//! `ShardCmd::Published`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;

use rustc_hash::FxBuildHasher;

use super::push::{ParsedPush, Target};
use super::routes::QueueError;
use super::Api;
use crate::broker::script::{Outcome, PublishError};
use crate::command::{ClientPublish, Origin, PublishOutcome, Reply, ShardCmd, Ticket};
use crate::link::SendError;

/// The `Ticket::conn` of a client publish waiting for Redis (no API connection has it).
const CLIENT_TICKET: usize = usize::MAX;

/// Answers waiting for room in their shard's command queue, oldest first per shard, and
/// the client publishes waiting for Redis. Both are bounded by the shards' in-flight
/// limit (`PUBLISH_IN_FLIGHT` each).
pub(super) struct Answers {
    waiting: Vec<VecDeque<ShardCmd>>,
    /// Cluster mode: publishes sent to the publisher thread, by ticket serial.
    at_redis: HashMap<u64, (Origin, Box<str>), FxBuildHasher>,
}

impl Answers {
    /// No answers yet, for `shards` shards.
    pub(super) fn new(shards: usize) -> Answers {
        Answers {
            waiting: (0..shards).map(|_| VecDeque::new()).collect(),
            at_redis: HashMap::default(),
        }
    }
}

fn refusal(e: &QueueError) -> (&'static str, String) {
    match e {
        QueueError::Overloaded => (
            "overloaded",
            "the server's queues are full; retry shortly".into(),
        ),
        QueueError::Draining => ("draining", "the server is shutting down".into()),
        QueueError::BrokerUnavailable => (
            "overloaded",
            "the cluster's broker (Redis) cannot be reached; retry shortly".into(),
        ),
    }
}

impl Api {
    /// Takes the shards' client publishes and sends out what answers can go.
    pub(super) fn take_publishes(&mut self) {
        while let Ok(p) = self.publishes.try_recv() {
            self.client_publish(p);
        }
        self.flush_answers();
    }

    fn client_publish(&mut self, p: ClientPublish) {
        let topic = p.topic.clone();
        let push = ParsedPush {
            target: Target::Topic(p.topic.into()),
            data: p.data.into(),
            id: None,
            from: Some(p.from.into()),
        };
        if let Some(b) = &self.broker {
            // Cluster mode: Redis numbers it; the publisher's reply comes back ticketed.
            if !b.accepting() {
                let outcome = Err(refusal(&QueueError::BrokerUnavailable));
                return self.answer(p.origin, topic, outcome);
            }
            self.serial += 1;
            let ticket = Ticket {
                conn: CLIENT_TICKET,
                serial: self.serial,
            };
            let cmd = crate::broker::PublishCmd {
                push,
                ticket: Some(ticket),
            };
            // Bounded in count where they come from (1,024 per shard, each within
            // max_client_data_bytes): counted, never refused for bytes.
            match b.try_publish(cmd, &self.metrics.broker.publish_queued_bytes, None) {
                Ok(()) => {
                    self.publish_answers
                        .at_redis
                        .insert(ticket.serial, (p.origin, topic));
                }
                Err(crate::link::SendError::Full) => {
                    self.metrics.queue_full_refusals.fetch_add(1, Relaxed);
                    self.answer(p.origin, topic, Err(refusal(&QueueError::Overloaded)));
                }
                Err(crate::link::SendError::Stopped) => {
                    self.answer(p.origin, topic, Err(refusal(&QueueError::Draining)));
                }
            }
            return;
        }
        let outcome = match self.send_push(push, None) {
            Ok((_, Some(seq))) => Ok(seq),
            Ok((_, None)) => Err(("overloaded", "the publish was not numbered".into())),
            Err(e) => Err(refusal(&e)),
        };
        self.answer(p.origin, topic, outcome);
    }

    /// A reply from the broker for a client publish becomes its answer (`None`); any other
    /// reply is given back.
    pub(super) fn client_publish_reply(&mut self, r: Reply) -> Option<Reply> {
        if r.ticket.conn != CLIENT_TICKET {
            return Some(r);
        }
        let (origin, topic) = self.publish_answers.at_redis.remove(&r.ticket.serial)?;
        let outcome = match r.published {
            Some(Ok(outcomes)) => outcomes
                .iter()
                .find_map(|o| match o {
                    Outcome::Numbered { seq, .. } => Some(*seq),
                    _ => None,
                })
                .ok_or(("overloaded", "Redis did not number the publish".into())),
            Some(Err(PublishError::NotPublished(e))) => {
                Err(("overloaded", format!("the publish was not published: {e}")))
            }
            Some(Err(PublishError::Unanswered(e))) => Err((
                "overloaded",
                format!("the publish may or may not have gone out: {e}"),
            )),
            None => Err(("overloaded", "the publish was not published".into())),
        };
        self.answer(origin, topic, outcome);
        self.flush_answers();
        None
    }

    /// Queues the answer for the publisher's shard, behind any that wait already.
    fn answer(&mut self, origin: Origin, topic: Box<str>, outcome: PublishOutcome) {
        let Some(q) = self.publish_answers.waiting.get_mut(origin.shard) else {
            return;
        };
        q.push_back(ShardCmd::Published {
            origin,
            topic,
            outcome,
        });
    }

    /// Sends waiting answers in order while their shards have room (a full command queue
    /// holds a shard's answers back until it drains; its in-flight limit bounds them).
    fn flush_answers(&mut self) {
        for (shard, q) in self.publish_answers.waiting.iter_mut().enumerate() {
            while let Some(cmd) = q.pop_front() {
                match self.shards.send(shard, cmd) {
                    Ok(()) => {}
                    Err((SendError::Full, cmd)) => {
                        q.push_front(cmd);
                        break;
                    }
                    // The shard has stopped: nobody is left to answer.
                    Err((SendError::Stopped, _)) => q.clear(),
                }
            }
        }
    }
}
