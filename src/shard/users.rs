//! The shard's users: each user's sessions (oldest first), direct-push sequence and
//! recent pushes (docs/protocol.md 4.1). A user without sessions stays for
//! `history_ttl_ms` after its last one, with its `seq`, epoch and history: the offline
//! buffer a reconnect resumes from.

use std::collections::{HashMap, VecDeque};

use crate::wire::Wire;
use compact_str::CompactString;
use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use super::compact::{compact, is_sparse};
use super::history::{first_seq, Idle, Limits, Record, Ring};
use super::sessions::Sessions;
use super::ticks::moved;
use crate::slots::Slots;

/// One user with a session on this shard, or retained after its last one.
pub(super) struct UserEntry {
    /// The user id; up to 24 bytes live in the entry itself (no heap chunk per user).
    pub id: CompactString,
    /// Connection keys, oldest first; while retained offline, none and the tick the
    /// entry is removed at (`Sessions::Retained`). Up to three live in
    /// the entry itself: most users have one or two sessions, which then cost no heap
    /// allocation (a `Vec` of one was a 32-byte chunk per user).
    pub sessions: Sessions,
    /// Last direct-push sequence number.
    pub seq: u64,
    /// Identifies this life of `seq`: a user who comes back after its entry expired
    /// starts anew.
    pub epoch: u64,
}

/// Users by id, with the shard's history bookkeeping.
#[derive(Default)]
pub(super) struct Users {
    /// User keys by id. The table holds keys only: the id itself lives once, in its
    /// entry (a map keyed by the id kept a second copy of it per user).
    by_id: HashTable<u32>,
    entries: Slots<UserEntry>,
    /// Recent direct pushes of each user that has some, oldest first, by user key. Beside
    /// the entries so that a user without history (every idle one) pays nothing for it.
    rings: HashMap<u32, Box<Ring>, FxBuildHasher>,
    /// Entries with at least one session.
    online: usize,
    limits: Limits,
    /// Every retained push in accept order, for TTL expiry and memory eviction. A push
    /// that left its ring by `history_size` leaves a stale record behind, compacted away
    /// once they outnumber the pushes held (`held`).
    fifo: VecDeque<Record>,
    /// Pushes held in all rings: the records of `fifo` that are not stale.
    held: usize,
    /// The FIFO is compacted again only once it is twice what the last compaction left:
    /// records it cannot drop (a ring held while it reloads) never make it run per push.
    compact_at: usize,
    /// Entries without sessions, by removal tick (the TTL is fixed, so this is sorted).
    idle: VecDeque<Idle>,
    /// Frame bytes held in all rings.
    bytes: u64,
    /// Pushes dropped before their TTL, for `history_size` or `history_memory_bytes`.
    evictions: u64,
    /// Cluster mode: ids of entries removed since the last `take_gone`.
    gone: Option<Vec<Box<str>>>,
    /// Cluster mode, users reloaded (for a resume their ring could not cover, or a gap): the epoch and
    /// the first `seq` Redis held then. Within an epoch that only grows, so a resume from
    /// before it is answered here, not with another load of the whole history (review
    /// s21a: a client reconnecting with `since` 0 loaded it at every handshake). Only
    /// those users pay for an entry.
    floors: HashMap<u32, (u64, u64), FxBuildHasher>,
}

impl Users {
    /// No users yet, with these history bounds.
    #[cfg(test)]
    pub(super) fn new(limits: Limits) -> Users {
        Users {
            limits,
            ..Users::default()
        }
    }

    /// No users yet, with entries reserved for `expected` (see `Slots::with_capacity`).
    pub(super) fn with_capacity(limits: Limits, expected: usize) -> Users {
        Users {
            limits,
            entries: Slots::with_capacity(expected),
            ..Users::default()
        }
    }

