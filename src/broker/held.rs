//! The stream entries a node left pending after an attempt reached some of their users (a
//! `users` push Redis refused partway, or one dead-lettered whose DLQ copy waits), with
//! those users: a retry leaves them out, so each user gets the push once.
//!
//! Bounded by entries and by names together, since one entry may name up to 10,000
//! users. Past either bound an attempt's users are not remembered (a new entry not at
//! all, one already held keeps what it had): a retry goes to them again, so they may get
//! the push twice (logged once until the memory shrinks by half).

use std::collections::{HashMap, HashSet};

use super::script::Outcome;

/// Most entries remembered at once.
const MAX_ENTRIES: usize = 65_536;
/// Most user names remembered at once, all entries together (tens of MB with short
/// user ids, up to about 180 MB with 128-byte ones).
const MAX_NAMES: usize = 1_000_000;

/// Entry id to the users reached, with the bounds' bookkeeping.
#[derive(Default)]
pub(super) struct Held {
    entries: HashMap<String, HashSet<String>>,
    /// Names in all entries.
    names: usize,
    /// A bound was reached and logged (once until under half of both again).
    full_logged: bool,
}

impl Held {
    /// Whether nothing is remembered (the usual case: no lookup needed).
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The users earlier attempts at entry `id` reached.
    pub(super) fn reached(&self, id: &str) -> Option<&HashSet<String>> {
        self.entries.get(id)
    }

    /// The entries remembered.
    pub(super) fn ids(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    /// Adds the streams an attempt at entry `id` `reached`, if any, within the bounds.
    pub(super) fn remember(&mut self, id: &str, reached: Vec<Outcome>) {
        let names: Vec<String> = reached
            .iter()
            .filter_map(Outcome::stream)
            .map(str::to_string)
            .collect();
        if names.is_empty() {
            return;
        }
        let new_entry = !self.entries.contains_key(id);
        if self.names + names.len() > MAX_NAMES || (new_entry && self.entries.len() >= MAX_ENTRIES)
        {
            if !std::mem::replace(&mut self.full_logged, true) {
                tracing::warn!(
                    entries = self.entries.len(),
                    users = self.names,
                    "too many users pushes refused partway wait at once; more are tried \
                     again in full, so their first users may get them twice"
                );
            }
            return;
        }
        let done = self.entries.entry(id.to_string()).or_default();
        let before = done.len();
        done.extend(names);
        self.names += done.len() - before;
    }

    /// Forgets entry `id` (published or dead-lettered at last).
    pub(super) fn forget(&mut self, id: &str) {
        if let Some(done) = self.entries.remove(id) {
            self.names -= done.len();
            self.rearm_log();
        }
    }

    /// Keeps only the entries in `seen` (still pending in this node's name).
    pub(super) fn keep_only(&mut self, seen: &HashSet<String>) {
        let names = &mut self.names;
        self.entries.retain(|id, done| {
            let keep = seen.contains(id);
            if !keep {
                *names -= done.len();
            }
            keep
        });
        self.rearm_log();
    }

    fn rearm_log(&mut self) {
        if self.entries.len() < MAX_ENTRIES / 2 && self.names < MAX_NAMES / 2 {
            self.full_logged = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(users: &[&str]) -> Vec<Outcome> {
        users
            .iter()
            .map(|u| Outcome::Numbered {
                stream: u.to_string(),
                seq: 1,
                epoch: "e".into(),
            })
            .collect()
    }

    #[test]
    fn remembers_users_across_attempts_and_counts_names_once() {
        let mut h = Held::default();
        h.remember("1-0", Vec::new());
        assert!(h.is_empty(), "nothing reached: nothing to remember");
        h.remember("1-0", numbered(&["a", "b"]));
        h.remember("1-0", numbered(&["b", "c"]));
        let reached = h.reached("1-0").expect("remembered");
        assert_eq!(reached.len(), 3);
        assert_eq!(h.names, 3);
        h.remember("2-0", numbered(&["d"]));
        h.keep_only(&HashSet::from(["2-0".to_string()]));
        assert!(h.reached("1-0").is_none());
        assert_eq!(h.names, 1);
        h.forget("2-0");
        assert!(h.is_empty());
        assert_eq!(h.names, 0);
    }

    #[test]
    fn past_the_name_bound_an_entry_is_not_remembered() {
        let mut h = Held {
            names: MAX_NAMES - 1,
            ..Held::default()
        };
        h.remember("1-0", numbered(&["a", "b"]));
        assert!(h.reached("1-0").is_none());
        assert!(h.full_logged);
        h.names = 0;
        h.remember("1-0", numbered(&["a", "b"]));
        assert_eq!(h.reached("1-0").map(HashSet::len), Some(2));
    }
}
