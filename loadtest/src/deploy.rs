//! The `deploy` scenario: clients on server A, a drain of A (`POST /v1/drain`), the
//! clients following their `reconnect` hints to server B (resuming where they can); the
//! reconnect curve against the rate the drain window implies, and delivery on B after
//! the move.

use crate::cli::{secs, DeployArgs};
use crate::local::Local;
use crate::report::Report;
use crate::resume::{self, DrainSeen, StreamsCfg};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Width of one bucket of the reconnect curve.
const BUCKET_MS: u64 = 100;

/// The drain as the clients saw it.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployReport {
    /// The drain window server A announced.
    pub drain_ms: u64,
    /// Connections open on A when the drain began.
    pub connections: u64,
    /// `reconnect` hints received.
    pub hints: u64,
    /// The largest `after_ms` of a hint.
    pub hint_after_ms_max: u64,
    /// Closes 1001 that came after the connection's hint.
    pub closes_after_hint: u64,
    /// Closes 1001 without a hint first.
    pub closes_without_hint: u64,
    /// Reconnects that reached B (`welcome`).
    pub moved: u64,
    /// Connections not on B when the move ended (or the wait for it timed out).
    pub not_moved: u64,
    /// Reconnects still waiting for their time when the run closed.
    pub not_reconnected: u64,
    /// Seconds from the drain request to the last connection on B.
    pub move_secs: f64,
    /// Reconnects to B per 100 ms since the drain request.
    pub reconnects_per_100ms: Vec<u64>,
    /// The busiest 100 ms.
    pub peak_per_100ms: u64,
    /// What an even spread over the window gives: connections / (drain_ms / 100).
    pub implied_per_100ms: f64,
    /// The peak over that (1.0 is a perfectly even spread).
    pub peak_over_implied: f64,
}

impl DeployReport {
    /// The report from what the clients saw.
    pub fn new(d: &DrainSeen, drain_ms: u64, connections: u64, move_secs: f64) -> Self {
        let moved: u64 = d.buckets.iter().sum();
        let peak = d.buckets.iter().copied().max().unwrap_or(0);
        let implied = if drain_ms > 0 {
            connections as f64 * BUCKET_MS as f64 / drain_ms as f64
        } else {
            connections as f64
        };
        DeployReport {
            drain_ms,
            connections,
            hints: d.hints,
            hint_after_ms_max: d.after_ms_max,
            closes_after_hint: d.closes_after_hint,
            closes_without_hint: d.closes_without_hint,
            moved,
            not_moved: connections.saturating_sub(moved),
            not_reconnected: d.not_reconnected,
            move_secs: (move_secs * 1000.0).round() / 1000.0,
            reconnects_per_100ms: d.buckets.clone(),
            peak_per_100ms: peak,
            implied_per_100ms: (implied * 10.0).round() / 10.0,
            peak_over_implied: if implied > 0.0 {
                (peak as f64 / implied * 100.0).round() / 100.0
            } else {
                0.0
            },
        }
    }

    /// The human lines: hints, the move, and the curve per second.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "drain: {} ms window, {} connections; {} hints (after_ms up to {}), {} closes after the hint, {} without\n",
            self.drain_ms,
            self.connections,
            self.hints,
            self.hint_after_ms_max,
            self.closes_after_hint,
            self.closes_without_hint
        );
        s += &format!(
            "move: {} reached the second server in {:.2}s, {} did not; reconnects per 100 ms peak {} vs {:.1} implied by the window ({:.2}x)\n",
            self.moved, self.move_secs, self.not_moved, self.peak_per_100ms,
            self.implied_per_100ms, self.peak_over_implied
        );
        let per_sec: Vec<String> = self
            .reconnects_per_100ms
            .chunks(10)
            .map(|c| c.iter().sum::<u64>().to_string())
            .collect();
        s += &format!("reconnects per second: {}\n", per_sec.join(" "));
        s
    }
}

/// Reads `drain_ms` from the answer to `POST /v1/drain`.
fn drain_ms_of(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("drain_ms")?
        .as_u64()
}

