//! Counting what the server's WebSocket frames cost on the wire and what they carry: each
//! event loop keeps a [`WireStats`] (never per connection), a report carries the merged
//! [`CompressionReport`] on every run, compressed or not, so runs compare.

use crate::report::round1;
use crate::util;
use serde::{Deserialize, Serialize};

/// What one event loop received on its WebSocket connections.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WireStats {
    /// The run offered permessage-deflate (`--compression`).
    pub offer: bool,
    /// Upgrade requests that offered it.
    pub offered: u64,
    /// Upgrades whose answer accepted it.
    pub negotiated: u64,
    /// Bytes of the server's WebSocket frames (headers and payloads as sent, compressed
    /// or not) after the upgrade response; for wss:// the TLS plaintext.
    pub wire_bytes: u64,
    /// Bytes of the server's data messages as the scenario read them (after inflation).
    pub payload_bytes: u64,
    /// Frames that came compressed (RSV1; one per compressed message).
    pub compressed_frames: u64,
    /// The payload bytes of those messages as received.
    pub deflated_bytes: u64,
    /// The same messages after inflation.
    pub inflated_bytes: u64,
    /// Pushes the scenario received (every connection, churned ones too).
    pub deliveries: u64,
}

impl WireStats {
    /// Nothing counted; `offer` says whether the run offers compression.
    pub fn new(offer: bool) -> WireStats {
        WireStats {
            offer,
            ..Default::default()
        }
    }

    /// Adds another event loop's counts.
    pub fn add(&mut self, o: &WireStats) {
        self.offer |= o.offer;
        util::add_fields!(
            self,
            o,
            [
                offered,
                negotiated,
                wire_bytes,
                payload_bytes,
                compressed_frames,
                deflated_bytes,
                inflated_bytes,
                deliveries
            ]
        );
    }

    /// The report section.
    pub fn report(&self) -> CompressionReport {
        let mut r = CompressionReport {
            offered: self.offer,
            offered_connections: self.offered,
            negotiated_connections: self.negotiated,
            wire_bytes: self.wire_bytes,
            payload_bytes: self.payload_bytes,
            deliveries: self.deliveries,
            compressed_frames: self.compressed_frames,
            deflated_bytes: self.deflated_bytes,
            inflated_bytes: self.inflated_bytes,
            ..Default::default()
        };
        r.derive();
        r
    }
}

/// The `compression` section of every report: what the server's frames cost on the wire,
/// with `--compression` or without.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompressionReport {
    /// The run offered permessage-deflate (`--compression`).
    pub offered: bool,
    /// Upgrade requests that offered it (reconnects included).
    pub offered_connections: u64,
    /// Upgrades whose answer accepted it.
    pub negotiated_connections: u64,
    /// Bytes of the WebSocket frames received from the server after its upgrade
    /// response: frame headers and payloads as sent (compressed where compressed), every
    /// frame (welcome, answers, pings, closes as well as pushes). For wss:// these are the
    /// TLS plaintext bytes; the TLS record overhead is not counted.
    pub wire_bytes: u64,
    /// Bytes of the server's data messages after inflation: what the JSON parser read.
    pub payload_bytes: u64,
    /// Pushes received, by every connection (churned ones too): the denominator below.
    pub deliveries: u64,
    /// `wire_bytes` / `deliveries`; none without deliveries.
    pub wire_bytes_per_delivery: Option<f64>,
    /// `payload_bytes` / `deliveries`; none without deliveries.
    pub payload_bytes_per_delivery: Option<f64>,
    /// Frames received compressed (RSV1): one per compressed message.
    pub compressed_frames: u64,
    /// The payload bytes of the compressed messages as received.
    pub deflated_bytes: u64,
    /// The same messages after inflation.
    pub inflated_bytes: u64,
}

impl CompressionReport {
    /// Adds up the workers' sections.
    pub fn merge<'a>(parts: impl IntoIterator<Item = &'a CompressionReport>) -> CompressionReport {
        let mut m = CompressionReport::default();
        for p in parts {
            m.offered |= p.offered;
            util::add_fields!(
                m,
                p,
                [
                    offered_connections,
                    negotiated_connections,
                    wire_bytes,
                    payload_bytes,
                    deliveries,
                    compressed_frames,
                    deflated_bytes,
                    inflated_bytes
                ]
            );
        }
        m.derive();
        m
    }

    /// Sets the per-delivery figures from the counts.
    fn derive(&mut self) {
        let per = |x: u64| (self.deliveries > 0).then(|| round1(x as f64 / self.deliveries as f64));
        self.wire_bytes_per_delivery = per(self.wire_bytes);
        self.payload_bytes_per_delivery = per(self.payload_bytes);
    }

    /// The human line; `tls` when the run used wss:// (its wire bytes are plaintext).
    pub fn summary(&self, tls: bool) -> String {
        let per = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}"));
        let offer = if self.offered {
            format!(
                "offered, negotiated on {} of {} upgrades",
                self.negotiated_connections, self.offered_connections
            )
        } else {
            "off".to_string()
        };
        format!(
            "compression: {offer}; wire bytes {}{} for {} payload bytes, {} per delivery \
             (payload {}) over {} deliveries; {} compressed frames ({} bytes inflated to {})\n",
            self.wire_bytes,
            if tls {
                " (TLS plaintext, record overhead not counted)"
            } else {
                ""
            },
            self.payload_bytes,
            per(self.wire_bytes_per_delivery),
            per(self.payload_bytes_per_delivery),
            self.deliveries,
            self.compressed_frames,
            self.deflated_bytes,
            self.inflated_bytes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_and_workers_add_up() {
        let mut a = WireStats::new(true);
        a.offered = 3;
        a.negotiated = 3;
        a.wire_bytes = 1000;
        a.payload_bytes = 4000;
        a.deliveries = 4;
        a.compressed_frames = 4;
        a.deflated_bytes = 900;
        a.inflated_bytes = 3900;
        let mut b = WireStats::new(false);
        b.add(&a);
        b.add(&a);
        assert!(b.offer);
        let r = b.report();
        assert_eq!(
            (
                r.offered_connections,
                r.wire_bytes,
                r.deliveries,
                r.compressed_frames
            ),
            (6, 2000, 8, 8)
        );
        assert_eq!(r.wire_bytes_per_delivery, Some(250.0));
        assert_eq!(r.payload_bytes_per_delivery, Some(1000.0));
        let m = CompressionReport::merge([&r, &r]);
        assert_eq!(m.wire_bytes, 4000);
        assert_eq!(m.wire_bytes_per_delivery, Some(250.0));
        assert!(m.offered);
        let line = m.summary(true);
        assert!(line.contains("negotiated on 12 of 12 upgrades"), "{line}");
        assert!(line.contains("250.0 per delivery"), "{line}");
        assert!(line.contains("TLS plaintext"), "{line}");
        assert_eq!(line.lines().count(), 1);
        // No deliveries: no per-delivery figures, and the JSON still has the fields.
        let none = WireStats::new(false).report();
        assert_eq!(none.wire_bytes_per_delivery, None);
        let j = serde_json::to_value(&none).unwrap();
        assert!(j["wire_bytes_per_delivery"].is_null());
        assert_eq!(j["compressed_frames"], 0);
        assert!(none.summary(false).starts_with("compression: off;"));
    }
}
