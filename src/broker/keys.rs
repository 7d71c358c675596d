//! Redis key and channel names (docs/protocol.md 5). Every key of one stream shares a hash
//! tag (`{u:alice}`), so one push's script touches one slot and a Redis Cluster can
//! hold them later without a change of names.

/// The stream upstreams add push commands to.
pub const PUSH_STREAM: &str = "throng:push";
/// Where invalid stream entries go, with the error.
pub const DLQ_STREAM: &str = "throng:push:dlq";
/// The consumer group every node reads `PUSH_STREAM` with.
pub const GROUP: &str = "throng";
/// Hash of node id to the last time (Unix ms) the node said it was alive.
pub const NODES: &str = "throng:nodes";
/// Hash of node id to the random run id of the process that last beat under it: a node
/// that finds another run there since its last beat shares its id with a live node.
pub const NODE_RUNS: &str = "throng:nodes:run";
/// Prefix of the per-node presence hashes (user -> sessions on that node).
pub const PRESENCE_PREFIX: &str = "throng:presence:";
/// Hash of node id to its totals, `"<connections> <users online> <shards>"`, written with
/// its heartbeat.
pub const NODE_TOTALS: &str = "throng:nodes:totals";

/// A node shard's topic hash: topic -> sessions of that shard subscribed to it. One per
/// shard, so each holds what one shard reports, with nothing to add up on the way in.
pub fn topic_sessions_key(node: &str, shard: usize) -> String {
    format!("throng:tsessions:{node}:{shard}")
}

/// A node's topic members: a sorted set of `"<topic>\n<user>"`, all of score 0, so one
/// topic's users are a lexicographic range (topic names hold no `\n`).
pub fn topic_members_key(node: &str) -> String {
    format!("throng:tmembers:{node}")
}

/// The member of `topic_members_key` for `user` in `topic`.
pub fn topic_member(topic: &str, user: &str) -> String {
    format!("{topic}\n{user}")
}

/// A push stream: a user's direct pushes or a topic's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamRef<'a> {
    /// A user's stream.
    User(&'a str),
    /// A topic's stream.
    Topic(&'a str),
}

impl<'a> StreamRef<'a> {
    fn parts(self) -> (&'static str, &'a str) {
        match self {
            StreamRef::User(u) => ("u", u),
            StreamRef::Topic(t) => ("t", t),
        }
    }

    /// The user or topic.
    pub fn name(self) -> &'a str {
        self.parts().1
    }

    /// The hash with the stream's `seq` and `epoch`.
    pub fn meta_key(self) -> String {
        let (k, name) = self.parts();
        format!("throng:{{{k}:{name}}}")
    }

    /// The list of the stream's recent pushes, oldest first.
    pub fn history_key(self) -> String {
        let (k, name) = self.parts();
        format!("throng:{{{k}:{name}}}:h")
    }

    /// The key that remembers push `id` on this stream for the dedup window.
    pub fn dedup_key(self, id: &str) -> String {
        let (k, name) = self.parts();
        format!("throng:{{{k}:{name}}}:id:{id}")
    }
}

/// The pub/sub channels of the cluster on one Redis database. Keys live in their database
/// but channels are shared by every database of a Redis, so channel names carry the
/// number: `throng:b`, `throng:u:<user>` and `throng:t:<topic>` on db 0 (the names of
/// every earlier version, so nodes of both talk during a rolling upgrade), and
/// `throng:<db>:b`, `throng:<db>:u:<user>`, `throng:<db>:t:<topic>` on any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channels {
    /// `throng:` or `throng:<db>:`.
    prefix: Box<str>,
    broadcast: Box<str>,
}

impl Channels {
    /// The channels of the cluster on database `db`.
    pub fn for_db(db: i64) -> Channels {
        let prefix: Box<str> = if db == 0 {
            "throng:".into()
        } else {
            format!("throng:{db}:").into()
        };
        let broadcast = format!("{prefix}b").into();
        Channels { prefix, broadcast }
    }

    /// The channel of broadcast pushes.
    pub fn broadcast(&self) -> &str {
        &self.broadcast
    }

    /// The channel a stream's pushes are published on.
    pub fn stream(&self, s: StreamRef<'_>) -> String {
        let (k, name) = s.parts();
        format!("{}{k}:{name}", self.prefix)
    }

    /// A channel name back to its stream (`None` for the broadcast channel or a stranger).
    pub fn stream_of<'a>(&self, channel: &'a str) -> Option<StreamRef<'a>> {
        let rest = channel.strip_prefix(&*self.prefix)?;
        if let Some(u) = rest.strip_prefix("u:") {
            Some(StreamRef::User(u))
        } else {
            rest.strip_prefix("t:").map(StreamRef::Topic)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_a_hash_tag_and_channels_round_trip() {
        let s = StreamRef::User("al:ice");
        assert_eq!(s.meta_key(), "throng:{u:al:ice}");
        assert_eq!(s.history_key(), "throng:{u:al:ice}:h");
        assert_eq!(s.dedup_key("p1"), "throng:{u:al:ice}:id:p1");
        let t = StreamRef::Topic("room.1");
        for db in [0, 1, 15] {
            let c = Channels::for_db(db);
            assert_eq!(c.stream_of(&c.stream(s)), Some(s));
            assert_eq!(c.stream_of(&c.stream(t)), Some(t));
            assert_eq!(c.stream_of(c.broadcast()), None);
        }
    }

    #[test]
    fn db_0_keeps_the_old_channel_names_and_other_dbs_are_apart() {
        let (zero, two) = (Channels::for_db(0), Channels::for_db(2));
        assert_eq!(zero.broadcast(), "throng:b");
        assert_eq!(zero.stream(StreamRef::User("al")), "throng:u:al");
        assert_eq!(zero.stream(StreamRef::Topic("r")), "throng:t:r");
        assert_eq!(two.broadcast(), "throng:2:b");
        assert_eq!(two.stream(StreamRef::User("al")), "throng:2:u:al");
        // Neither reads the other's channels as its own.
        assert_eq!(zero.stream_of(&two.stream(StreamRef::User("al"))), None);
        assert_eq!(two.stream_of(&zero.stream(StreamRef::User("al"))), None);
        assert_ne!(
            Channels::for_db(1).broadcast(),
            Channels::for_db(12).broadcast()
        );
    }
}
