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

#[cfg(test)]
mod tests {
    use super::*;

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
