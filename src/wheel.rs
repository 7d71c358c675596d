//! Hierarchical timing wheel: O(1) insert and cancel, amortised O(1) expiry.
//!
//! Six levels of 64 slots cover 2^36 ticks. An entry sits in the level of the highest
//! bit in which its deadline differs from `now`, and cascades one level down each time
//! the wheel crosses the boundary of its slot. Slots are intrusive doubly linked lists
//! through the timed items themselves, so cancelling never searches.
//!
//! `Core` is the wheel without storage: whoever owns the timed items keeps each one's
//! deadline and `Place` (`Timed`). The shard keeps them inside its connection slots, so an
//! idle connection's heartbeat costs no entry of its own (a separate 32-byte entry per
//! connection before). `Wheel<T>` is the same wheel with its own slab of values, for
//! owners without such slots (the acceptor's handshakes); each of its slots carries a
//! generation, bumped whenever it is freed, so a stale `TimerId` never reaches the slot's
//! next timer.

use std::num::NonZeroU32;

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const MASK: u64 = SLOTS as u64 - 1;
const NIL: u32 = u32::MAX;
/// `Place::level` of an item that is not in the wheel.
const UNLINKED: u8 = u8::MAX;
/// Ticks the wheel can hold ahead of `now`.
const RANGE: u64 = 1 << (SLOT_BITS as usize * LEVELS);

/// Where a timed item sits in the wheel: its neighbours in the slot's list and its level.
/// The slot follows from the level and the deadline the owner keeps. Packed (9 bytes,
/// no padding) so that an owner's slot can put its own byte fields right after it: the
/// shard's connection slot is 56 bytes instead of 64 with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed)]
pub struct Place {
    prev: u32,
    next: u32,
    level: u8,
}

impl Default for Place {
    fn default() -> Self {
        Place::UNLINKED
    }
}

impl Place {
    /// Not in the wheel.
    pub const UNLINKED: Place = Place {
        prev: NIL,
        next: NIL,
        level: UNLINKED,
    };

    /// Whether the item is armed (linked into a slot).
    pub fn is_linked(&self) -> bool {
        self.level != UNLINKED
    }
}

/// Storage of the items a `Core` times, by `u32` key: each keeps its deadline and place.
pub trait Timed {
    /// The deadline `key` was armed for; it must not change while `key` is linked
    /// (the wheel finds the item's slot from it).
    fn deadline(&self, key: u32) -> u64;
    /// Records `key`'s deadline (always within the owner's range of ticks: `Core` never
    /// moves a deadline past what the owner asked, only up to `now`).
    fn set_deadline(&mut self, key: u32, deadline: u64);
    /// `key`'s place in the wheel.
    fn place(&mut self, key: u32) -> &mut Place;
}

/// Items that keep their own `u32` deadline and place, by index: the shape of an owner's
/// slots as a `Core` sees them (the shard's `Conns` is the real one; benches and tests
/// use this).
pub struct FlatItems(pub Vec<(u32, Place)>);

impl FlatItems {
    /// `n` items, none armed.
    pub fn new(n: usize) -> FlatItems {
        FlatItems(vec![(0, Place::UNLINKED); n])
    }
}

impl Timed for FlatItems {
    fn deadline(&self, key: u32) -> u64 {
        u64::from(self.0[key as usize].0)
    }

    fn set_deadline(&mut self, key: u32, deadline: u64) {
        // Callers arm u32 ticks only.
        self.0[key as usize].0 = deadline.min(u64::from(u32::MAX)) as u32;
    }

    fn place(&mut self, key: u32) -> &mut Place {
        &mut self.0[key as usize].1
    }
}

/// The wheel's slots and clock, without the items.
pub struct Core {
    now: u64,
    heads: [[u32; SLOTS]; LEVELS],
    occupied: [u64; LEVELS],
    /// Number of armed timers.
    len: usize,
}

