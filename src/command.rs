//! What crosses threads: connections from the acceptor and commands from the push API to a
//! shard, and answers from a shard back to the push API.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crate::wire::Wire;
use crossbeam_channel::{Receiver, Sender};

use crate::auth::Identity;

/// An upgraded socket on its way from the acceptor to its shard.
pub struct Handoff {
    /// The socket, deregistered from the acceptor's poll.
    pub stream: mio::net::TcpStream,
    /// Who the token says it is.
    pub identity: Identity,
    /// `Sec-WebSocket-Accept` value for the 101 response.
    pub accept_key: String,
    /// Bytes the client sent after the request head.
    pub leftover: Vec<u8>,
    /// Client IP, released from admission control when the connection ends.
    pub ip: IpAddr,
    /// `since` and `epoch` from the upgrade query, when the client resumes.
    pub resume: Option<Resume>,
    /// The permessage-deflate offer accepted (with `compression` on).
    pub deflate: Option<crate::deflate::Agreed>,
    /// On the TLS listener: the session's keys, records still to send and the start of
    /// an incomplete record received.
    pub(crate) tls: Option<Box<crate::tls::Finished>>,
}

/// Where a reconnecting client left its user stream (docs/protocol.md 4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The last `seq` the client processed.
    pub since: u64,
    /// The epoch it had, exactly as `welcome` showed it.
    pub epoch: Box<str>,
}

/// A push as accepted by the API.
pub struct Push {
    /// The `data` JSON, verbatim.
    pub data: Box<str>,
    /// The upstream's id, echoed to clients.
    pub id: Option<Box<str>>,
    /// Milliseconds since the Unix epoch when accepted.
    pub ts_ms: u64,
    /// When accepted, for the push-to-socket latency histogram.
    pub accepted_at: Instant,
}

/// Identifies a waiting API request so a shard's answer finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The API connection's slab key.
    pub conn: usize,
    /// The request's serial number, so answers for a dead request are ignored.
    pub serial: u64,
}

/// Client publishes one shard may have waiting for the push API's answer; beyond, the
/// client gets `error` `overloaded` (so the channel to the API can never be full).
pub(crate) const PUBLISH_IN_FLIGHT: usize = 1024;

/// Which session a client publish came from, so its answer finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The shard holding the connection.
    pub shard: usize,
    /// The connection's slot key on that shard.
    pub conn: u32,
    /// Its session number there: a reused slot is another session.
    pub session: u32,
    /// The message's `ref` as JSON text, echoed in the answer.
    pub reference: Option<Box<str>>,
}

/// A client's `publish` (docs/protocol.md 6), from its shard to the push API, which numbers
/// it like any topic push and answers the origin.
pub struct ClientPublish {
    /// Where to answer.
    pub origin: Origin,
    /// The topic, validated and allowed by the shard.
    pub topic: Box<str>,
    /// The publisher's user id, shown to subscribers as `from`.
    pub from: Box<str>,
    /// `data` as JSON text.
    pub data: Box<str>,
}

