//! Topic grants from tokens' `topics` and `publish` claims. Most tokens of one application carry the
//! same few patterns, so each distinct set is kept once per shard with a count of the
//! connections holding it, and a connection names its set by a `u32` in its slot (padding
//! there before): grants cost an idle connection nothing of its own (a three-pattern
//! claim cost 227 bytes per connection when each kept a copy, 54 with a shared copy
//! named from a side table).

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use slab::Slab;

use crate::topic::TopicPattern;

/// A connection's grants: 0 for none, else a set's slab key plus one.
pub(super) type GrantId = u32;

/// What a token's claims grant: topics to subscribe to and topics to publish to.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub(super) struct Claimed {
    /// The `topics` claim.
    pub subscribe: Box<[TopicPattern]>,
    /// The `publish` claim.
    pub publish: Box<[TopicPattern]>,
}

impl Claimed {
    fn is_empty(&self) -> bool {
        self.subscribe.is_empty() && self.publish.is_empty()
    }
}

/// One distinct set of patterns and how many connections hold it.
struct GrantSet {
    patterns: Claimed,
    holders: u32,
}

/// The distinct grant sets of this shard's connections.
#[derive(Default)]
pub(super) struct Grants {
    sets: Slab<GrantSet>,
    /// Set keys by the hash of their patterns (the patterns live once, in `sets`).
    by_content: HashTable<u32>,
}

fn content_hash(patterns: &Claimed) -> u64 {
    use std::hash::BuildHasher;
    FxBuildHasher.hash_one(patterns)
}

impl Grants {
    /// The id of the set equal to `subscribe` and `publish` (made if new), counted as held
    /// once more; 0 when there are none.
    pub(super) fn intern(
        &mut self,
        subscribe: Vec<TopicPattern>,
        publish: Vec<TopicPattern>,
    ) -> GrantId {
        let patterns = Claimed {
            subscribe: subscribe.into_boxed_slice(),
            publish: publish.into_boxed_slice(),
        };
        if patterns.is_empty() {
            return 0;
        }
        let hash = content_hash(&patterns);
        let sets = &self.sets;
        let found = self
            .by_content
            .find(hash, |&k| {
                sets.get(k as usize).is_some_and(|s| s.patterns == patterns)
            })
            .copied();
        let key = match found {
            Some(k) => k,
            None => {
                let k = self.sets.insert(GrantSet {
                    patterns,
                    holders: 0,
                }) as u32;
                let sets = &self.sets;
                self.by_content.insert_unique(hash, k, |&k| {
                    sets.get(k as usize)
                        .map_or(0, |s| content_hash(&s.patterns))
                });
                k
            }
        };
        if let Some(s) = self.sets.get_mut(key as usize) {
            s.holders += 1;
        }
        key + 1
    }

    /// One holder of `id` fewer; the set goes with its last holder.
    pub(super) fn release(&mut self, id: GrantId) {
        let Some(key) = id.checked_sub(1) else {
            return;
        };
        let Some(s) = self.sets.get_mut(key as usize) else {
            return;
        };
        s.holders -= 1;
        if s.holders == 0 {
            let gone = self.sets.remove(key as usize);
            if let Ok(e) = self
                .by_content
                .find_entry(content_hash(&gone.patterns), |&k| k == key)
            {
                e.remove();
            }
        }
    }

    /// The subscribe patterns of `id` (none for 0).
    pub(super) fn get(&self, id: GrantId) -> Option<&[TopicPattern]> {
        let key = id.checked_sub(1)?;
        self.sets.get(key as usize).map(|s| &*s.patterns.subscribe)
    }

    /// The publish patterns of `id` (none for 0).
    pub(super) fn publish(&self, id: GrantId) -> Option<&[TopicPattern]> {
        let key = id.checked_sub(1)?;
        self.sets.get(key as usize).map(|s| &*s.patterns.publish)
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
        let a = g.intern(pats(&["a:*", "news"]), Vec::new());
        let b = g.intern(pats(&["a:*", "news"]), Vec::new());
        let c = g.intern(pats(&["b"]), Vec::new());
        assert_eq!(a, b, "one set for equal claims");
        assert_ne!(a, c);
        assert_eq!(g.distinct(), 2);
        assert_eq!(g.get(a).unwrap(), &pats(&["a:*", "news"])[..]);
        g.release(a);
        assert_eq!(g.distinct(), 2, "still held once");
        g.release(b);
        assert_eq!(g.distinct(), 1);
        assert!(g.get(a).is_none());
        // The freed slot is reused for a new set, found by its content.
        let d = g.intern(pats(&["c:*"]), Vec::new());
        assert_eq!(g.get(d).unwrap(), &pats(&["c:*"])[..]);
        assert_eq!(g.intern(pats(&["c:*"]), Vec::new()), d);
        assert_eq!(g.intern(Vec::new(), Vec::new()), 0);
        assert!(g.get(0).is_none());
        g.release(0);
        g.release(c);
        g.release(d);
        g.release(d);
        assert_eq!(g.distinct(), 0);
    }

    #[test]
    fn publish_patterns_are_part_of_the_set() {
        let mut g = Grants::default();
        let sub_only = g.intern(pats(&["a:*"]), Vec::new());
        let both = g.intern(pats(&["a:*"]), pats(&["a:*"]));
        let pub_only = g.intern(Vec::new(), pats(&["a:1"]));
        assert_ne!(sub_only, both, "same topics, different publish: two sets");
        assert_ne!(pub_only, 0, "a publish claim alone is a grant");
        assert_eq!(g.publish(sub_only).unwrap(), &[][..]);
        assert_eq!(g.publish(both).unwrap(), &pats(&["a:*"])[..]);
        assert_eq!(g.get(pub_only).unwrap(), &[][..]);
        assert_eq!(g.publish(pub_only).unwrap(), &pats(&["a:1"])[..]);
        assert_eq!(g.intern(pats(&["a:*"]), pats(&["a:*"])), both);
    }
}
