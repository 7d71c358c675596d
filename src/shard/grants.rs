//! Topic grants from tokens' `topics` claims, by connection. Most tokens of one
//! application carry the same few patterns, so each distinct set is kept once per shard
//! and shared: a connection with grants pays one map entry, not its own copy of every
//! pattern (227 bytes per idle connection for a three-pattern claim before).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rustc_hash::FxBuildHasher;

use crate::topic::TopicPattern;

/// The grants of this shard's connections that have any.
#[derive(Default)]
pub(super) struct Grants {
    by_conn: HashMap<u32, Arc<[TopicPattern]>, FxBuildHasher>,
    /// Every distinct set in use, for sharing.
    sets: HashSet<Arc<[TopicPattern]>, FxBuildHasher>,
}

impl Grants {
    /// Gives connection `key` these grants (replacing any; none removes them).
    pub(super) fn set(&mut self, key: u32, patterns: Vec<TopicPattern>) {
        self.remove(key);
        if patterns.is_empty() {
            return;
        }
        let set = match self.sets.get(&patterns[..]) {
            Some(s) => Arc::clone(s),
            None => {
                let s: Arc<[TopicPattern]> = patterns.into();
                self.sets.insert(Arc::clone(&s));
                s
            }
        };
        self.by_conn.insert(key, set);
    }

    /// Forgets connection `key`'s grants; a set nobody holds any more goes too.
    pub(super) fn remove(&mut self, key: u32) {
        let Some(set) = self.by_conn.remove(&key) else {
            return;
        };
        // Held by `sets` and by `set` alone: the last connection with it is gone.
        if Arc::strong_count(&set) == 2 {
            self.sets.remove(&*set);
        }
    }

    /// Connection `key`'s patterns, when its token had any.
    pub(super) fn get(&self, key: u32) -> Option<&[TopicPattern]> {
        self.by_conn.get(&key).map(|s| &**s)
    }

    /// Distinct sets held (for tests).
    #[cfg(test)]
    fn distinct(&self) -> usize {
        self.sets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(list: &[&str]) -> Vec<TopicPattern> {
        list.iter()
            .map(|p| TopicPattern::parse(p).unwrap())
            .collect()
    }

    #[test]
    fn equal_sets_are_shared_and_freed_with_their_last_holder() {
        let mut g = Grants::default();
        g.set(1, pats(&["a:*", "news"]));
        g.set(2, pats(&["a:*", "news"]));
        g.set(3, pats(&["b"]));
        assert_eq!(g.distinct(), 2);
        let (one, two) = (g.get(1).unwrap(), g.get(2).unwrap());
        assert!(std::ptr::eq(one, two), "one copy for equal claims");
        g.remove(1);
        assert_eq!(g.distinct(), 2, "still held by 2");
        g.remove(2);
        assert_eq!(g.distinct(), 1);
        // A refresh replaces the set; an empty claim removes the grants.
        g.set(3, pats(&["c:*"]));
        assert_eq!(g.get(3).unwrap(), &pats(&["c:*"])[..]);
        assert_eq!(g.distinct(), 1);
        g.set(3, Vec::new());
        assert!(g.get(3).is_none());
        assert_eq!(g.distinct(), 0);
        g.remove(42);
    }
}