/// The `deploy` scenario in this process. Returns the report and the exit status (1
/// when a push to B went missing or came twice, including to clients that never got
/// there).
pub fn run(a: &DeployArgs) -> Result<(Report, i32), String> {
    let p = &a.push;
    let c = &p.conn;
    if !c.topics.is_empty() {
        resume::prime_topics(p, &c.topics)?;
    }
    let second =
        crate::util::parse_ws_url(&a.reconnect_url).map_err(|e| format!("--reconnect-url: {e}"))?;
    let streams = StreamsCfg {
        abrupt_churn: false,
        offline: Duration::ZERO,
        reconnect_url: Some(second),
        jitter_ms: a.jitter_ms,
    };
    let mut l = Local::start_with(c, Some(p), None, false, Some(streams))?;
    l.ticker.note(&format!(
        "throng-load deploy: {} connections to {}, then a drain toward {}",
        c.connections, c.url, a.reconnect_url
    ));
    l.wait_connected();
    let connect_secs = l.connect_secs();
    l.sleep_ticking(secs(c.settle_secs));
    let mut rep = l.report_start(Some(p), None, connect_secs);
    rep.mode = "deploy".into();
    let on_a = l.sh.open_now.load(Relaxed);
    let subscribed_on_a = l.sh.subscribed.load(Relaxed);

    let api = crate::push::ApiTarget::from_flags(&p.api, &p.conn.sock.tls)
        .map_err(|e| format!("--api: {e}"))?;
    l.sh.drain_at_us
        .store((l.sh.start.elapsed().as_micros() as u64).max(1), Relaxed);
    let drain_start = Instant::now();
    let (status, body) = crate::push::post(&api, p.api_key.as_deref(), "/v1/drain", "")
        .map_err(|e| format!("POST /v1/drain on --api: {e}"))?;
    if !(200..300).contains(&status) {
        return Err(format!(
            "POST /v1/drain on --api answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    let drain_ms = drain_ms_of(&body).unwrap_or(0);
    l.ticker.note(&format!(
        "throng-load deploy: draining over {drain_ms} ms; waiting for the clients on the second server"
    ));
    // Until every client is on B, or none is left on A and no reconnect is pending.
    let end = drain_start + secs(a.move_timeout_secs);
    let mut last_move = drain_start;
    let mut moved_before = 0;
    while Instant::now() < end {
        let sh = &l.sh;
        let moved = sh.moved_open.load(Relaxed);
        if moved != moved_before {
            moved_before = moved;
            last_move = Instant::now();
        }
        let settled = sh.open_now.load(Relaxed) == moved && sh.churn_inflight.load(Relaxed) == 0;
        if moved >= on_a || settled {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        l.tick();
    }
    let move_secs = last_move.duration_since(drain_start).as_secs_f64();
    // Topic pushes need every re-subscription confirmed first: one sent before a
    // client's `subscribed` on B would be missing there by design, not by fault.
    let want = subscribed_on_a + l.sh.moved_open.load(Relaxed) * c.topics.len() as u64;
    let wait_subs = Instant::now() + Duration::from_secs(10);
    while l.sh.subscribed.load(Relaxed) < want && Instant::now() < wait_subs {
        std::thread::sleep(Duration::from_millis(20));
        l.tick();
    }

    let mut on_b = p.clone();
    on_b.api = a.reconnect_api.clone();
    let t0 = l.sh.start.elapsed().as_micros() as u64;
    let pushed = resume::push_users_and_topics(&mut l, &on_b, a.topic_rate, false)?;
    resume::drain_streams(&mut l, secs(p.drain_secs));
    let delivery_secs = l.sh.last_recv_us.load(Relaxed).saturating_sub(t0) as f64 / 1e6;
    let t = l.close();
    rep.fill_streams(&t, &pushed, delivery_secs);
    rep.deploy = Some(DeployReport::new(
        &t.delivery.drain,
        drain_ms,
        on_a,
        move_secs,
    ));
    Ok((rep, i32::from(resume::failed(&t.delivery))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_peak_is_compared_with_the_window() {
        let d = DrainSeen {
            hints: 10,
            closes_after_hint: 10,
            buckets: vec![1, 3, 2, 0, 4],
            ..Default::default()
        };
        let r = DeployReport::new(&d, 500, 10, 0.5);
        assert_eq!((r.moved, r.not_moved, r.peak_per_100ms), (10, 0, 4));
        assert_eq!(r.implied_per_100ms, 2.0);
        assert_eq!(r.peak_over_implied, 2.0);
        assert!(
            r.summary().contains("reconnects per second: 10"),
            "{}",
            r.summary()
        );
        assert_eq!(
            drain_ms_of(br#"{"draining":true,"drain_ms":5000}"#),
            Some(5000)
        );
        assert_eq!(drain_ms_of(b"nope"), None);
    }
}
