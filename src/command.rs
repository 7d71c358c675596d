//! What crosses threads: connections from the acceptor and commands from the push API to a
//! shard, and answers from a shard back to the push API.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

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
        frame: Bytes,
        /// When the API accepted it.
        accepted_at: Instant,
        /// Answer wanted.
        ticket: Option<Ticket>,
    },
    /// A pre-encoded frame for every connection.
    Broadcast {
        /// The encoded frame, shared by all shards.
        frame: Bytes,
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
    /// Count a user's sessions.
    Presence {
        /// The user.
        user: Box<str>,
        /// Where to send the count.
        ticket: Ticket,
    },
}

/// A shard's answer to a ticketed command.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    /// The request it answers.
    pub ticket: Ticket,
    /// Sessions delivered to, closed, or counted.
    pub sessions: u64,
    /// Distinct targeted users that were online.
    pub users: u64,
}
