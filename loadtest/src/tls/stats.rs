//! Counting TLS handshakes: full against resumed (each with the time from the connection
//! attempt to the handshake's end), and what the first one negotiated. An event loop
//! keeps a [`TlsStats`]; a report carries the merged [`TlsReport`].

use crate::util::{self, fmt_us, Percentiles};
use hdrhistogram::Histogram;
use rustls::{CipherSuite, HandshakeKind, ProtocolVersion};
use serde::{Deserialize, Serialize};

/// A handshake that just finished.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    /// Full, full after a HelloRetryRequest, or resumed.
    pub kind: HandshakeKind,
    /// Microseconds from the connection attempt (before the TCP connect) to the end of
    /// the handshake.
    pub us: u64,
    /// The protocol version negotiated.
    pub version: Option<ProtocolVersion>,
    /// The cipher suite negotiated.
    pub suite: Option<CipherSuite>,
}

/// What one event loop saw of its TLS handshakes.
#[derive(Default)]
pub struct TlsStats {
    /// `wss://` connection attempts (a TLS session was set up for the socket).
    pub attempts: u64,
    full: u64,
    hello_retry: u64,
    resumed: u64,
    /// Created on the first sample, so a `ws://` run carries no histograms.
    full_us: Option<Histogram<u64>>,
    resumed_us: Option<Histogram<u64>>,
    /// What the first finished handshake negotiated.
    first: Option<(Option<ProtocolVersion>, Option<CipherSuite>)>,
}

impl TlsStats {
    /// Counts a finished handshake.
    pub fn record(&mut self, d: &Done) {
        let hist = match d.kind {
            HandshakeKind::Resumed => {
                self.resumed += 1;
                &mut self.resumed_us
            }
            HandshakeKind::FullWithHelloRetryRequest => {
                self.full += 1;
                self.hello_retry += 1;
                &mut self.full_us
            }
            HandshakeKind::Full => {
                self.full += 1;
                &mut self.full_us
            }
        };
        util::record(hist.get_or_insert_with(util::new_hist), d.us);
        self.first.get_or_insert((d.version, d.suite));
    }

    /// Adds another event loop's counts (its first handshake counts only if this one has
    /// none).
    pub fn merge(&mut self, o: TlsStats) {
        util::add_fields!(self, o, [attempts, full, hello_retry, resumed]);
        for (dst, src) in [
            (&mut self.full_us, o.full_us),
            (&mut self.resumed_us, o.resumed_us),
        ] {
            if let Some(src) = src {
                let _ = dst.get_or_insert_with(util::new_hist).add(&src);
            }
        }
        if self.first.is_none() {
            self.first = o.first;
        }
    }

    /// The report section; `None` when no connection used TLS.
    pub fn report(&self) -> Option<TlsReport> {
        if self.attempts == 0 && self.full + self.resumed == 0 {
            return None;
        }
        let pairs = |h: &Option<Histogram<u64>>| h.as_ref().map(util::hist_to_pairs);
        let (version, suite) = self.first.unwrap_or((None, None));
        let mut r = TlsReport {
            attempts: self.attempts,
            handshakes_full: self.full,
            handshakes_hello_retry: self.hello_retry,
            handshakes_resumed: self.resumed,
            protocol_version: version.map(|v| v.as_str().map_or(format!("{v:?}"), String::from)),
            cipher_suite: suite.map(|s| s.as_str().map_or(format!("{s:?}"), String::from)),
            raw_full_us: pairs(&self.full_us).unwrap_or_default(),
            raw_resumed_us: pairs(&self.resumed_us).unwrap_or_default(),
            ..Default::default()
        };
        r.set_percentiles();
        Some(r)
    }
}

/// The TLS section of a report (present when the run used `wss://`).
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct TlsReport {
    /// `wss://` connection attempts, reconnects included.
    pub attempts: u64,
    /// Handshakes that ended in a full handshake (no ticket, or the server refused it).
    pub handshakes_full: u64,
    /// Of the full ones, those that took a HelloRetryRequest round trip.
    pub handshakes_hello_retry: u64,
    /// Handshakes that resumed an earlier session with its ticket.
    pub handshakes_resumed: u64,
    /// From the connection attempt to the end of a full handshake.
    pub handshake_full_us: Percentiles,
    /// From the connection attempt to the end of a resumed handshake.
    pub handshake_resumed_us: Percentiles,
    /// What the first handshake negotiated (`TLSv1_3`, ...).
    pub protocol_version: Option<String>,
    /// The cipher suite of the first handshake (`TLS13_AES_256_GCM_SHA384`, ...).
    pub cipher_suite: Option<String>,
    /// Raw histograms (value, count), only between worker processes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raw_full_us: Vec<(u64, u64)>,
    /// The same for the resumed handshakes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raw_resumed_us: Vec<(u64, u64)>,
}

