//! Distinct user keys among a fan-out's recipients: a bitset over the shard's user keys
//! that remembers which of its words it set, so emptying it costs what was set, not the
//! size of the user table. (A stamp in every user entry did this for 4 bytes a user.)

/// A reusable set of `u32` keys.
#[derive(Default)]
pub(super) struct Distinct {
    /// Bit `k % 64` of word `k / 64` is set for key `k`.
    words: Vec<u64>,
    /// The words that are not zero.
    touched: Vec<u32>,
}

impl Distinct {
    /// Adds `key`; true if it was not in the set yet.
    pub(super) fn insert(&mut self, key: u32) -> bool {
        let (w, bit) = ((key / 64) as usize, 1u64 << (key % 64));
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let word = &mut self.words[w];
        if *word & bit != 0 {
            return false;
        }
        if *word == 0 {
            self.touched.push(w as u32);
        }
        *word |= bit;
        true
    }

    /// Empties the set, keeping its buffers (one bit per user key, so small).
    pub(super) fn clear(&mut self) {
        for &w in &self.touched {
            self.words[w as usize] = 0;
        }
        self.touched.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_key_once_until_cleared() {
        let mut d = Distinct::default();
        let keys = [0, 63, 64, 5_000, 63, 0, 1 << 20, 5_000];
        let fresh: Vec<bool> = keys.iter().map(|&k| d.insert(k)).collect();
        assert_eq!(fresh, [true, true, true, true, false, false, true, false]);
        assert_eq!(d.touched.len(), 4, "words 0, 1, 78 and 16384");
        d.clear();
        assert!(d.words.iter().all(|&w| w == 0));
        assert!(d.touched.is_empty());
        for k in [0, 63, 64, 5_000, 1 << 20] {
            assert!(d.insert(k), "{k} counts again after a clear");
        }
    }
}
