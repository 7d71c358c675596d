//! What TLS counts, shown in `/metrics` and `/v1/stats` while the listener speaks TLS.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::metrics::{FeatureCounters, Field};

/// TLS counters; not shown without `--tls-cert`.
#[derive(Default)]
pub struct TlsCounters {
    /// The client listener speaks TLS.
    pub enabled: AtomicBool,
    /// Handshakes completed with a full key exchange and certificate.
    pub full: AtomicU64,
    /// Handshakes completed by resuming a session (a ticket).
    pub resumed: AtomicU64,
    /// Handshakes that failed (bad records, alerts, plaintext on the TLS port).
    pub failed: AtomicU64,
    /// Connections closed because a record after the handshake was invalid.
    pub record_errors: AtomicU64,
    /// Certificate reloads that took effect.
    pub reloads: AtomicU64,
    /// Certificate reloads that failed (the old certificate stayed).
    pub reload_errors: AtomicU64,
}

impl FeatureCounters for TlsCounters {
    const STATS_PREFIX: &'static str = "throng_tls_";

    fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    fn fields(&self) -> Vec<Field> {
        let n = |v: &AtomicU64| v.load(Relaxed);
        vec![
            (
                "throng_tls_handshakes_full_total",
                "counter",
                "TLS handshakes completed with a full key exchange.",
                n(&self.full),
            ),
            (
                "throng_tls_handshakes_resumed_total",
                "counter",
                "TLS handshakes completed by resuming a session ticket.",
                n(&self.resumed),
            ),
            (
                "throng_tls_handshakes_failed_total",
                "counter",
                "TLS handshakes that failed (bad records, alerts, plaintext on the TLS port).",
                n(&self.failed),
            ),
            (
                "throng_tls_record_errors_total",
                "counter",
                "Connections closed for an invalid TLS record after the handshake.",
                n(&self.record_errors),
            ),
            (
                "throng_tls_reloads_total",
                "counter",
                "Certificate reloads (SIGHUP) that took effect.",
                n(&self.reloads),
            ),
            (
                "throng_tls_reload_errors_total",
                "counter",
                "Certificate reloads that failed; the previous certificate stayed.",
                n(&self.reload_errors),
            ),
        ]
    }
}