    /// Adds session `conn` for `id`, creating the entry if needed; returns the user key.
    pub(super) fn attach(&mut self, id: &str, conn: u32) -> u32 {
        if let Some(key) = self.find(id) {
            let Some(entry) = self.entries.get_mut(key) else {
                return key;
            };
            if entry.sessions.is_empty() {
                self.online += 1;
            }
            entry.sessions.push(conn);
            return key;
        }
        let key = self.entries.insert(UserEntry {
            id: id.into(),
            sessions: Sessions::one(conn),
            seq: 0,
            epoch: rand::random(),
        });
        let entries = &self.entries;
        self.by_id.insert_unique(id_hash(id), key, |&k| {
            entries.get(k).map_or(0, |e| id_hash(&e.id))
        });
        self.online += 1;
        key
    }

    /// Removes session `conn`; after the last one the entry is retained until
    /// `tick` + the history TTL.
    pub(super) fn detach(&mut self, user: u32, conn: u32, tick: u32) {
        let Some(entry) = self.entries.get_mut(user) else {
            return;
        };
        let Some(pos) = entry.sessions.iter().position(|&c| c == conn) else {
            return;
        };
        // Keep age order: the oldest is the one evicted for 4009.
        entry.sessions.remove(pos);
        if entry.sessions.is_empty() {
            self.online -= 1;
            let until = tick.saturating_add(self.limits.ttl_ticks);
            entry.sessions = Sessions::retained(until);
            self.idle.push_back(Idle {
                user,
                epoch: entry.epoch,
                until,
            });
            // A user that comes and goes leaves one stale entry per visit for a TTL:
            // bounded by the users retained now, not by the churn.
            let retained = self.entries.len() - self.online;
            if self.idle.len() > 2 * retained + 1024 {
                let entries = &self.entries;
                self.idle.retain(|i| {
                    entries.get(i.user).is_some_and(|u| {
                        u.epoch == i.epoch && u.sessions.retained_until() == Some(i.until)
                    })
                });
            }
        }
    }

    /// Cluster mode: remember the ids of removed entries for `take_gone`.
    pub(super) fn track_gone(&mut self) {
        self.gone = Some(Vec::new());
    }

    /// Ids of entries removed since the last call (cluster mode; empty otherwise).
    pub(super) fn take_gone(&mut self) -> Vec<Box<str>> {
        self.gone.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Replaces the user's stream with what the cluster holds: `seq`, `epoch`, and the
    /// recent pushes `entries` (contiguous, ending at `seq`, or empty).
    pub(super) fn load(
        &mut self,
        key: u32,
        seq: u64,
        epoch: u64,
        entries: &[(u64, Wire)],
        tick: u32,
        stamp: u32,
    ) {
        let Some(u) = self.entries.get_mut(key) else {
            return;
        };
        // A reload after a reconnect (same epoch, no gap after what is held) keeps the
        // ring and adds only what is newer: recording the same pushes again would leave two
        // records naming each (the epoch is the same), which no compaction could drop.
        let held_up_to = u.seq;
        let joins = match entries.first() {
            Some(&(first, _)) => first <= held_up_to + 1,
            None => seq == held_up_to,
        };
        let newer = if u.epoch == epoch && held_up_to <= seq && joins {
            entries.partition_point(|&(s, _)| s <= held_up_to)
        } else {
            if let Some(ring) = self.rings.remove(&key) {
                self.bytes -= ring.bytes();
                self.held -= ring.len();
            }
            // Records of the old ring are now stale: their epoch no longer matches, or
            // their seqs are behind a gap (`first_seq` of the new ring is past them).
            u.epoch = epoch;
            0
        };
        let entries = &entries[newer..];
        let skip = entries.len().saturating_sub(self.limits.size);
        for (s, frame) in &entries[skip..] {
            if let Some(u) = self.entries.get_mut(key) {
                u.seq = *s;
            }
            self.record(key, frame, tick, stamp);
        }
        if let Some(u) = self.entries.get_mut(key) {
            u.seq = seq;
        }
    }

    /// The ids of every user held, online or retained.
    pub(super) fn ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries.iter().map(|(_, e)| &*e.id)
    }

    /// One past the highest user key now.
    pub(super) fn key_bound(&self) -> u32 {
        self.entries.key_bound()
    }

