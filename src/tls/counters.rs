//! What TLS counts, shown in `/metrics` and `/v1/stats` while a listener speaks TLS: the
//! client listener's (`throng_tls_*`) and the push API's (`throng_api_tls_*`), the same
//! counters under two sets of names.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::metrics::{FeatureCounters, Field};

/// The listener a set of TLS counters belongs to: its metric names and help.
pub trait TlsListener {
    /// What `/v1/stats` drops from the front of each name.
    const STATS_PREFIX: &'static str;
    /// Name and help of each counter, in the order of `TlsCounters::values`.
    const FIELDS: [(&'static str, &'static str); 6];
}

/// The client listener (`--tls-cert`).
#[derive(Default)]
pub struct ClientListener;

impl TlsListener for ClientListener {
    const STATS_PREFIX: &'static str = "throng_tls_";
    const FIELDS: [(&'static str, &'static str); 6] = [
        (
            "throng_tls_handshakes_full_total",
            "TLS handshakes completed with a full key exchange.",
        ),
        (
            "throng_tls_handshakes_resumed_total",
            "TLS handshakes completed by resuming a session ticket.",
        ),
        (
            "throng_tls_handshakes_failed_total",
            "TLS handshakes that failed (bad records, alerts, plaintext on the TLS port).",
        ),
        (
            "throng_tls_record_errors_total",
            "Connections closed for an invalid TLS record after the handshake.",
        ),
        (
            "throng_tls_reloads_total",
            "Certificate reloads (SIGHUP) that took effect.",
        ),
        (
            "throng_tls_reload_errors_total",
            "Certificate reloads that failed; the previous certificate stayed.",
        ),
    ];
}

/// The push API's listener (`--api-tls-cert`).
#[derive(Default)]
pub struct ApiListener;

impl TlsListener for ApiListener {
    const STATS_PREFIX: &'static str = "throng_api_tls_";
    const FIELDS: [(&'static str, &'static str); 6] = [
        (
            "throng_api_tls_handshakes_full_total",
            "Push API TLS handshakes completed with a full key exchange.",
        ),
        (
            "throng_api_tls_handshakes_resumed_total",
            "Push API TLS handshakes completed by resuming a session ticket.",
        ),
        (
            "throng_api_tls_handshakes_failed_total",
            "Push API TLS handshakes that failed (bad records, alerts, plain HTTP).",
        ),
        (
            "throng_api_tls_record_errors_total",
            "Push API connections closed for an invalid TLS record after the handshake.",
        ),
        (
            "throng_api_tls_reloads_total",
            "Push API certificate reloads (SIGHUP) that took effect.",
        ),
        (
            "throng_api_tls_reload_errors_total",
            "Push API certificate reloads that failed; the previous certificate stayed.",
        ),
    ];
}

/// TLS counters of one listener; not shown while it is plain.
#[derive(Default)]
pub struct TlsCounters<L = ClientListener> {
    /// The listener speaks TLS.
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
    listener: PhantomData<L>,
}

/// The push API's TLS counters.
pub type ApiTlsCounters = TlsCounters<ApiListener>;

impl<L> TlsCounters<L> {
    /// The counters, in the order of `TlsListener::FIELDS`.
    fn values(&self) -> [u64; 6] {
        [
            &self.full,
            &self.resumed,
            &self.failed,
            &self.record_errors,
            &self.reloads,
            &self.reload_errors,
        ]
        .map(|v| v.load(Relaxed))
    }
}

impl<L: TlsListener> FeatureCounters for TlsCounters<L> {
    const STATS_PREFIX: &'static str = L::STATS_PREFIX;

    fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    fn fields(&self) -> Vec<Field> {
        L::FIELDS
            .iter()
            .zip(self.values())
            .map(|(&(name, help), v)| (name, "counter", help, v))
            .collect()
    }
}