impl Default for Core {
    fn default() -> Self {
        Self::new()
    }
}

impl Core {
    /// An empty wheel at tick 0.
    pub fn new() -> Self {
        Core {
            now: 0,
            heads: [[NIL; SLOTS]; LEVELS],
            occupied: [0; LEVELS],
            len: 0,
        }
    }

    /// The next tick that `advance` has not processed yet.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Arms `key` for `deadline`, first disarming it if it was armed. A deadline in the
    /// past fires on the next advance, and one beyond the wheel's range (2^36 ticks)
    /// fires at the end of the range, early: owners re-arm for the remainder, as they do
    /// after any early firing.
    pub fn insert<S: Timed + ?Sized>(&mut self, items: &mut S, key: u32, deadline: u64) {
        self.cancel(items, key);
        let deadline = deadline.clamp(self.now, self.now.saturating_add(RANGE - 1));
        items.set_deadline(key, deadline);
        self.len += 1;
        self.link(items, key);
    }

    /// Disarms `key`; false if it was not armed.
    pub fn cancel<S: Timed + ?Sized>(&mut self, items: &mut S, key: u32) -> bool {
        if !items.place(key).is_linked() {
            return false;
        }
        self.unlink(items, key);
        *items.place(key) = Place::UNLINKED;
        self.len -= 1;
        true
    }

    /// Processes every tick up to and including `target`, pushing the keys that came
    /// due (they are disarmed).
    pub fn advance<S: Timed + ?Sized>(&mut self, items: &mut S, target: u64, fired: &mut Vec<u32>) {
        self.advance_with(items, target, |_, key| fired.push(key));
    }

    /// `advance`, handing each key that came due (disarmed) to `on_fire` while its item
    /// is still in cache.
    pub fn advance_with<S: Timed + ?Sized>(
        &mut self,
        items: &mut S,
        target: u64,
        mut on_fire: impl FnMut(&mut S, u32),
    ) {
        while self.now <= target {
            let t = self.now;
            if t & MASK == 0 && t != 0 {
                self.cascade(items, t);
            }
            let slot = (t & MASK) as usize;
            let mut key = self.heads[0][slot];
            self.heads[0][slot] = NIL;
            self.occupied[0] &= !(1u64 << slot);
            while key != NIL {
                let place = items.place(key);
                let next = place.next;
                *place = Place::UNLINKED;
                self.len -= 1;
                on_fire(items, key);
                key = next;
            }
            self.now = self.next_tick_to_visit(t).min(target.saturating_add(1));
            if self.now == t {
                // Only when target is u64::MAX; nothing lies beyond.
                break;
            }
        }
    }

    /// The earliest tick at which `advance` has work (a due slot or a cascade), if any.
    pub fn next_expiry(&self) -> Option<u64> {
        self.next_work_from(self.now)
    }

    fn next_tick_to_visit(&self, t: u64) -> u64 {
        t.checked_add(1)
            .and_then(|n| self.next_work_from(n))
            .unwrap_or(u64::MAX)
    }

    /// The first tick `>= t` where a level-0 slot is due or an occupied slot cascades.
    /// Below the top level every occupied slot lies ahead of the wheel's position within
    /// its rotation (an entry's level is its highest differing bit group). The top level
    /// also holds deadlines past the next multiple of `RANGE` (its level is clamped);
    /// those slots lie behind the position and are due in the next rotation.
    fn next_work_from(&self, t: u64) -> Option<u64> {
        let mut best: Option<u64> = None;
        for level in 0..LEVELS {
            let occupied = self.occupied[level];
            if occupied == 0 {
                continue;
            }
            let shift = SLOT_BITS * level as u32;
            let span_bits = shift + SLOT_BITS;
            let base = if span_bits >= 64 {
                0
            } else {
                t >> span_bits << span_bits
            };
            let low = t - base;
            // First slot whose start tick is at or after t.
            let first = low.div_ceil(1u64 << shift);
            let ahead = if first < SLOTS as u64 {
                occupied >> first
            } else {
                0
            };
            let at = if ahead != 0 {
                let slot = first + u64::from(ahead.trailing_zeros());
                base + (slot << shift)
            } else if level == LEVELS - 1 {
                let slot = u64::from(occupied.trailing_zeros());
                match base.checked_add(RANGE) {
                    Some(next) => next + (slot << shift),
                    // Nothing lies beyond u64::MAX; `insert` saturates there.
                    None => continue,
                }
            } else {
                continue;
            };
            best = Some(best.map_or(at, |b: u64| b.min(at)));
        }
        best
    }
}

