//! Where resumed handshakes draw their tickets from: rustls's in-memory session store,
//! with a deeper pool of TLS 1.3 tickets per server name.
//!
//! rustls keeps at most 8 tickets per name, and a ticket is used once. A load generator
//! has hundreds of handshakes to one name under way at a time; each takes a ticket when
//! it starts and leaves one (or two) when it ends, so the pool must hold about one
//! ticket per handshake in flight. With 8, a run anywhere near the server's capacity
//! falls back to full handshakes (measured: at 6,000/s against a throng sending one
//! ticket per handshake, 79% full with rustls's store), which is not what clients that
//! each kept their own ticket would cost the server.

use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, PoisonError};

/// The most TLS 1.3 tickets kept per server name (each some hundreds of bytes to 1 KiB
/// with its secret and the server's certificate chain).
pub const MAX_TICKETS_PER_NAME: usize = 65_536;

/// A session store keeping up to `depth` TLS 1.3 tickets per server name; key exchange
/// hints and TLS 1.2 sessions stay in rustls's own store.
pub struct TicketStore {
    inner: ClientSessionMemoryCache,
    depth: usize,
    /// Per server name, oldest first.
    tls13: Mutex<HashMap<ServerName<'static>, VecDeque<Tls13ClientSessionValue>>>,
}

impl TicketStore {
    /// A store for about `names` server names, keeping up to `depth` tickets each (at
    /// least 8, at most [`MAX_TICKETS_PER_NAME`]).
    pub fn new(names: usize, depth: usize) -> TicketStore {
        TicketStore {
            // rustls sizes its store in sessions, 8 per name.
            inner: ClientSessionMemoryCache::new(names.max(1).saturating_mul(8)),
            depth: depth.clamp(8, MAX_TICKETS_PER_NAME),
            tls13: Mutex::new(HashMap::new()),
        }
    }

    fn pools(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ServerName<'static>, VecDeque<Tls13ClientSessionValue>>>
    {
        // A poisoned lock only means a handshake thread panicked; the tickets are fine.
        self.tls13.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for TicketStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketStore")
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let mut pools = self.pools();
        let pool = pools.entry(server_name).or_default();
        if pool.len() >= self.depth {
            pool.pop_front();
        }
        pool.push_back(value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        // The newest first, as rustls does: the likeliest to be still valid.
        self.pools().get_mut(server_name)?.pop_back()
    }
}