    /// The ids of users whose stream is loaded (cluster mode: served) among the `n` keys
    /// from `from`, and the key to go on from (0 once past the end).
    pub(super) fn served_ids(&self, from: u32, n: usize) -> (Vec<Box<str>>, u32) {
        let bound = self.entries.key_bound();
        let from = if from >= bound { 0 } else { from };
        let to = from
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX))
            .min(bound);
        let ids = (from..to)
            .filter_map(|k| self.entries.get(k))
            .filter(|e| e.epoch != 0)
            .map(|e| Box::from(e.id.as_str()))
            .collect();
        (ids, if to >= bound { 0 } else { to })
    }

    /// The user key for `id`, when online or retained here.
    pub(super) fn find(&self, id: &str) -> Option<u32> {
        let entries = &self.entries;
        self.by_id
            .find(id_hash(id), |&k| {
                entries.get(k).is_some_and(|e| &*e.id == id)
            })
            .copied()
    }

    /// The entry for a user key.
    pub(super) fn get(&self, key: u32) -> Option<&UserEntry> {
        self.entries.get(key)
    }

    /// The entry for a user key, mutably.
    pub(super) fn get_mut(&mut self, key: u32) -> Option<&mut UserEntry> {
        self.entries.get_mut(key)
    }

    /// Users online (with at least one session).
    pub(super) fn len(&self) -> usize {
        self.online
    }

    /// Users online here with their session counts (cluster mode: a presence resync).
    pub(super) fn online_sessions(&self) -> impl Iterator<Item = (&str, usize)> + '_ {
        self.entries
            .iter()
            .filter(|(_, e)| !e.sessions.is_empty())
            .map(|(_, e)| (&*e.id, e.sessions.len()))
    }

    /// Entries held, online or retained.
    #[cfg(test)]
    pub(super) fn retained(&self) -> usize {
        self.entries.len()
    }

    /// Frame bytes held in history.
    pub(super) fn history_bytes(&self) -> u64 {
        self.bytes
    }

    /// Shrinks the index and history tables a crowd of users left mostly empty, and gives
    /// back the pages of a vacant end of the entries; returns the heap bytes freed to the
    /// allocator, roughly (the pages are the OS's already).
    pub(super) fn compact(&mut self) -> usize {
        self.entries.release_tail();
        let mut freed = compact(&mut self.rings)
            + compact(&mut self.fifo)
            + compact(&mut self.idle)
            + compact(&mut self.floors);
        let cap = self.by_id.capacity();
        // A `HashTable` rebuilds with the hasher in hand, so it cannot be a `Sparse`.
        if is_sparse(self.by_id.len(), cap) {
            let entries = &self.entries;
            self.by_id.shrink_to(self.by_id.len() * 2, |&k| {
                entries.get(k).map_or(0, |e| id_hash(&e.id))
            });
            freed += (cap - self.by_id.capacity()) * (std::mem::size_of::<u32>() + 1);
        }
        freed
    }

    /// Pushes dropped from history before their TTL so far.
    pub(super) fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Keeps `frame`, the user's push numbered with its current `seq`, recorded at `tick`
    /// and accepted at `stamp` (`history::stamp_of`).
    pub(super) fn record(&mut self, key: u32, frame: &Wire, tick: u32, stamp: u32) {
        let size = self.limits.size;
        if size == 0 {
            return;
        }
        let Some(u) = self.entries.get(key) else {
            return;
        };
        let ring = self.rings.entry(key).or_default();
        if ring.len() >= size {
            if let Some(old) = ring.pop_front() {
                self.bytes -= old.len() as u64;
                self.held -= 1;
                self.evictions += 1;
            }
        }
        ring.push_back(frame.clone(), stamp, size);
        self.bytes += frame.len() as u64;
        self.held += 1;
        self.fifo.push_back(Record {
            user: key,
            epoch: u.epoch as u32,
            seq: u.seq as u32,
            at: tick,
        });
        // Each push a full ring let go left its record: 16 bytes per push for the TTL,
        // whatever `history_size` keeps, unless compacted (amortised O(1) per push).
        if self.fifo.len() > (2 * self.held + 1024).max(self.compact_at) {
            let (entries, rings) = (&self.entries, &self.rings);
            self.fifo.retain(|r| {
                entries.get(r.user).is_some_and(|u| {
                    let len = rings.get(&r.user).map_or(0, |ring| ring.len());
                    r.epoch == u.epoch as u32 && (u.seq as u32).wrapping_sub(r.seq) < len as u32
                })
            });
            self.compact_at = 2 * self.fifo.len();
        }
        while self.bytes > self.limits.memory {
            let Some(r) = self.fifo.pop_front() else {
                break;
            };
            if self.drop_oldest(&r) {
                self.evictions += 1;
            }
        }
    }

    /// The tick of the oldest retained push (stale records included).
    pub(super) fn oldest(&self) -> Option<u32> {
        self.fifo.front().map(|r| r.at)
    }

    /// Drops the oldest retained push, for the shard-wide memory cap; true if one was held.
    pub(super) fn evict_oldest(&mut self) -> bool {
        let Some(r) = self.fifo.pop_front() else {
            return false;
        };
        let dropped = self.drop_oldest(&r);
        self.evictions += u64::from(dropped);
        dropped
    }

    /// Drops the push `r` names when it is still its user's oldest; false for a stale record.
    fn drop_oldest(&mut self, r: &Record) -> bool {
        let Some(u) = self.entries.get(r.user) else {
            return false;
        };
        let Some(ring) = self.rings.get_mut(&r.user) else {
            return false;
        };
        if ring.is_empty() || !r.names(u.epoch, first_seq(u.seq, ring.len())) {
            return false;
        }
        if let Some(h) = ring.pop_front() {
            self.bytes -= h.len() as u64;
            self.held -= 1;
        }
        if ring.is_empty() {
            // No history costs nothing.
            self.rings.remove(&r.user);
        }
        true
    }

    /// The shard's ticks moved back by `by` (`Shard::rebase_ticks`).
    pub(super) fn rebase(&mut self, by: u32) {
        for r in &mut self.fifo {
            r.at = moved(r.at, by);
        }
        for i in &mut self.idle {
            i.until = moved(i.until, by);
        }
        for (_, u) in self.entries.iter_mut() {
            if let Some(until) = u.sessions.retained_until() {
                u.sessions = Sessions::retained(moved(until, by));
            }
        }
    }

    /// Drops pushes older than the TTL and retained entries whose time is up. Only the
    /// fronts of two sorted queues are looked at: amortised O(1) per push and per session.
    pub(super) fn expire(&mut self, tick: u32) {
        let ttl = self.limits.ttl_ticks;
        while let Some(r) = self.fifo.front() {
            if tick.saturating_sub(r.at) < ttl {
                break;
            }
            if let Some(r) = self.fifo.pop_front() {
                self.drop_oldest(&r);
            }
        }
        while let Some(i) = self.idle.front() {
            if i.until > tick {
                break;
            }
            let Some(i) = self.idle.pop_front() else {
                break;
            };
            let due = self.entries.get(i.user).is_some_and(|u| {
                u.epoch == i.epoch && u.sessions.retained_until().is_some_and(|t| t <= tick)
            });
            if due {
                let Some(u) = self.entries.remove(i.user) else {
                    continue;
                };
                if let Ok(slot) = self.by_id.find_entry(id_hash(&u.id), |&k| k == i.user) {
                    slot.remove();
                }
                if let Some(gone) = self.gone.as_mut() {
                    gone.push(u.id.as_str().into());
                }
                if let Some(ring) = self.rings.remove(&i.user) {
                    self.bytes -= ring.bytes();
                    self.held -= ring.len();
                }
                self.floors.remove(&i.user);
            }
        }
    }

    /// When the API accepted push `seq` of user `key` (`history::stamp_of`), while the push
    /// is still held.
    pub(super) fn accepted_stamp(&self, key: u32, seq: u64) -> Option<u32> {
        let u = self.entries.get(key)?;
        let ring = self.rings.get(&key)?;
        let first = first_seq(u.seq, ring.len());
        if seq < first || seq > u.seq {
            return None;
        }
        ring.stamp((seq - first) as usize)
    }

    /// The frame of user `key`'s push `seq`, while it is held here (cluster mode: to tell
    /// a push Redis numbered again from one this shard had).
    pub(super) fn frame_at(&self, key: u32, seq: u64) -> Option<&Wire> {
        let u = self.entries.get(key)?;
        let ring = self.rings.get(&key)?;
        let first = first_seq(u.seq, ring.len());
        if seq < first || seq > u.seq {
            return None;
        }
        ring.frame((seq - first) as usize)
    }

    /// Drops user `key`'s history here (cluster mode: it is not what Redis numbered under
    /// those `seq`s any more); the next load records what Redis holds.
    pub(super) fn drop_history(&mut self, key: u32) {
        if let Some(ring) = self.rings.remove(&key) {
            self.bytes -= ring.bytes();
            self.held -= ring.len();
        }
    }

    /// Whether a resume after `since` in `epoch` names this user's current stream but
    /// reaches back past what its ring holds here, and not past what Redis held at the
    /// last such reload (cluster mode: Redis may hold more).
    pub(super) fn falls_short(&self, key: u32, since: u64, epoch: &str) -> bool {
        let Some(u) = self.entries.get(key) else {
            return false;
        };
        if epoch != format!("{:016x}", u.epoch) || since >= u.seq {
            return false;
        }
        if let Some(&(floor_epoch, floor)) = self.floors.get(&key) {
            if floor_epoch == u.epoch && since + 1 < floor {
                return false;
            }
        }
        let held = self.rings.get(&key).map_or(0, |r| r.len());
        first_seq(u.seq, held) > since + 1 || held == 0
    }

    /// Records the first seq a reload of user `key` (in `epoch`) could answer a resume
    /// from (`falls_short`): where Redis's history began (`first`), or where the ring
    /// begins when it holds less (a shorter `history_size` than the pushing node's).
    pub(super) fn note_floor(&mut self, key: u32, epoch: u64, first: u64) {
        let Some(u) = self.entries.get(key) else {
            return;
        };
        let held = self.rings.get(&key).map_or(0, |r| r.len());
        let ring_first = if held == 0 {
            u.seq.saturating_add(1)
        } else {
            first_seq(u.seq, held)
        };
        self.floors.insert(key, (epoch, first.max(ring_first)));
    }

    /// Whether user `key` can resume after `since` in `epoch` (as shown in `welcome`); if
    /// so, the frames to replay, in order, are appended to `out`.
    pub(super) fn resume(&self, key: u32, since: u64, epoch: &str, out: &mut Vec<Wire>) -> bool {
        let Some(u) = self.entries.get(key) else {
            return false;
        };
        if epoch != format!("{:016x}", u.epoch) || since > u.seq {
            return false;
        }
        if since == u.seq {
            return true;
        }
        let Some(ring) = self.rings.get(&key) else {
            return false;
        };
        if ring.is_empty() {
            return false;
        }
        // The ring is contiguous: seqs `first..=u.seq`.
        let first = first_seq(u.seq, ring.len());
        if first > since + 1 {
            return false;
        }
        let skip = (since + 1 - first) as usize;
        out.extend(ring.frames_from(skip).cloned());
        true
    }
}