impl Core {
    /// At a slot boundary, moves the entries of every level whose slot begins now down.
    fn cascade<S: Timed + ?Sized>(&mut self, items: &mut S, t: u64) {
        // Highest level first, so entries can fall through several levels in one pass.
        let mut top = 0;
        for level in 1..LEVELS {
            let span_bits = SLOT_BITS * level as u32;
            if t & ((1u64 << span_bits) - 1) == 0 {
                top = level;
            } else {
                break;
            }
        }
        for level in (1..=top).rev() {
            let slot = ((t >> (SLOT_BITS * level as u32)) & MASK) as usize;
            let mut key = self.heads[level][slot];
            self.heads[level][slot] = NIL;
            self.occupied[level] &= !(1u64 << slot);
            while key != NIL {
                let next = items.place(key).next;
                self.link(items, key);
                key = next;
            }
        }
    }

    fn link<S: Timed + ?Sized>(&mut self, items: &mut S, key: u32) {
        let deadline = items.deadline(key);
        let diff = deadline ^ self.now;
        let level = if diff == 0 {
            0
        } else {
            ((63 - diff.leading_zeros()) / SLOT_BITS) as usize
        }
        .min(LEVELS - 1);
        let slot = ((deadline >> (SLOT_BITS * level as u32)) & MASK) as usize;
        let head = self.heads[level][slot];
        *items.place(key) = Place {
            prev: NIL,
            next: head,
            level: level as u8,
        };
        if head != NIL {
            items.place(head).prev = key;
        }
        self.heads[level][slot] = key;
        self.occupied[level] |= 1u64 << slot;
    }

    fn unlink<S: Timed + ?Sized>(&mut self, items: &mut S, key: u32) {
        let Place { prev, next, level } = *items.place(key);
        let level = level as usize;
        // Where `link` put it: the deadline does not change while the item is linked.
        let slot = ((items.deadline(key) >> (SLOT_BITS * level as u32)) & MASK) as usize;
        if prev == NIL {
            self.heads[level][slot] = next;
            if next == NIL {
                self.occupied[level] &= !(1u64 << slot);
            }
        } else {
            items.place(prev).next = next;
        }
        if next != NIL {
            items.place(next).prev = prev;
        }
    }
}

/// Handle of an armed timer; valid until it fires or is cancelled, after which the
/// wheel ignores it (its slot's generation has moved on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerId {
    key: u32,
    // NonZero so `Option<TimerId>` needs no tag.
    generation: NonZeroU32,
}

/// One slab slot of a `Wheel`: armed while its place is linked (and `value` is `Some`);
/// a free slot is on the free list through its place's `next`.
struct Entry<T> {
    value: Option<T>,
    deadline: u64,
    generation: NonZeroU32,
    place: Place,
}

/// The slots of a `Wheel`, as a `Core` sees them, with their free list.
struct Entries<T> {
    slots: Vec<Entry<T>>,
    /// Head of the free slots; `NIL` when none.
    free: u32,
}

