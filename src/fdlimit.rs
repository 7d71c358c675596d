//! The process's open-file limit: every client connection is one descriptor, so this
//! limit, not Throng, caps connections on an untuned host. (Linux: `rlim_t` is `u64`.)

/// Descriptors the server needs besides client connections: listeners, epoll and waker
/// descriptors per thread, push API connections, logs.
pub const HEADROOM: u64 = 256;

/// The current (soft, hard) RLIMIT_NOFILE, or `None` when it cannot be read.
pub fn current() -> Option<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    (rc == 0).then_some((r.rlim_cur, r.rlim_max))
}

/// Raises the soft limit to the hard limit (as nginx's `worker_rlimit_nofile` or Go's
/// runtime do) and returns the limit now in force.
pub fn raise_to_hard() -> std::io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        // SAFETY: setrlimit reads the struct we own; raising soft to hard is always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(r.rlim_cur)
}

/// Client connections a process with this open-file limit can hold.
pub fn connections_allowed(nofile: u64) -> u64 {
    nofile.saturating_sub(HEADROOM)
}

/// The most client sockets (connections plus handshakes) to hold under this open-file
/// limit: `HEADROOM` and one descriptor per push API connection stay in reserve, so the
/// API can still accept when clients fill the WebSocket side.
pub fn client_ceiling(nofile: u64, api_max_connections: usize) -> u64 {
    let allowed = connections_allowed(nofile);
    allowed.saturating_sub(api_reserve(nofile, api_max_connections))
}

/// Descriptors kept for the push API: `api_max_connections`, but at most a quarter of what
/// the limit leaves after `HEADROOM`, so a low limit (1024 is common) still admits clients.
pub fn api_reserve(nofile: u64, api_max_connections: usize) -> u64 {
    (api_max_connections as u64).min(connections_allowed(nofile) / 4)
}

/// The push API connections served at once under this open-file limit (`None`: it cannot
/// be read): `api_max_connections`, but no more than the API's reserve, so API
/// connections never take the descriptors the rest of the process counts on. At least 1.
pub fn api_connection_cap(nofile: Option<u64>, api_max_connections: usize) -> usize {
    let Some(nofile) = nofile else {
        return api_max_connections;
    };
    let reserve = usize::try_from(api_reserve(nofile, api_max_connections)).unwrap_or(usize::MAX);
    reserve.clamp(1, api_max_connections.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_keeps_a_readable_limit() {
        let (soft, hard) = current().expect("getrlimit");
        assert!(soft <= hard);
        let now = raise_to_hard().expect("raising soft to hard is always allowed");
        assert_eq!(now, hard);
        assert_eq!(current().map(|c| c.0), Some(hard));
    }

    #[test]
    fn allowance_leaves_headroom() {
        assert_eq!(connections_allowed(20_000), 20_000 - HEADROOM);
        assert_eq!(connections_allowed(10), 0);
    }

    #[test]
    fn client_ceiling_reserves_the_api() {
        assert_eq!(client_ceiling(20_000, 1_024), 20_000 - HEADROOM - 1_024);
        // A low limit keeps three quarters for clients instead of none.
        assert_eq!(api_reserve(1_024, 1_024), (1_024 - HEADROOM) / 4);
        assert_eq!(client_ceiling(1_024, 1_024), 1_024 - HEADROOM - 192);
        assert_eq!(client_ceiling(HEADROOM, 1_000), 0);
    }

    #[test]
    fn the_api_serves_at_most_its_reserve() {
        assert_eq!(api_connection_cap(Some(20_000), 1_024), 1_024);
        assert_eq!(api_connection_cap(Some(1_024), 1_024), 192);
        assert_eq!(api_connection_cap(Some(4_096), 1_024), 960);
        assert_eq!(api_connection_cap(None, 1_024), 1_024);
        // Even a limit that leaves nothing keeps the API reachable.
        assert_eq!(api_connection_cap(Some(HEADROOM), 1_024), 1);
    }
}