/// The hash a user id is filed under in `by_id`.
fn id_hash(id: &str) -> u64 {
    use std::hash::BuildHasher;
    FxBuildHasher.hash_one(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_bookkeeping_stays_small() {
        // Per retained push: a ring slot (an 8-byte `Wire` and a 4-byte stamp) and a FIFO
        // record (besides the frame).
        assert_eq!(std::mem::size_of::<Wire>(), 8);
        assert_eq!(std::mem::size_of::<Record>(), 16);
    }

    #[test]
    fn records_of_pushes_a_full_ring_let_go_do_not_pile_up_for_the_ttl() {
        // One push kept per user, a TTL far away: 100,000 pushes once left 100,000 records
        // (16-32 bytes each) for the TTL.
        let mut u = Users::new(limits(1, 1_000_000, 1 << 30));
        let a = u.attach("a", 1);
        let b = u.attach("b", 2);
        for i in 0..100_000 {
            push(&mut u, if i % 2 == 0 { a } else { b }, 10, 0);
        }
        assert_eq!(u.held, 2);
        assert!(u.fifo.len() <= 2 * u.held + 1024, "{}", u.fifo.len());
        let mut out = Vec::new();
        assert!(u.resume(a, 49_999, &epoch(&u, a), &mut out));
        assert_eq!(out.len(), 1);
        // The memory cap still finds the oldest push held, and the TTL the rest.
        let mut tries = u.fifo.len();
        while !u.evict_oldest() {
            tries -= 1;
            assert!(tries > 0, "no record of a held push");
        }
        assert_eq!(u.held, 1);
        u.expire(1_000_000);
        assert_eq!((u.history_bytes(), u.held), (0, 0));
        assert!(u.fifo.is_empty());
    }

    #[test]
    fn a_reload_in_the_same_epoch_keeps_the_ring_and_adds_only_newer_pushes() {
        // Every subscriber reconnect reloads every user: recording the same pushes again
        // left two records per push, and the compaction then ran once per user (seconds
        // of a shard's time per reconnect at 6,000 users).
        let mut u = Users::new(limits(100, 1_000_000, 1 << 30));
        let keys: Vec<u32> = (0..50).map(|i| u.attach(&format!("u{i}"), i)).collect();
        let frames: Vec<Wire> = (1..=30u8).map(|n| Wire::from(vec![n; 10])).collect();
        let entries = |upto: u64| -> Vec<(u64, Wire)> {
            (1..=upto)
                .map(|s| (s, frames[s as usize - 1].clone()))
                .collect()
        };
        for &k in &keys {
            u.load(k, 20, 7, &entries(20), 0, 0);
        }
        for round in 0..5u64 {
            for &k in &keys {
                u.load(k, 20 + round, 7, &entries(20 + round), 0, 0);
            }
            assert_eq!(u.fifo.len(), u.held, "no record twice (round {round})");
        }
        assert_eq!(u.held, 50 * 24);
        let mut out = Vec::new();
        assert!(u.resume(keys[0], 0, "0000000000000007", &mut out));
        assert_eq!(out, frames[..24].to_vec());
        // A gap after what is held, or another epoch: the ring is replaced.
        u.load(keys[0], 30, 7, &entries(30)[26..], 0, 0);
        assert_eq!(u.rings[&keys[0]].len(), 4);
        u.load(keys[1], 2, 8, &entries(2), 0, 0);
        assert_eq!(u.rings[&keys[1]].len(), 2);
        assert_eq!(u.held, 48 * 24 + 4 + 2);
    }

    #[test]
    fn a_user_that_comes_and_goes_leaves_no_pile_of_idle_entries() {
        let mut u = Users::new(limits(1, 1_000_000, 1 << 30));
        for conn in 0..100_000 {
            let k = u.attach("churn", conn);
            u.detach(k, conn, conn / 10);
        }
        assert!(u.idle.len() <= 1026, "{}", u.idle.len());
        // The one that counts still removes the entry when its time comes.
        u.expire(1_000_000 + 10_000);
        assert_eq!(u.retained(), 0);
    }

    #[test]
    fn full_ring_has_no_spare_slots() {
        let mut u = Users::new(limits(100, 1000, 1 << 30));
        let k = u.attach("a", 1);
        for _ in 0..250 {
            push(&mut u, k, 10, 0);
        }
        let ring = u.rings.get(&k).unwrap();
        assert_eq!((ring.len(), ring.capacity()), (100, 100));
    }

    #[test]
    fn user_entry_stays_small() {
        // Every online user costs one entry: the id is 24 bytes inline (8 more than a
        // boxed one, and no 32-byte heap chunk for ids up to 24 bytes); sessions take 16
        // and hold the removal tick of a user without any; history lives beside the
        // entries, and a fan-out counts distinct users in a bitset of its own. The table
        // keeps `Option<UserEntry>` at the same size (no slot tag).
        assert!(
            std::mem::size_of::<UserEntry>() <= 56,
            "{}",
            std::mem::size_of::<UserEntry>()
        );
        assert_eq!(
            std::mem::size_of::<Option<UserEntry>>(),
            std::mem::size_of::<UserEntry>()
        );
    }

    #[test]
    fn tables_shrink_after_a_crowd_of_users_with_history_has_gone() {
        let mut u = Users::new(limits(10, 100, 1 << 30));
        let keys: Vec<u32> = (0..5_000u32)
            .map(|i| {
                let k = u.attach(&format!("user-{i}"), i);
                push(&mut u, k, 10, 0);
                k
            })
            .collect();
        let peak = (u.by_id.capacity(), u.rings.capacity(), u.fifo.capacity());
        // All but 100 leave; their entries and history expire with the TTL.
        for (i, &k) in keys.iter().enumerate().skip(100) {
            u.detach(k, i as u32, 0);
        }
        u.expire(1_000);
        assert_eq!(u.retained(), 100);
        assert!(u.compact() > 0);
        let now = (u.by_id.capacity(), u.rings.capacity(), u.fifo.capacity());
        assert!(
            now.0 < peak.0 / 8 && now.1 < peak.1 / 8,
            "{peak:?} -> {now:?}"
        );
        // The index still finds every remaining user, by the hash it was built with.
        for (i, &k) in keys.iter().enumerate().take(100) {
            assert_eq!(u.find(&format!("user-{i}")), Some(k));
        }
        assert_eq!(u.find("user-100"), None);
        // Nothing more to free.
        assert_eq!(u.compact(), 0);
    }

    fn limits(size: usize, ttl_ticks: u32, memory: u64) -> Limits {
        Limits {
            size,
            ttl_ticks,
            memory,
        }
    }

    /// Numbers and keeps one push of `len` bytes for `key`, as the shard does.
    fn push(u: &mut Users, key: u32, len: usize, tick: u32) -> Wire {
        let e = u.get_mut(key).unwrap();
        e.seq += 1;
        let frame = Wire::from(vec![e.seq as u8; len]);
        let stamp = e.seq as u32 * 1000;
        u.record(key, &frame, tick, stamp);
        frame
    }

    fn epoch(u: &Users, key: u32) -> String {
        format!("{:016x}", u.get(key).unwrap().epoch)
    }

    #[test]
    fn attach_detach_keeps_order_and_retains() {
        let mut u = Users::default();
        let k = u.attach("a", 1);
        assert_eq!(u.attach("a", 2), k);
        u.attach("a", 3);
        u.get_mut(k).unwrap().seq = 5;
        u.detach(k, 2, 0);
        assert_eq!(u.get(k).unwrap().sessions[..], [1, 3]);
        assert_eq!(u.get(k).unwrap().seq, 5);
        u.detach(k, 1, 0);
        u.detach(k, 3, 0);
        assert_eq!(u.len(), 0, "offline users are not online");
        assert_eq!(u.find("a"), Some(k), "retained for the TTL");
        assert_eq!(u.get(k).unwrap().seq, 5);
    }

    #[test]
    fn retained_entry_expires_after_ttl_unless_back() {
        let mut u = Users::new(limits(10, 100, 1 << 20));
        let k = u.attach("a", 1);
        push(&mut u, k, 10, 0);
        u.detach(k, 1, 50);
        u.expire(149);
        assert_eq!(u.find("a"), Some(k));
        // Back and gone again: the first deadline no longer applies.
        u.attach("a", 2);
        u.detach(k, 2, 120);
        u.expire(150);
        assert_eq!(u.find("a"), Some(k));
        u.expire(220);
        assert!(u.find("a").is_none());
        assert_eq!(u.retained(), 0);
        assert_eq!(u.history_bytes(), 0);
        // A new life: new epoch, seq 0.
        let k2 = u.attach("a", 3);
        assert_eq!(u.get(k2).unwrap().seq, 0);
    }

    #[test]
    fn ring_keeps_history_size_and_resumes() {
        let mut u = Users::new(limits(3, 1000, 1 << 20));
        let k = u.attach("a", 1);
        let frames: Vec<Wire> = (0..5).map(|_| push(&mut u, k, 10, 0)).collect();
        assert_eq!(u.history_bytes(), 30);
        assert_eq!(u.evictions(), 2);
        let e = epoch(&u, k);
        let mut out = Vec::new();
        assert!(u.resume(k, 2, &e, &mut out));
        assert_eq!(out, frames[2..].to_vec());
        out.clear();
        assert!(!u.resume(k, 1, &e, &mut out), "seq 2 is gone");
        assert!(u.resume(k, 5, &e, &mut out), "nothing missed");
        assert!(!u.resume(k, 6, &e, &mut out), "beyond current");
        assert!(
            !u.resume(k, 3, "0000000000000000x", &mut out),
            "other epoch"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn no_history_without_pushes_or_with_size_zero() {
        let mut u = Users::new(limits(0, 1000, 1 << 20));
        let k = u.attach("a", 1);
        push(&mut u, k, 10, 0);
        assert!(!u.rings.contains_key(&k));
        assert_eq!(u.history_bytes(), 0);
        let k2 = u.attach("b", 2);
        assert!(!u.rings.contains_key(&k2));
    }

    #[test]
    fn memory_cap_evicts_oldest_across_users() {
        let mut u = Users::new(limits(100, 1000, 200));
        let a = u.attach("a", 1);
        let b = u.attach("b", 2);
        for i in 0..5 {
            push(&mut u, a, 20, i);
            push(&mut u, b, 20, i);
        }
        assert_eq!(u.history_bytes(), 200);
        assert_eq!(u.evictions(), 0);
        push(&mut u, a, 30, 6);
        // a's seq 1 and b's seq 1 went, in accept order.
        assert_eq!(u.history_bytes(), 190);
        assert_eq!(u.evictions(), 2);
        let mut out = Vec::new();
        assert!(!u.resume(b, 0, &epoch(&u, b), &mut out));
        assert!(u.resume(b, 1, &epoch(&u, b), &mut out));
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn ttl_drops_old_pushes_and_frees_the_ring() {
        let mut u = Users::new(limits(100, 50, 1 << 20));
        let k = u.attach("a", 1);
        push(&mut u, k, 10, 0);
        push(&mut u, k, 10, 20);
        u.expire(49);
        assert_eq!(u.history_bytes(), 20);
        u.expire(50);
        assert_eq!(u.history_bytes(), 10);
        u.expire(70);
        assert_eq!(u.history_bytes(), 0);
        assert!(!u.rings.contains_key(&k));
        assert_eq!(u.evictions(), 0, "TTL expiry is not eviction");
        assert_eq!(u.len(), 1);
    }

    #[test]
    fn stale_records_of_a_reused_key_are_skipped() {
        let mut u = Users::new(limits(100, 10, 30));
        let a = u.attach("a", 1);
        u.detach(a, 1, 0);
        // Offline but retained: numbered and kept.
        push(&mut u, a, 10, 5);
        assert_eq!(u.get(a).unwrap().seq, 1);
        u.expire(10);
        assert!(u.find("a").is_none());
        assert_eq!(u.history_bytes(), 0);
        let b = u.attach("b", 2);
        assert_eq!(a, b, "slab key reused");
        for _ in 0..4 {
            push(&mut u, b, 10, 10);
        }
        // a's record was skipped, b's oldest evicted.
        assert_eq!(u.history_bytes(), 30);
        assert_eq!(u.evictions(), 1);
    }
}