/// How a client publish ended: its topic `seq`, or the `error` code and message.
pub(crate) type PublishOutcome = Result<u64, (&'static str, String)>;

/// Pushes from an ingress thread (Kafka) for the push API to route like its own: in
/// order, stopping at the first it cannot take (shard queues full, shutting down), so the
/// sender keeps its records' order by retrying from there.
pub struct IngressBatch {
    /// Names the batch to its sender.
    pub id: u64,
    /// The pushes, validated, in delivery order.
    pub pushes: Vec<crate::api::ParsedPush>,
}

/// How much of an [`IngressBatch`] the push API took.
#[derive(Debug)]
pub struct IngressAnswer {
    /// The batch.
    pub id: u64,
    /// Pushes taken from the front (queued on their shards, or duplicates of an `id`).
    pub accepted: usize,
    /// Why the next one was not, when not all were (the ingress sends the rest again).
    pub refused: Option<String>,
}

/// The push API's end of an ingress thread's link.
pub struct IngressLink {
    /// Batches from the ingress.
    pub batches: Receiver<IngressBatch>,
    /// Answers to it.
    pub answers: Sender<IngressAnswer>,
    /// Wakes the ingress thread after an answer.
    pub waker: Arc<mio::Waker>,
}

/// A command from the push API to one shard.
pub enum ShardCmd {
    /// A direct push to these users (all owned by this shard).
    Users {
        /// The push.
        push: Arc<Push>,
        /// Its target users on this shard.
        users: Vec<Box<str>>,
        /// Answer wanted (`?wait=1`).
        ticket: Option<Ticket>,
    },
    /// A pre-encoded frame for every member of a topic.
    Topic {
        /// Topic name.
        topic: Arc<str>,
        /// The encoded frame, shared by all shards.
        frame: Wire,
        /// Its compressed form, made by the first shard that needs it.
        compressed: Arc<crate::deflate::Compressed>,
        /// Its `seq` in the topic stream (docs/protocol.md 4.1).
        seq: u64,
        /// The topic stream's epoch.
        epoch: Arc<str>,
        /// When the API accepted it.
        accepted_at: Instant,
        /// Answer wanted.
        ticket: Option<Ticket>,
    },
    /// A pre-encoded frame for every connection.
    Broadcast {
        /// The encoded frame, shared by all shards.
        frame: Wire,
        /// Its compressed form, made by the first shard that needs it.
        compressed: Arc<crate::deflate::Compressed>,
        /// When the API accepted it.
        accepted_at: Instant,
        /// Answer wanted.
        ticket: Option<Ticket>,
    },
    /// Close every session of a user.
    Disconnect {
        /// The user.
        user: Box<str>,
        /// Close code to send.
        code: u16,
        /// Close reason.
        reason: Box<str>,
        /// Where to send the count.
        ticket: Ticket,
    },
    /// Count a topic's members on this shard, and list their users when `page` is given.
    TopicMembers {
        /// The topic.
        topic: Box<str>,
        /// Where to send the count.
        ticket: Ticket,
        /// Which users to list (room presence).
        page: Option<MemberPage>,
    },
    /// Count a user's sessions.
    Presence {
        /// The user.
        user: Box<str>,
        /// Where to send the count.
        ticket: Ticket,
    },
    /// The answer to a client's publish: `published` or `error` for its session.
    Published {
        /// The publishing session.
        origin: Origin,
        /// The topic it published to.
        topic: Box<str>,
        /// Its `seq`, or why not.
        outcome: PublishOutcome,
    },
}

impl ShardCmd {
    /// Bytes of push payload this command keeps alive while it waits in a shard queue
    /// (shared payloads count once per shard: an upper bound, kept exact by the shard
    /// releasing the same figure). Listed user ids count what they hold in memory, not
    /// their length: about 50 bytes for a short id.
    pub fn weight(&self) -> u64 {
        match self {
            ShardCmd::Users { push, users, .. } => {
                let slot = std::mem::size_of::<Box<str>>();
                let ids: usize = users
                    .iter()
                    .map(|u| crate::memory::heap_str_bytes(u.len(), slot))
                    .sum();
                (push.data.len() + push.id.as_ref().map_or(0, |i| i.len()) + ids) as u64
            }
            ShardCmd::Topic { frame, topic, .. } => (frame.len() + topic.len()) as u64,
            ShardCmd::Broadcast { frame, .. } => frame.len() as u64,
            ShardCmd::Disconnect { .. }
            | ShardCmd::Presence { .. }
            | ShardCmd::TopicMembers { .. }
            | ShardCmd::Published { .. } => 0,
        }
    }
}

/// Takes `weight` bytes from the backlog gauge unless that would pass `limit`; an empty
/// backlog takes any one push, so a push larger than the limit is slow, never refused
/// forever. One thread reserves on each gauge (the API on the command queues', the Redis
/// subscriber on its own), so load-then-add cannot overshoot.
pub(crate) fn reserve_backlog(gauge: &AtomicU64, weight: u64, limit: u64) -> bool {
    let held = gauge.load(Relaxed);
    if held > 0 && held.saturating_add(weight) > limit {
        return false;
    }
    gauge.fetch_add(weight, Relaxed);
    true
}

/// A page of a topic's member users: those after `after` in byte order, at most `limit`
/// (a shard answers one more, so the API knows whether another page follows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberPage {
    /// The last user of the previous page; `None` for the first page.
    pub after: Option<Box<str>>,
    /// Users on the page.
    pub limit: usize,
}