impl TlsReport {
    /// Merges the workers' sections; `None` when none had one.
    pub fn merge<'a>(parts: impl IntoIterator<Item = &'a TlsReport>) -> Option<TlsReport> {
        let mut m: Option<TlsReport> = None;
        for p in parts {
            let Some(m) = m.as_mut() else {
                m = Some(p.clone());
                continue;
            };
            util::add_fields!(
                m,
                p,
                [
                    attempts,
                    handshakes_full,
                    handshakes_hello_retry,
                    handshakes_resumed
                ]
            );
            m.raw_full_us.extend_from_slice(&p.raw_full_us);
            m.raw_resumed_us.extend_from_slice(&p.raw_resumed_us);
            if m.protocol_version.is_none() {
                m.protocol_version.clone_from(&p.protocol_version);
                m.cipher_suite.clone_from(&p.cipher_suite);
            }
        }
        if let Some(m) = m.as_mut() {
            m.set_percentiles();
        }
        m
    }

    /// Recomputes the percentiles from the raw histograms.
    fn set_percentiles(&mut self) {
        let of = |pairs: &[(u64, u64)]| {
            let mut h = util::new_hist();
            util::hist_add_pairs(&mut h, pairs);
            util::percentiles(&h)
        };
        self.handshake_full_us = of(&self.raw_full_us);
        self.handshake_resumed_us = of(&self.raw_resumed_us);
    }

    /// Drops the raw histograms (they are only for merging across workers).
    pub fn strip_raw(&mut self) {
        self.raw_full_us.clear();
        self.raw_resumed_us.clear();
    }

    /// The human lines.
    pub fn summary(&self) -> String {
        let lat = |p: &Percentiles| {
            if p.count == 0 {
                String::new()
            } else {
                format!(" (p50 {} p99 {})", fmt_us(p.p50), fmt_us(p.p99))
            }
        };
        format!(
            "tls: {} {}, {} attempts; handshakes full {}{} resumed {}{}{}\n",
            self.protocol_version.as_deref().unwrap_or("-"),
            self.cipher_suite.as_deref().unwrap_or("-"),
            self.attempts,
            self.handshakes_full,
            lat(&self.handshake_full_us),
            self.handshakes_resumed,
            lat(&self.handshake_resumed_us),
            if self.handshakes_hello_retry > 0 {
                format!(
                    ", {} full after a HelloRetryRequest",
                    self.handshakes_hello_retry
                )
            } else {
                String::new()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(kind: HandshakeKind, us: u64) -> Done {
        Done {
            kind,
            us,
            version: Some(ProtocolVersion::TLSv1_3),
            suite: Some(CipherSuite::TLS13_AES_128_GCM_SHA256),
        }
    }

    #[test]
    fn counts_merge_across_loops_and_workers() {
        let mut a = TlsStats::default();
        assert!(a.report().is_none(), "no TLS, no section");
        a.attempts = 3;
        a.record(&done(HandshakeKind::Full, 900));
        a.record(&done(HandshakeKind::Resumed, 300));
        let mut b = TlsStats {
            attempts: 2,
            ..Default::default()
        };
        b.record(&done(HandshakeKind::FullWithHelloRetryRequest, 1500));
        a.merge(b);
        let r = a.report().unwrap();
        assert_eq!(
            (
                r.attempts,
                r.handshakes_full,
                r.handshakes_hello_retry,
                r.handshakes_resumed
            ),
            (5, 2, 1, 1)
        );
        assert_eq!(r.handshake_full_us.count, 2);
        assert_eq!(r.handshake_resumed_us.count, 1);
        assert_eq!(r.protocol_version.as_deref(), Some("TLSv1_3"));
        assert_eq!(r.cipher_suite.as_deref(), Some("TLS13_AES_128_GCM_SHA256"));
        let m = TlsReport::merge([&r, &r]).unwrap();
        assert_eq!(
            (m.attempts, m.handshakes_full, m.handshakes_resumed),
            (10, 4, 2)
        );
        assert_eq!(m.handshake_full_us.count, 4);
        assert!(TlsReport::merge([]).is_none());
        let line = m.summary();
        assert!(
            line.contains("full 4") && line.contains("resumed 2"),
            "{line}"
        );
    }
}
