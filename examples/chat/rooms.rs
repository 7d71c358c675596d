//! Who is in which room, as the upstream learns it from Throng's lifecycle events.
//!
//! A member is a session (one connection), not a user: a user with the chat open on two
//! devices has two sessions, and stays online until the last one leaves. Every operation
//! is idempotent because events arrive at least once (docs/protocol.md 6: a batch is
//! retried after a timeout), so a repeated `subscribe` or `disconnect` changes nothing.

use std::collections::{BTreeMap, BTreeSet};

/// Room topic -> session -> user.
#[derive(Default)]
pub struct Rooms {
    rooms: BTreeMap<String, BTreeMap<String, String>>,
}

impl Rooms {
    /// `session` of `user` joined `topic`. True when the room's member list changed (not
    /// for a second session of a user who is already there, nor for a repeated event).
    pub fn join(&mut self, topic: &str, session: &str, user: &str) -> bool {
        let before = self.members(topic);
        self.rooms
            .entry(topic.to_string())
            .or_default()
            .insert(session.to_string(), user.to_string());
        self.members(topic) != before
    }

    /// `session` left `topic`. True when the room's member list changed.
    pub fn leave(&mut self, topic: &str, session: &str) -> bool {
        let before = self.members(topic);
        if let Some(sessions) = self.rooms.get_mut(topic) {
            sessions.remove(session);
            if sessions.is_empty() {
                self.rooms.remove(topic);
            }
        }
        self.members(topic) != before
    }

    /// `session` ended: it leaves every room it was in (Throng sends no `unsubscribe`
    /// for the subscriptions a `disconnect` ends). Returns the rooms whose member list
    /// changed.
    pub fn disconnect(&mut self, session: &str) -> Vec<String> {
        let held: Vec<String> = self
            .rooms
            .iter()
            .filter(|(_, sessions)| sessions.contains_key(session))
            .map(|(topic, _)| topic.clone())
            .collect();
        held.into_iter()
            .filter(|topic| self.leave(topic, session))
            .collect()
    }

    /// The distinct users in `topic`, sorted.
    pub fn members(&self, topic: &str) -> Vec<String> {
        let users: BTreeSet<&String> = self
            .rooms
            .get(topic)
            .map(|sessions| sessions.values().collect())
            .unwrap_or_default();
        users.into_iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_stays_until_the_last_session_leaves() {
        let mut r = Rooms::default();
        assert!(r.join("room:a", "s1", "alice"));
        assert!(
            !r.join("room:a", "s2", "alice"),
            "a second session is no change"
        );
        assert!(r.join("room:a", "s3", "bob"));
        assert_eq!(r.members("room:a"), ["alice", "bob"]);
        assert!(!r.leave("room:a", "s1"), "alice still has s2");
        assert_eq!(r.disconnect("s2"), ["room:a"]);
        assert_eq!(r.members("room:a"), ["bob"]);
    }

    #[test]
    fn repeated_events_change_nothing() {
        let mut r = Rooms::default();
        assert!(r.join("room:a", "s1", "alice"));
        assert!(!r.join("room:a", "s1", "alice"));
        assert!(r.disconnect("s1") == ["room:a"]);
        assert!(r.disconnect("s1").is_empty());
        assert!(!r.leave("room:a", "s1"));
        assert!(r.members("room:a").is_empty());
    }

    #[test]
    fn disconnect_leaves_every_room() {
        let mut r = Rooms::default();
        r.join("room:a", "s1", "alice");
        r.join("room:b", "s1", "alice");
        r.join("room:b", "s2", "bob");
        assert_eq!(r.disconnect("s1"), ["room:a", "room:b"]);
        assert_eq!(r.members("room:b"), ["bob"]);
    }
}
