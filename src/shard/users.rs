//! The shard's users: each user's sessions (oldest first) and direct-push sequence.

use std::collections::HashMap;

use rustc_hash::FxBuildHasher;
use slab::Slab;

/// One user with at least one session on this shard.
pub(super) struct UserEntry {
    /// The user id.
    pub id: Box<str>,
    /// Connection keys, oldest first.
    pub sessions: Vec<u32>,
    /// Last direct-push sequence number.
    pub seq: u64,
    /// Identifies this life of `seq`: a user who comes back after going offline starts anew.
    pub epoch: u64,
    /// Scratch stamp for counting distinct users in one fan-out.
    pub mark: u64,
}

/// Users by id.
#[derive(Default)]
pub(super) struct Users {
    by_id: HashMap<Box<str>, u32, FxBuildHasher>,
    entries: Slab<UserEntry>,
}

impl Users {
    /// Adds session `conn` for `id`, creating the entry if needed; returns the user key.
    pub(super) fn attach(&mut self, id: &str, conn: u32) -> u32 {
        if let Some(&key) = self.by_id.get(id) {
            self.entries[key as usize].sessions.push(conn);
            return key;
        }
        let key = self.entries.insert(UserEntry {
            id: id.into(),
            sessions: vec![conn],
            seq: 0,
            epoch: rand::random(),
            mark: 0,
        }) as u32;
        self.by_id.insert(id.into(), key);
        key
    }

    /// Removes session `conn`; forgets the user when it was the last one.
    pub(super) fn detach(&mut self, user: u32, conn: u32) {
        let Some(entry) = self.entries.get_mut(user as usize) else {
            return;
        };
        if let Some(pos) = entry.sessions.iter().position(|&c| c == conn) {
            // Keep age order: the oldest is the one evicted for 4009.
            entry.sessions.remove(pos);
        }
        if entry.sessions.is_empty() {
            let entry = self.entries.remove(user as usize);
            self.by_id.remove(&entry.id);
        }
    }

    /// The user key for `id`, when online here.
    pub(super) fn find(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// The entry for a user key.
    pub(super) fn get(&self, key: u32) -> Option<&UserEntry> {
        self.entries.get(key as usize)
    }

    /// The entry for a user key, mutably.
    pub(super) fn get_mut(&mut self, key: u32) -> Option<&mut UserEntry> {
        self.entries.get_mut(key as usize)
    }

    /// Users online.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_detach_keeps_order_and_forgets() {
        let mut u = Users::default();
        let k = u.attach("a", 1);
        assert_eq!(u.attach("a", 2), k);
        u.attach("a", 3);
        u.get_mut(k).unwrap().seq = 5;
        u.detach(k, 2);
        assert_eq!(u.get(k).unwrap().sessions, vec![1, 3]);
        assert_eq!(u.get(k).unwrap().seq, 5);
        u.detach(k, 1);
        u.detach(k, 3);
        assert!(u.find("a").is_none());
        assert_eq!(u.len(), 0);
    }
}
