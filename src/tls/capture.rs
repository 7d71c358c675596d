//! Catches the TLS 1.3 application traffic secrets as rustls derives them.
//!
//! rustls hands out keys and IVs once the handshake is over, but a TLS 1.3 key update
//! derives the next keys from the traffic secret itself. rustls passes every secret it
//! derives to the configured `KeyLog` synchronously, on the thread running the
//! handshake step, so the acceptor takes what was caught right after each step of a
//! handshake and keeps it with that handshake.

use std::cell::RefCell;

use zeroize::Zeroize;

const CLIENT: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER: &str = "SERVER_TRAFFIC_SECRET_0";

/// A traffic secret (32 bytes for SHA-256 suites, 48 for SHA-384).
#[derive(Clone)]
pub(crate) struct Secret {
    pub bytes: [u8; 48],
    pub len: u8,
}

impl Default for Secret {
    fn default() -> Secret {
        Secret {
            bytes: [0; 48],
            len: 0,
        }
    }
}

impl Secret {
    fn from(bytes: &[u8]) -> Option<Secret> {
        let mut s = Secret::default();
        s.bytes.get_mut(..bytes.len())?.copy_from_slice(bytes);
        s.len = bytes.len() as u8;
        Some(s)
    }

    /// The secret's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// The secrets caught for one handshake.
#[derive(Default)]
pub(crate) struct Captured {
    /// What the client encrypts with (the server decrypts).
    pub client: Option<Secret>,
    /// What the server encrypts with.
    pub server: Option<Secret>,
}

impl Captured {
    /// Adds what was caught since the last take on this thread.
    pub(crate) fn absorb(&mut self) {
        CAUGHT.with(|c| {
            let mut c = c.borrow_mut();
            if let Some(s) = c.client.take() {
                self.client = Some(s);
            }
            if let Some(s) = c.server.take() {
                self.server = Some(s);
            }
        });
    }
}

/// Forgets what was caught on this thread (before a handshake step).
pub(crate) fn clear() {
    CAUGHT.with(|c| *c.borrow_mut() = Captured::default());
}

thread_local! {
    static CAUGHT: RefCell<Captured> = RefCell::new(Captured::default());
}

/// The `KeyLog` that catches the two application traffic secrets.
#[derive(Debug)]
pub(super) struct Capture;

impl rustls::KeyLog for Capture {
    fn will_log(&self, label: &str) -> bool {
        label == CLIENT || label == SERVER
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let secret = Secret::from(secret);
        CAUGHT.with(|c| {
            let mut c = c.borrow_mut();
            match label {
                CLIENT => c.client = secret,
                SERVER => c.server = secret,
                _ => {}
            }
        });
    }
}
