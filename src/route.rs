//! Which shard owns a user: a hash that is fixed by this file, not by the toolchain, so
//! that every thread (and later every node) agrees.

/// FNV-1a over the user id, finished with the SplitMix64 mixer so low bits are uniform.
pub fn user_hash(user: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The shard that owns `user` among `shards`.
pub fn shard_of(user: &str, shards: usize) -> usize {
    (user_hash(user) % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_spread() {
        assert_eq!(shard_of("alice", 1), 0);
        assert_eq!(user_hash("alice"), user_hash("alice"));
        let mut counts = [0usize; 4];
        for i in 0..40_000 {
            counts[shard_of(&format!("u{i}"), 4)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }
}