impl<T> Entries<T> {
    /// Returns an unlinked slot to the free list under a new generation, so ids handed
    /// out for it so far stop matching. Wraps past `u32::MAX` to 1: a stale id would have
    /// to sit through 2^32 - 1 reuses of its slot to match again.
    fn release(&mut self, key: u32) {
        let e = &mut self.slots[key as usize];
        e.generation = e.generation.checked_add(1).unwrap_or(NonZeroU32::MIN);
        e.place.next = self.free;
        self.free = key;
    }
}

impl<T> Timed for Entries<T> {
    fn deadline(&self, key: u32) -> u64 {
        self.slots[key as usize].deadline
    }

    fn set_deadline(&mut self, key: u32, deadline: u64) {
        self.slots[key as usize].deadline = deadline;
    }

    fn place(&mut self, key: u32) -> &mut Place {
        &mut self.slots[key as usize].place
    }
}

/// A timing wheel holding values of type `T` due at integer ticks.
pub struct Wheel<T> {
    core: Core,
    entries: Entries<T>,
}

impl<T> Default for Wheel<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Wheel<T> {
    /// An empty wheel at tick 0.
    pub fn new() -> Self {
        Wheel {
            core: Core::new(),
            entries: Entries {
                slots: Vec::new(),
                free: NIL,
            },
        }
    }

    /// The next tick that `advance` has not processed yet.
    pub fn now(&self) -> u64 {
        self.core.now()
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.core.len()
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.core.is_empty()
    }

    /// Arms a timer for `deadline` (see `Core::insert` for the past and the far future).
    pub fn insert(&mut self, deadline: u64, value: T) -> TimerId {
        let entries = &mut self.entries;
        let (key, generation) = if entries.free != NIL {
            let key = entries.free;
            let e = &mut entries.slots[key as usize];
            entries.free = e.place.next;
            e.place = Place::UNLINKED;
            e.value = Some(value);
            (key, e.generation)
        } else {
            // A wheel never holds 2^32 timers: each one is a connection or handshake.
            let key = entries.slots.len() as u32;
            entries.slots.push(Entry {
                value: Some(value),
                deadline: 0,
                generation: NonZeroU32::MIN,
                place: Place::UNLINKED,
            });
            (key, NonZeroU32::MIN)
        };
        self.core.insert(&mut self.entries, key, deadline);
        TimerId { key, generation }
    }

