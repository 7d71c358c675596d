//! Allocator housekeeping: glibc keeps freed chunks in its per-thread arenas, so memory a
//! burst used (queues of slow consumers, a storm of first sessions in cluster mode) stays
//! resident after the burst unless it is handed back.

/// Returns the allocator's free pages to the OS, where the allocator supports it.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks and releases
    // free pages; it touches no memory the program owns and is safe from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What a heap string of `len` bytes holds: its `slot` (the pointer and length, e.g. 16
/// bytes for a `Box<str>`) and its allocator chunk (glibc: the bytes and an 8-byte header,
/// rounded up to 16, at least 32). A list of many short names (a `users` push) holds
/// about ten times their length; budgets that count them must count this.
pub(crate) fn heap_str_bytes(len: usize, slot: usize) -> usize {
    let chunk = if len == 0 {
        0
    } else {
        (len + 8).next_multiple_of(16).max(32)
    };
    slot + chunk
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_name_holds_a_slot_and_a_whole_chunk() {
        assert_eq!(heap_str_bytes(5, 16), 48);
        assert_eq!(heap_str_bytes(24, 16), 48);
        assert_eq!(heap_str_bytes(25, 16), 64);
        assert_eq!(heap_str_bytes(0, 24), 24);
    }

    #[test]
    fn release_free_memory_keeps_live_allocations() {
        let keep: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 * 1024]).collect();
        let freed: Vec<Vec<u8>> = (0..256).map(|_| vec![7u8; 64 * 1024]).collect();
        drop(freed);
        release_free_memory();
        for (i, v) in keep.iter().enumerate() {
            assert!(v.iter().all(|&b| b == i as u8));
        }
    }
}
