//! The shard's topics: members by topic, so a topic push touches only its members.

use std::collections::{HashMap, HashSet};

use rustc_hash::FxBuildHasher;
use slab::Slab;

use super::compact::compact;

/// A topic with at least one member on this shard.
pub(super) struct TopicEntry {
    /// The name.
    pub name: Box<str>,
    /// Connection keys subscribed.
    pub members: HashSet<u32, FxBuildHasher>,
}

/// Topics by name.
#[derive(Default)]
pub(super) struct Topics {
    by_name: HashMap<Box<str>, u32, FxBuildHasher>,
    entries: Slab<TopicEntry>,
    /// Cluster mode: names of topics that lost their last member since `take_gone`.
    gone: Option<Vec<Box<str>>>,
    /// Heap bytes freed by shrinking member sets since the last `compact`, roughly.
    freed: usize,
}

impl Topics {
    /// Cluster mode: remember topics that empty, for `take_gone`.
    pub(super) fn track_gone(&mut self) {
        self.gone = Some(Vec::new());
    }

    /// Topics emptied since the last call (cluster mode; empty otherwise).
    pub(super) fn take_gone(&mut self) -> Vec<Box<str>> {
        self.gone.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Adds `conn` to `name`; returns the topic key and whether it was newly added.
    pub(super) fn join(&mut self, name: &str, conn: u32) -> (u32, bool) {
        let key = match self.by_name.get(name) {
            Some(&k) => k,
            None => {
                let k = self.entries.insert(TopicEntry {
                    name: name.into(),
                    members: HashSet::default(),
                }) as u32;
                self.by_name.insert(name.into(), k);
                k
            }
        };
        let added = self.entries[key as usize].members.insert(conn);
        (key, added)
    }

    /// Removes `conn` from topic `key`, forgetting the topic when it empties.
    pub(super) fn leave(&mut self, key: u32, conn: u32) {
        let Some(entry) = self.entries.get_mut(key as usize) else {
            return;
        };
        entry.members.remove(&conn);
        // A crowd leaving a big topic must not leave its peak-sized set behind.
        self.freed += compact(&mut entry.members);
        if entry.members.is_empty() {
            let entry = self.entries.remove(key as usize);
            self.by_name.remove(&entry.name);
            if let Some(gone) = self.gone.as_mut() {
                gone.push(entry.name);
            }
        }
    }

    /// Shrinks the name index once departed topics left it mostly empty; returns the heap
    /// bytes freed, roughly, with what member sets freed since the last call.
    pub(super) fn compact(&mut self) -> usize {
        compact(&mut self.by_name) + std::mem::take(&mut self.freed)
    }

    /// The key of `name`, when it has members here.
    pub(super) fn find(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// The name of topic `key`, while it has members.
    pub(super) fn name(&self, key: u32) -> Option<&str> {
        self.entries.get(key as usize).map(|e| &*e.name)
    }

    /// Whether `conn` is a member of topic `key`.
    pub(super) fn has_member(&self, key: u32, conn: u32) -> bool {
        self.entries
            .get(key as usize)
            .is_some_and(|e| e.members.contains(&conn))
    }

    /// The members of topic `key`.
    pub(super) fn members(&self, key: u32) -> impl Iterator<Item = u32> + '_ {
        self.entries
            .get(key as usize)
            .into_iter()
            .flat_map(|e| e.members.iter().copied())
    }

    /// Every topic with members here, by name.
    pub(super) fn all(&self) -> impl Iterator<Item = (&str, &HashSet<u32, FxBuildHasher>)> + '_ {
        self.entries.iter().map(|(_, e)| (&*e.name, &e.members))
    }

    /// How many connections are members of topic `key`.
    pub(super) fn count(&self, key: u32) -> usize {
        self.entries
            .get(key as usize)
            .map_or(0, |e| e.members.len())
    }

    /// Topics with members.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_leave() {
        let mut t = Topics::default();
        let (k, added) = t.join("a", 1);
        assert!(added);
        assert_eq!(t.join("a", 1), (k, false));
        t.join("a", 2);
        let mut m: Vec<u32> = t.members(k).collect();
        m.sort_unstable();
        assert_eq!(m, vec![1, 2]);
        t.leave(k, 1);
        t.leave(k, 2);
        assert!(t.find("a").is_none());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_crowd_leaving_a_topic_leaves_no_peak_sized_set() {
        let mut t = Topics::default();
        let (k, _) = t.join("room", 0);
        for c in 1..10_000 {
            t.join("room", c);
        }
        let peak = t.entries[k as usize].members.capacity();
        for c in 100..10_000 {
            t.leave(k, c);
        }
        let now = t.entries[k as usize].members.capacity();
        assert!(now < peak / 16, "{peak} -> {now}");
        assert_eq!(t.members(k).count(), 100);
        assert!(t.compact() > 0);
        assert_eq!(t.compact(), 0);
    }
}