    /// Disarms a timer, returning its value; `None` if it already fired or was cancelled
    /// (even when its slot now holds another timer).
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        self.armed(id)?;
        self.core.cancel(&mut self.entries, id.key);
        let value = self.entries.slots[id.key as usize].value.take();
        self.entries.release(id.key);
        value
    }

    /// Deadline of an armed timer; `None` if it already fired or was cancelled.
    pub fn deadline(&self, id: TimerId) -> Option<u64> {
        self.armed(id).map(|e| e.deadline)
    }

    /// The entry `id` names, if that timer is still armed.
    fn armed(&self, id: TimerId) -> Option<&Entry<T>> {
        self.entries
            .slots
            .get(id.key as usize)
            .filter(|e| e.generation == id.generation && e.place.is_linked())
    }

    /// Processes every tick up to and including `target`, pushing values that came due.
    pub fn advance(&mut self, target: u64, fired: &mut Vec<T>) {
        self.core
            .advance_with(&mut self.entries, target, |entries, key| {
                // Always Some: only armed entries are linked into a slot.
                if let Some(value) = entries.slots[key as usize].value.take() {
                    fired.push(value);
                }
                entries.release(key);
            });
    }

    /// The earliest tick at which `advance` has work (a due slot or a cascade), if any.
    pub fn next_expiry(&self) -> Option<u64> {
        self.core.next_expiry()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(w: &mut Wheel<u64>, to: u64) -> Vec<u64> {
        let mut out = Vec::new();
        w.advance(to, &mut out);
        out.sort_unstable();
        out
    }

    #[test]
    fn fires_at_deadline_not_before() {
        let mut w = Wheel::new();
        w.insert(10, 10);
        w.insert(5, 5);
        assert_eq!(drain(&mut w, 4), Vec::<u64>::new());
        assert_eq!(drain(&mut w, 5), vec![5]);
        assert_eq!(drain(&mut w, 9), Vec::<u64>::new());
        assert_eq!(drain(&mut w, 10), vec![10]);
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadline_fires_next_advance() {
        let mut w = Wheel::new();
        drain(&mut w, 100);
        w.insert(3, 3);
        assert_eq!(drain(&mut w, 101), vec![3]);
    }

    #[test]
    fn cancel_is_exact() {
        let mut w = Wheel::new();
        let a = w.insert(70, 1);
        let b = w.insert(70, 2);
        let c = w.insert(70, 3);
        assert_eq!(w.cancel(b), Some(2));
        assert_eq!(w.cancel(b), None);
        assert_eq!(w.len(), 2);
        assert_eq!(drain(&mut w, 70), vec![1, 3]);
        assert_eq!(w.cancel(a), None);
        assert_eq!(w.cancel(c), None);
    }

    #[test]
    fn option_timer_id_stays_8_bytes() {
        // The connection slot holds an `Option<TimerId>`; the generation's niche keeps it
        // as small as the bare slot index was.
        assert_eq!(std::mem::size_of::<Option<TimerId>>(), 8);
    }

    #[test]
    fn entry_stays_one_half_cache_line() {
        // The free list runs through the place: as large as the slab slot it replaced.
        assert_eq!(std::mem::size_of::<Entry<u32>>(), 32);
    }

    #[test]
    fn place_fits_in_nine_bytes() {
        // What a connection slot carries for its timer, besides the deadline; unaligned,
        // so the slot's byte fields follow it without padding.
        assert_eq!(std::mem::size_of::<Place>(), 9);
        assert_eq!(std::mem::align_of::<Place>(), 1);
    }

    #[test]
    fn core_rearms_cancels_and_fires_owned_items() {
        let mut items = FlatItems::new(4);
        let mut core = Core::new();
        core.insert(&mut items, 0, 10);
        core.insert(&mut items, 1, 70);
        core.insert(&mut items, 2, 5000);
        // Arming an armed item moves it: one timer per item.
        core.insert(&mut items, 1, 20);
        assert_eq!(core.len(), 3);
        assert!(core.cancel(&mut items, 2));
        assert!(!core.cancel(&mut items, 2), "cancelled once");
        assert!(!core.cancel(&mut items, 3), "never armed");
        assert!(!items.0[2].1.is_linked());
        let mut fired = Vec::new();
        core.advance(&mut items, 19, &mut fired);
        assert_eq!(fired, vec![0]);
        core.advance(&mut items, 6000, &mut fired);
        assert_eq!(fired, vec![0, 1]);
        assert!(core.is_empty());
        assert!(items.0.iter().all(|(_, p)| !p.is_linked()));
    }

    #[test]
    fn stale_id_cannot_touch_the_timer_that_reused_its_slot() {
        let mut w = Wheel::new();
        // Cancelled, then its slot reused.
        let cancelled = w.insert(50, 1);
        assert_eq!(w.cancel(cancelled), Some(1));
        let second = w.insert(60, 2);
        assert_eq!(second.key, cancelled.key, "the slot is reused");
        assert_eq!(w.deadline(cancelled), None);
        assert_eq!(w.cancel(cancelled), None);
        assert_eq!(w.deadline(second), Some(60));
        assert_eq!(w.len(), 1);

        // Fired, then its slot reused.
        let fired = w.insert(5, 3);
        assert_eq!(drain(&mut w, 5), vec![3]);
        let third = w.insert(70, 4);
        assert_eq!(third.key, fired.key, "the slot is reused");
        assert_eq!(w.deadline(fired), None);
        assert_eq!(w.cancel(fired), None);
        assert_eq!(w.deadline(third), Some(70));
        assert_eq!(w.len(), 2);

        // Both survivors are still armed and fire normally.
        assert_eq!(drain(&mut w, 70), vec![2, 4]);
        assert_eq!(w.cancel(second), None);
        assert_eq!(w.cancel(third), None);
    }

    #[test]
    fn generation_wraps_past_zero() {
        let mut w = Wheel::new();
        let a = w.insert(10, 1);
        w.entries.slots[a.key as usize].generation = NonZeroU32::MAX;
        let a = TimerId {
            generation: NonZeroU32::MAX,
            ..a
        };
        assert_eq!(w.cancel(a), Some(1));
        let b = w.insert(10, 2);
        assert_eq!(b.generation, NonZeroU32::MIN);
        assert_eq!(w.cancel(a), None);
        assert_eq!(w.cancel(b), Some(2));
    }

    #[test]
    fn cascades_across_every_level() {
        let mut w = Wheel::new();
        let deadlines = [
            1u64,
            63,
            64,
            65,
            4095,
            4096,
            4097,
            262_143,
            262_144,
            1 << 24,
            (1 << 30) + 7,
            (1 << 36) - 1,
        ];
        for &d in &deadlines {
            w.insert(d, d);
        }
        let mut fired = Vec::new();
        for &d in &deadlines {
            let mut out = Vec::new();
            w.advance(d - 1, &mut out);
            assert!(out.is_empty(), "fired early before {d}: {out:?}");
            w.advance(d, &mut out);
            assert_eq!(out, vec![d], "deadline {d}");
            fired.extend(out);
        }
        assert!(w.is_empty());
    }

    #[test]
    fn beyond_range_fires_at_range_end() {
        let mut w = Wheel::new();
        w.insert(u64::MAX, 1);
        let mut out = Vec::new();
        w.advance(RANGE - 2, &mut out);
        assert!(out.is_empty());
        w.advance(RANGE - 1, &mut out);
        assert_eq!(out, vec![1]);
    }

    #[test]
    fn beyond_range_fires_after_the_wheel_has_moved() {
        // Clamped to `now + RANGE - 1`, the deadline crosses a multiple of RANGE: its top
        // slot lies behind `now`, in the next rotation of the top level.
        let mut w = Wheel::new();
        drain(&mut w, 100);
        w.insert(u64::MAX, 1);
        let end = w.now() + RANGE - 1;
        assert_eq!(w.next_expiry(), Some(RANGE));
        assert_eq!(drain(&mut w, end - 1), Vec::<u64>::new());
        assert_eq!(drain(&mut w, end), vec![1]);

        // The same across a later boundary, with a slot other than 0 behind `now`.
        let mut w = Wheel::new();
        let start = 3 * RANGE + (40 << 30) + 5;
        drain(&mut w, start);
        let due = start + RANGE - (20 << 30);
        w.insert(due, 2);
        assert_eq!(drain(&mut w, due - 1), Vec::<u64>::new());
        assert_eq!(drain(&mut w, due), vec![2]);
        assert!(w.is_empty());
    }

    #[test]
    fn insert_relative_to_advanced_now() {
        let mut w = Wheel::new();
        drain(&mut w, 1000);
        for d in [1001u64, 1063, 1064, 1100, 5000, 70_000] {
            w.insert(d, d);
        }
        assert_eq!(drain(&mut w, 1063), vec![1001, 1063]);
        assert_eq!(drain(&mut w, 4999), vec![1064, 1100]);
        assert_eq!(drain(&mut w, 70_000), vec![5000, 70_000]);
    }

    #[test]
    fn next_expiry_points_at_work() {
        let mut w: Wheel<u64> = Wheel::new();
        assert_eq!(w.next_expiry(), None);
        w.insert(5, 5);
        assert_eq!(w.next_expiry(), Some(5));
        drain(&mut w, 5);
        w.insert(300, 300);
        // In level 1 slot 4: the cascade at tick 256 is the next work.
        assert_eq!(w.next_expiry(), Some(256));
    }

    #[test]
    fn many_random_timers_fire_once_in_order() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut w = Wheel::new();
        let mut ids = Vec::new();
        for i in 0..20_000u64 {
            let d = rng.random_range(0..200_000u64);
            ids.push((w.insert(d, d * 100_000 + i), d));
        }
        // Cancel every third.
        let mut live = Vec::new();
        for (n, (id, d)) in ids.into_iter().enumerate() {
            if n % 3 == 0 {
                assert!(w.cancel(id).is_some());
            } else {
                live.push(d);
            }
        }
        live.sort_unstable();
        let mut got = Vec::new();
        let mut t = 0;
        while t < 200_000 {
            t += rng.random_range(1..5000u64);
            let mut out = Vec::new();
            w.advance(t, &mut out);
            for v in out {
                let d = v / 100_000;
                assert!(d <= t, "fired late? {d} > {t}");
                got.push(d);
            }
        }
        got.sort_unstable();
        assert_eq!(got, live);
    }

    mod model {
        //! The wheel against a `BTreeMap` of armed timers, ids kept after they go stale.

        use super::super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        #[derive(Debug, Clone)]
        enum Op {
            /// Arm at `now + offset`; negative offsets lie in the past.
            Insert(i64),
            /// Arm far beyond the wheel's range.
            InsertFar,
            /// Cancel the n-th id ever handed out (modulo), live or stale.
            Cancel(usize),
            /// Advance by this many ticks past `now` (0 processes just `now`).
            Advance(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (-100i64..20_000).prop_map(Op::Insert),
                1 => Just(Op::InsertFar),
                4 => any::<usize>().prop_map(Op::Cancel),
                2 => (0u64..5_000).prop_map(Op::Advance),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn wheel_matches_model(ops in proptest::collection::vec(op(), 1..200)) {
                let mut w: Wheel<u32> = Wheel::new();
                // Every id ever issued, with its value (the issue order).
                let mut ids: Vec<TimerId> = Vec::new();
                // Armed timers: value -> effective deadline.
                let mut armed: BTreeMap<u32, u64> = BTreeMap::new();
                for op in ops {
                    let now = w.now();
                    match op {
                        Op::Insert(_) | Op::InsertFar => {
                            let asked = match op {
                                Op::Insert(off) => now.saturating_add_signed(off),
                                _ => u64::MAX,
                            };
                            let value = ids.len() as u32;
                            ids.push(w.insert(asked, value));
                            armed.insert(value, asked.clamp(now, now + RANGE - 1));
                        }
                        Op::Cancel(n) => {
                            if ids.is_empty() {
                                continue;
                            }
                            let value = (n % ids.len()) as u32;
                            let want = armed.remove(&value).map(|_| value);
                            prop_assert_eq!(w.cancel(ids[value as usize]), want);
                        }
                        Op::Advance(by) => {
                            let target = now + by;
                            let mut fired = Vec::new();
                            w.advance(target, &mut fired);
                            fired.sort_unstable();
                            let due: Vec<u32> = armed
                                .iter()
                                .filter(|&(_, &d)| d <= target)
                                .map(|(&v, _)| v)
                                .collect();
                            armed.retain(|_, d| *d > target);
                            prop_assert_eq!(fired, due);
                            prop_assert_eq!(w.now(), target + 1);
                        }
                    }
                    prop_assert_eq!(w.len(), armed.len());
                    for (value, &id) in ids.iter().enumerate() {
                        prop_assert_eq!(w.deadline(id), armed.get(&(value as u32)).copied());
                    }
                    match armed.values().min() {
                        None => prop_assert_eq!(w.next_expiry(), None),
                        Some(&first) => {
                            let next = w.next_expiry();
                            prop_assert!(matches!(next, Some(n) if n <= first), "{next:?} > {first}");
                        }
                    }
                }
            }
        }
    }
}