impl MemberPage {
    /// The page's users from `users` (any order, possibly repeated): sorted, distinct,
    /// after `after`, at most `limit + 1` of them.
    pub fn select<'a>(&self, users: impl Iterator<Item = &'a str>) -> Vec<Box<str>> {
        let mut v: Vec<&str> = match self.after.as_deref() {
            Some(a) => users.filter(|u| *u > a).collect(),
            None => users.collect(),
        };
        // O(n log n) in the room's size on this shard: an operator's query, not a hot path.
        v.sort_unstable();
        v.dedup();
        v.truncate(self.limit.saturating_add(1));
        v.into_iter().map(Box::from).collect()
    }
}

/// One session of a user, as `GET /v1/presence/<user>` shows it (docs/protocol.md 4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDetail {
    /// The session id `welcome` gave.
    pub session: String,
    /// The highest `seq` the session acked; 0 when none.
    pub acked: u64,
    /// Milliseconds since the session connected.
    pub connected_ms: u64,
}

/// A shard's answer to a ticketed command.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The request it answers.
    pub ticket: Ticket,
    /// Sessions delivered to, closed, or counted.
    pub sessions: u64,
    /// Distinct targeted users that were online.
    pub users: u64,
    /// For presence: each session; empty (and not allocated) otherwise.
    pub details: Vec<SessionDetail>,
    /// For a topic's member page: its users here (sorted, distinct, at most limit + 1).
    pub members: Vec<Box<str>>,
    /// Cluster mode: what Redis did with a push (`?wait=1`).
    pub published: Option<crate::broker::script::Published>,
    /// Cluster mode: what the presence thread read from Redis (presence and stats).
    pub cluster: Option<Box<crate::broker::ViewResult>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_page_is_sorted_distinct_after_and_one_longer_than_its_limit() {
        let users = ["d", "b", "a", "b", "e", "c"];
        let page = |after: Option<&str>, limit| MemberPage {
            after: after.map(Into::into),
            limit,
        };
        let names = |v: Vec<Box<str>>| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(page(None, 2).select(users.into_iter())),
            ["a", "b", "c"]
        );
        assert_eq!(
            names(page(Some("b"), 5).select(users.into_iter())),
            ["c", "d", "e"]
        );
        assert!(page(Some("e"), 5).select(users.into_iter()).is_empty());
    }

    #[test]
    fn backlog_is_bounded_by_bytes_but_takes_one_oversized_push() {
        let gauge = AtomicU64::new(0);
        assert!(
            reserve_backlog(&gauge, 600, 500),
            "an empty backlog takes anything"
        );
        assert!(!reserve_backlog(&gauge, 1, 500));
        gauge.fetch_sub(600, Relaxed);
        assert!(reserve_backlog(&gauge, 300, 500));
        assert!(reserve_backlog(&gauge, 200, 500));
        assert!(!reserve_backlog(&gauge, 1, 500));
        assert_eq!(gauge.load(Relaxed), 500);
    }

    #[test]
    fn weight_counts_payload_bytes() {
        let push = Arc::new(Push {
            data: "[1,2,3]".into(),
            id: Some("id1".into()),
            ts_ms: 0,
            accepted_at: Instant::now(),
        });
        let cmd = ShardCmd::Users {
            push,
            users: vec!["ab".into(), "c".into()],
            ticket: None,
        };
        // Each id: a 16-byte slot and a 32-byte chunk.
        assert_eq!(cmd.weight(), 7 + 3 + 2 * 48);
        let b = ShardCmd::Broadcast {
            frame: Wire::from_static(b"0123456789"),
            compressed: Arc::default(),
            accepted_at: Instant::now(),
            ticket: None,
        };
        assert_eq!(b.weight(), 10);
    }
}
