//! The run summary: JSON for machines, a few lines for people, and merging across workers.

use crate::client::{merge_counts, ThreadOut};
use crate::deflate::CompressionReport;
use crate::deploy::DeployReport;
use crate::push::PushOut;
use crate::resume::StreamTotals;
use crate::tls::TlsReport;
use crate::util::{self, fmt_us, Percentiles};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One reading of the server's and the kernel's memory.
#[derive(Debug, Default, Clone, Copy)]
pub struct Mem {
    pub rss: Option<u64>,
    /// The anonymous part of `rss` (without the executable's pages faulted in).
    pub anon: Option<u64>,
    pub tcp: Option<u64>,
    pub slab: Option<u64>,
}

impl Mem {
    /// Reads the server's RSS and the kernel's TCP and slab memory (nothing without a pid).
    pub fn read(server_pid: Option<u32>) -> Mem {
        match server_pid {
            Some(pid) => Mem {
                rss: util::read_rss_bytes(&pid.to_string()),
                anon: util::read_rss_anon_bytes(&pid.to_string()),
                tcp: util::read_kernel_tcp_bytes(),
                slab: util::read_kernel_slab_bytes(),
            },
            None => Mem::default(),
        }
    }
}

/// One step of a capacity ramp.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    /// Connections open at this step.
    pub connections: u64,
    /// Connect failures by cause, from the start up to this step.
    pub connect_errors: BTreeMap<String, u64>,
    pub server_rss_bytes: Option<u64>,
    /// Server RSS growth since before the first connection, per open connection.
    pub server_rss_bytes_per_conn: Option<f64>,
    pub kernel_tcp_bytes_per_conn: Option<f64>,
    pub kernel_slab_bytes_per_conn: Option<f64>,
    /// Push-to-client latency of this step's probe.
    pub latency_us: Percentiles,
    /// Pushes the API accepted during this step's probe.
    pub probe_pushes: u64,
    /// Pushes this step's probe gave up, by cause (any stops the ramp).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probe_push_errors: BTreeMap<String, u64>,
    /// Pushes of this step's probe never sent: the API held the driver past the end of
    /// the probe and its grace (any stops the ramp).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub probe_pushes_not_sent: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Everything a run measured; serialized as the JSON report.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Report {
    pub mode: String,
    pub procs: usize,
    pub connections_target: u64,
    pub connections_opened: u64,
    /// Connections still open when the clean close began.
    pub connections_open_at_close: u64,
    /// Failures before `welcome`, by cause.
    pub connect_errors: BTreeMap<String, u64>,
    /// Open connections ended by the server or network, by cause (`close_<code>`, `eof`, ...).
    pub disconnects: BTreeMap<String, u64>,
    /// Problems during our clean close, by cause.
    pub close_errors: BTreeMap<String, u64>,
    /// `error` messages and oddities the server sent.
    pub server_errors: BTreeMap<String, u64>,
    pub closed_clean: u64,
    /// Seconds from the first connection attempt to the last `welcome`.
    pub connect_secs: f64,
    pub connect_rate_per_sec: f64,
    pub handshake_latency_us: Percentiles,
    /// wss:// runs: TLS handshakes full and resumed, their latency, and what the first
    /// one negotiated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsReport>,
    /// Every run: bytes of the server's WebSocket frames on the wire (TLS plaintext for
    /// wss://) and after inflation, per delivery, and the compressed frames
    /// (permessage-deflate with `--compression`).
    #[serde(default)]
    pub compression: CompressionReport,
    pub pings_answered: u64,
    pub subscriptions_confirmed: u64,

    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_bytes_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_bytes_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_bytes_per_conn: Option<f64>,
    /// Growth of the server's anonymous RSS per connection: `server_rss_bytes_per_conn`
    /// without the code pages a fresh server faults in on its first connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_anon_bytes_per_conn: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_tcp_bytes_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_tcp_bytes_after: Option<u64>,
    /// Kernel TCP memory per connection; on loopback this counts both endpoints' sockets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_tcp_bytes_per_conn: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_slab_bytes_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_slab_bytes_after: Option<u64>,
    /// Growth of the kernel's slab memory (sockets, files, epoll entries) per connection;
    /// system-wide, so on loopback it covers both endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_slab_bytes_per_conn: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_conns: Option<u64>,
    /// Growth of this load generator's own RSS while connecting (all workers).
    pub client_rss_delta_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_rss_bytes_per_conn: Option<f64>,

    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// How the pushes reached the server: `api`, `redis_stream` or `kafka`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_via: Option<String>,
    /// Pushes the API (the Redis stream, Kafka) accepted. The name is kept for the scripts
    /// that read it; `pushes_accepted` holds the same count under its right name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pushes_sent: Option<u64>,
    /// Pushes the API (the Redis stream, Kafka) accepted: the same as `pushes_sent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushes_accepted: Option<u64>,
    /// Paced (--rate above 0): the pushes the schedule held, one per slot before the end
    /// of --duration-secs, within --count (for capacity, every probe's). Each was
    /// accepted, given up (`push_errors`) or not sent (`pushes_not_sent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushes_scheduled: Option<u64>,
    /// Paced: scheduled pushes never sent, because the API held the driver up past the
    /// end of --duration-secs and the 10 s grace after it; any fails the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushes_not_sent: Option<u64>,
    /// Requests (or Redis pipelines, or Kafka records) sent, retries included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_retries: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_errors: Option<BTreeMap<String, u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_rate_per_sec: Option<f64>,
    /// Push API request latency, counted from each request's schedule slot at --rate
    /// (from its send when unpaced), so the wait behind a stalled server is included.
    /// One sample per answer, whatever its status (a 503 `overloaded` that is retried
    /// is one too, and its retry another, both from the slot); with --kafka per record
    /// acknowledged, with --redis-stream per pipeline answered. Each batch of
    /// `pushes_not_sent` adds its wait up to the end of the grace, a lower bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_latency_us: Option<Percentiles>,
    /// Pushes sent more than 100 ms after their schedule slot at --rate: the driver was
    /// held up by a slow or stalled API, and the achieved rate hides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushes_sent_late: Option<u64>,
    /// Paced: of `pushes_sent_late`, those sent after the end of --duration-secs (their
    /// slots came before it): the API stalled into the end of the run, so the schedule
    /// was not pushed within it; any fails the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushes_sent_after_end: Option<u64>,
    /// The longest a push waited past its schedule slot before it was sent, in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_max_send_lag_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_expected: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_received: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_missing: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_duplicated: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_out_of_order: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_unexpected: Option<u64>,
    /// Of the expected messages received, those that arrived after --drain-secs ran out
    /// (while the connections closed): delivered, late; never counted as missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_late: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_unnumbered: Option<u64>,
    /// Receivers the server or network disconnected before the end; what they never got
    /// counts in `messages_missing`, and `disconnects` says why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receivers_lost: Option<u64>,
    /// Churn: clean closes we began, reconnects that got `welcome`, reconnects that failed
    /// (by cause), and connections that churned at least once (left out of `messages_*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn_disconnects: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn_reconnects: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn_reconnect_errors: Option<BTreeMap<String, u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churned_receivers: Option<u64>,
    /// Capacity ramp: one entry per step, why it stopped, and the most connections held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Step>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_because: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_held: Option<u64>,
    /// Push-to-client latency: from each push's schedule slot at --rate (the `t` in its
    /// data) to its arrival, so a server stall shows in full (no coordinated omission);
    /// from its send when unpaced (--rate 0). `latency_from` says which.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Percentiles>,
    /// `schedule` (paced: latencies count from each push's slot at --rate) or `send`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_from: Option<String>,
    /// Latency samples whose `t` stamp was later than their receipt (counted as 0). The
    /// stamps and receipts read the host's monotonic clock, so this is 0 unless pushes
    /// from elsewhere carried a `t`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub latency_stamps_ahead: u64,
    /// Seconds from the first push sent to the last message received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_per_sec: Option<f64>,
    /// Resume and deploy: delivery on the user streams across reconnects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_stream: Option<StreamTotals>,
    /// Resume and deploy (with --topics): delivery on the topic streams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_stream: Option<StreamTotals>,
    /// Pushes naming a topic the connection had no `subscribed` for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pushes_stray: Option<u64>,
    /// Resume and deploy: nothing missing and nothing duplicated (else the exit status is
    /// 1); pushes not replayed after `resumed:false` (`*_stream.not_replayed`) are not
    /// missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_ok: Option<bool>,
    /// Deploy: the drain as the clients saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployReport>,
    /// Chat: publishes, their answers, fan-out latency and delivery per room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<crate::chat::ChatReport>,
    /// The verdict (connect, push, churn, capacity, resume, deploy): true when the run
    /// passed (exit status 0), false when it failed (exit status 1, `failures` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// Why the run failed, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,

    /// Raw histograms (value, count), only between worker processes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raw_handshake: Vec<(u64, u64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raw_latency: Vec<(u64, u64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raw_api_latency: Vec<(u64, u64)>,
    /// Per capacity step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raw_step_latency: Vec<Vec<(u64, u64)>>,
}

/// `{cause: count}` as `cause=count ...`.
fn causes(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `x` to one decimal.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl Report {
    /// Fills everything the closed event loops measured: connections, then push and churn
    /// figures for the modes that ran them.
    pub fn fill_closed(
        &mut self,
        t: &ThreadOut,
        push: Option<(Option<&PushOut>, f64)>,
        churn: bool,
    ) {
        self.fill_clients(t);
        self.set_connect_rate();
        if let Some((pushed, delivery_secs)) = push {
            self.fill_push(t, pushed, delivery_secs);
        }
        if churn {
            self.fill_churn(t);
        }
    }

    /// Fills the connection figures from the event loops' measurements.
    fn fill_clients(&mut self, t: &ThreadOut) {
        self.connections_open_at_close = t.open_at_close;
        self.connect_errors = t.connect_errors.clone();
        self.disconnects = t.disconnects.clone();
        self.close_errors = t.close_errors.clone();
        self.server_errors = t.server_errors.clone();
        self.closed_clean = t.closed_clean;
        self.pings_answered = t.pings_answered;
        self.handshake_latency_us = util::percentiles(&t.handshake);
        self.raw_handshake = util::hist_to_pairs(&t.handshake);
        self.tls = t.tls.report();
        self.compression = t.wire.report();
        self.raw_step_latency = t.step_latency.iter().map(util::hist_to_pairs).collect();
        self.latency_stamps_ahead = util::stamps_ahead();
    }

    /// Fills the churn figures.
    fn fill_churn(&mut self, t: &ThreadOut) {
        self.churn_disconnects = Some(t.churn_disconnects);
        self.churn_reconnects = Some(t.churn_reconnects);
        self.churn_reconnect_errors = Some(t.churn_reconnect_errors.clone());
        self.churned_receivers = Some(t.churned_receivers);
    }

    /// Fills the push and delivery figures.
    fn fill_push(&mut self, t: &ThreadOut, p: Option<&PushOut>, delivery_secs: f64) {
        let c = &t.completeness;
        self.messages_expected = Some(c.expected);
        self.messages_received = Some(c.received);
        self.messages_missing = Some(c.missing);
        self.messages_duplicated = Some(c.duplicated);
        self.messages_out_of_order = Some(c.out_of_order);
        self.messages_unexpected = Some(c.unexpected);
        self.messages_late = Some(c.late);
        self.messages_unnumbered = Some(t.unnumbered);
        self.receivers_lost = Some(t.receivers_lost);
        self.latency_us = Some(util::percentiles(&t.latency));
        self.raw_latency = util::hist_to_pairs(&t.latency);
        self.delivery_secs = Some((delivery_secs * 1000.0).round() / 1000.0);
        self.deliveries_per_sec = Some(if delivery_secs > 0.0 {
            round1(c.received as f64 / delivery_secs)
        } else {
            0.0
        });
        if let Some(p) = p {
            self.fill_driver(p);
        }
    }

    /// Fills the push driver's figures.
    fn fill_driver(&mut self, p: &PushOut) {
        {
            self.pushes_sent = Some(p.accepted);
            self.pushes_accepted = Some(p.accepted);
            self.pushes_scheduled = p.paced.then_some(p.scheduled);
            self.pushes_not_sent = Some(p.not_sent);
            self.push_requests = Some(p.requests);
            self.push_retries = Some(p.retries);
            self.push_errors = Some(p.errors.clone());
            self.push_secs = Some((p.secs * 1000.0).round() / 1000.0);
            self.push_rate_per_sec = Some(if p.secs > 0.0 {
                round1(p.accepted as f64 / p.secs)
            } else {
                0.0
            });
            self.api_latency_us = Some(util::percentiles(&p.api_latency));
            self.raw_api_latency = util::hist_to_pairs(&p.api_latency);
            self.pushes_sent_late = Some(p.sent_late);
            self.pushes_sent_after_end = p.paced.then_some(p.sent_after_end);
            self.latency_from = Some(if p.paced { "schedule" } else { "send" }.into());
            self.push_max_send_lag_us = Some(p.max_send_lag_us);
        }
    }

    /// Fills a resume or deploy run: connections, drops and reconnects, the push driver,
    /// latency, and delivery per kind of stream.
    pub fn fill_streams(&mut self, t: &ThreadOut, p: &PushOut, delivery_secs: f64) {
        self.fill_clients(t);
        self.set_connect_rate();
        self.fill_churn(t);
        self.fill_driver(p);
        self.latency_us = Some(util::percentiles(&t.latency));
        self.raw_latency = util::hist_to_pairs(&t.latency);
        self.delivery_secs = Some((delivery_secs * 1000.0).round() / 1000.0);
        let d = &t.delivery;
        self.user_stream = Some(d.user.clone());
        self.topic_stream = Some(d.topic.clone());
        self.pushes_stray = Some(d.stray);
        self.messages_unnumbered = Some(t.unnumbered);
        self.delivery_ok = Some(!crate::resume::failed(d));
    }

    /// Rounds `connect_secs` and derives the connect rate from it.
    pub fn set_connect_rate(&mut self) {
        self.connect_secs = (self.connect_secs * 1000.0).round() / 1000.0;
        self.connect_rate_per_sec = if self.connect_secs > 0.0 {
            round1(self.connections_opened as f64 / self.connect_secs)
        } else {
            0.0
        };
    }

    /// Sets the per-connection memory figures from before/after readings.
    pub fn set_memory(&mut self, conns: u64, before: Mem, after: Mem) {
        let rss = (before.rss, after.rss);
        let tcp = (before.tcp, after.tcp);
        let slab = (before.slab, after.slab);
        let per = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if conns > 0 => Some(round1((b as f64 - a as f64) / conns as f64)),
            _ => None,
        };
        self.memory_conns = Some(conns);
        self.server_rss_bytes_before = rss.0;
        self.server_rss_bytes_after = rss.1;
        self.server_rss_bytes_per_conn = per(rss.0, rss.1);
        self.server_anon_bytes_per_conn = per(before.anon, after.anon);
        self.kernel_tcp_bytes_before = tcp.0;
        self.kernel_tcp_bytes_after = tcp.1;
        self.kernel_tcp_bytes_per_conn = per(tcp.0, tcp.1);
        self.kernel_slab_bytes_before = slab.0;
        self.kernel_slab_bytes_after = slab.1;
        self.kernel_slab_bytes_per_conn = per(slab.0, slab.1);
    }

    /// Merges worker reports; memory and rates are recomputed by the caller.
    pub fn merge(reports: &[Report]) -> Report {
        let mut m = Report {
            mode: reports.first().map(|r| r.mode.clone()).unwrap_or_default(),
            procs: reports.len(),
            target: reports.first().and_then(|r| r.target.clone()),
            push_via: reports.first().and_then(|r| r.push_via.clone()),
            ..Default::default()
        };
        let mut hs = util::new_hist();
        let mut lat = util::new_hist();
        let mut api = util::new_hist();
        let push = reports.iter().any(|r| r.messages_expected.is_some());
        let mut push_errors = BTreeMap::new();
        let add = |a: &mut Option<u64>, b: Option<u64>| {
            if let Some(b) = b {
                *a = Some(a.unwrap_or(0) + b);
            }
        };
        let mut delivery_secs = 0f64;
        let mut push_secs = 0f64;
        let mut churn_errors: Option<BTreeMap<String, u64>> = None;
        let mut steps: Vec<hdrhistogram::Histogram<u64>> = Vec::new();
        for r in reports {
            m.connections_target += r.connections_target;
            m.connections_opened += r.connections_opened;
            m.connections_open_at_close += r.connections_open_at_close;
            merge_counts(&mut m.connect_errors, r.connect_errors.clone());
            merge_counts(&mut m.disconnects, r.disconnects.clone());
            merge_counts(&mut m.close_errors, r.close_errors.clone());
            merge_counts(&mut m.server_errors, r.server_errors.clone());
            m.closed_clean += r.closed_clean;
            m.connect_secs = m.connect_secs.max(r.connect_secs);
            m.pings_answered += r.pings_answered;
            m.subscriptions_confirmed += r.subscriptions_confirmed;
            m.client_rss_delta_bytes += r.client_rss_delta_bytes;
            util::hist_add_pairs(&mut hs, &r.raw_handshake);
            util::hist_add_pairs(&mut lat, &r.raw_latency);
            util::hist_add_pairs(&mut api, &r.raw_api_latency);
            add(&mut m.pushes_sent, r.pushes_sent);
            add(&mut m.pushes_accepted, r.pushes_accepted);
            add(&mut m.pushes_scheduled, r.pushes_scheduled);
            add(&mut m.pushes_not_sent, r.pushes_not_sent);
            m.latency_stamps_ahead += r.latency_stamps_ahead;
            add(&mut m.push_requests, r.push_requests);
            add(&mut m.push_retries, r.push_retries);
            add(&mut m.pushes_sent_late, r.pushes_sent_late);
            add(&mut m.pushes_sent_after_end, r.pushes_sent_after_end);
            if let Some(l) = r.push_max_send_lag_us {
                m.push_max_send_lag_us = Some(m.push_max_send_lag_us.unwrap_or(0).max(l));
            }
            if m.latency_from.is_none() {
                m.latency_from = r.latency_from.clone();
            }
            add(&mut m.messages_expected, r.messages_expected);
            add(&mut m.messages_received, r.messages_received);
            add(&mut m.messages_missing, r.messages_missing);
            add(&mut m.messages_duplicated, r.messages_duplicated);
            add(&mut m.messages_out_of_order, r.messages_out_of_order);
            add(&mut m.messages_unexpected, r.messages_unexpected);
            add(&mut m.messages_late, r.messages_late);
            add(&mut m.messages_unnumbered, r.messages_unnumbered);
            add(&mut m.receivers_lost, r.receivers_lost);
            add(&mut m.churn_disconnects, r.churn_disconnects);
            add(&mut m.churn_reconnects, r.churn_reconnects);
            add(&mut m.churned_receivers, r.churned_receivers);
            if let Some(e) = &r.churn_reconnect_errors {
                merge_counts(churn_errors.get_or_insert_with(BTreeMap::new), e.clone());
            }
            if r.raw_step_latency.len() > steps.len() {
                steps.resize_with(r.raw_step_latency.len(), util::new_hist);
            }
            for (h, pairs) in steps.iter_mut().zip(&r.raw_step_latency) {
                util::hist_add_pairs(h, pairs);
            }
            if let Some(e) = &r.push_errors {
                merge_counts(&mut push_errors, e.clone());
            }
            delivery_secs = delivery_secs.max(r.delivery_secs.unwrap_or(0.0));
            push_secs = push_secs.max(r.push_secs.unwrap_or(0.0));
        }
        m.handshake_latency_us = util::percentiles(&hs);
        m.tls = TlsReport::merge(reports.iter().filter_map(|r| r.tls.as_ref()));
        m.compression = CompressionReport::merge(reports.iter().map(|r| &r.compression));
        m.churn_reconnect_errors = churn_errors;
        m.raw_handshake = util::hist_to_pairs(&hs);
        m.raw_step_latency = steps.iter().map(util::hist_to_pairs).collect();
        m.set_connect_rate();
        if m.connections_opened > 0 && m.client_rss_delta_bytes > 0 {
            m.client_rss_bytes_per_conn = Some(round1(
                m.client_rss_delta_bytes as f64 / m.connections_opened as f64,
            ));
        }
        if push {
            m.push_errors = Some(push_errors);
            m.latency_us = Some(util::percentiles(&lat));
            m.api_latency_us = Some(util::percentiles(&api));
            m.push_secs = Some(push_secs);
            m.push_rate_per_sec = Some(if push_secs > 0.0 {
                round1(m.pushes_sent.unwrap_or(0) as f64 / push_secs)
            } else {
                0.0
            });
            m.delivery_secs = Some(delivery_secs);
            m.deliveries_per_sec = Some(if delivery_secs > 0.0 {
                round1(m.messages_received.unwrap_or(0) as f64 / delivery_secs)
            } else {
                0.0
            });
        }
        m
    }

    /// Latency percentiles of capacity step `i` (empty when it had no probe deliveries).
    pub fn step_latency(&self, i: usize) -> Percentiles {
        let mut h = util::new_hist();
        if let Some(pairs) = self.raw_step_latency.get(i) {
            util::hist_add_pairs(&mut h, pairs);
        }
        util::percentiles(&h)
    }

    /// Drops the raw histograms (they are only for merging across workers).
    pub fn strip_raw(&mut self) {
        self.raw_step_latency.clear();
        self.raw_handshake.clear();
        self.raw_latency.clear();
        self.raw_api_latency.clear();
        if let Some(t) = self.tls.as_mut() {
            t.strip_raw();
        }
    }

    /// Sets the verdict (`passed`, `failures`) from the figures; the exit status: 0 when
    /// the run passed, 1 when it failed. What fails a run:
    /// - every mode but capacity: a connection that never opened; capacity: none opened
    ///   (its ramp stops at the first connect error, the ceiling it measures);
    /// - every mode: an open connection the server or the network ended (`disconnects`;
    ///   deploy's drain closes on the first server, 1001 followed by a move, are not);
    /// - churn, resume, deploy: a reconnect that failed (`churn_reconnect_errors`);
    /// - push, churn, resume, deploy, capacity: a push given up (`push_errors`), a
    ///   scheduled push never sent (`pushes_not_sent`), no push accepted (capacity: when
    ///   its probes scheduled any);
    /// - push, churn, resume, deploy: a push due before the end of the run sent over
    ///   100 ms late after it (`pushes_sent_after_end`): the API stalled into the end, so
    ///   the schedule was not pushed within the run (a stall the driver caught up on
    ///   before the end shows in the latencies and passes; a capacity probe's slow API is
    ///   a figure of its step);
    /// - push, churn, capacity: a message missing, duplicated or unexpected, or a
    ///   receiver lost;
    /// - deploy: a client that did not reach the second server;
    /// - chat: a connected member that never joined its room, and the chat delivery gate
    ///   (`chat.delivery_ok`; pushes_sent is not asked for: chat members publish).
    ///
    /// Resume and deploy also fail on their own delivery gate (`delivery_ok`).
    pub fn judge(&mut self) -> i32 {
        let mut f = Vec::new();
        let mode = self.mode.as_str();
        let short = self
            .connections_target
            .saturating_sub(self.connections_opened);
        if mode == "capacity" {
            if self.max_connections_held.unwrap_or(self.connections_opened) == 0 {
                f.push("no connection opened".to_string());
            }
        } else if short > 0 {
            f.push(format!(
                "{short} of {} connections never opened",
                self.connections_target
            ));
        }
        let gone: u64 = self.disconnects.values().sum();
        if gone > 0 {
            f.push(format!(
                "{gone} open connections were ended by the server or the network ({})",
                causes(&self.disconnects)
            ));
        }
        let capacity = mode == "capacity";
        // A capacity run without a probe (--probe-rate 0) schedules no push.
        let probed = self.pushes_scheduled.is_some_and(|n| n > 0);
        if self.pushes_sent == Some(0) && (!capacity || probed) {
            f.push("no push was accepted: nothing was tested".to_string());
        }
        if let Some(errs) = self.push_errors.as_ref().filter(|m| !m.is_empty()) {
            let n: u64 = errs.values().sum();
            f.push(format!("{n} pushes failed (push_errors: {})", causes(errs)));
        }
        if let Some(n) = self.pushes_not_sent.filter(|&n| n > 0) {
            f.push(format!(
                "{n} of {} scheduled pushes were never sent: the push API held the driver \
                 past the end of the run and its 10 s grace",
                self.pushes_scheduled.unwrap_or(0)
            ));
        }
        if let Some(n) = self.pushes_sent_after_end.filter(|&n| n > 0 && !capacity) {
            f.push(format!(
                "{n} of {} scheduled pushes were sent after the end of the run, more than \
                 100 ms past their slot (the longest {}): the push API (or this load \
                 generator) stalled into the end, so the schedule was not pushed within \
                 --duration-secs",
                self.pushes_scheduled.unwrap_or(0),
                fmt_us(self.push_max_send_lag_us.unwrap_or(0))
            ));
        }
        // Direct pushes are checked by seq: one given up that the server delivered anyway
        // takes the seq the next accepted push was expected at (review s23-load N5).
        let given_up = self.push_errors.as_ref().is_some_and(|m| !m.is_empty());
        let direct = self
            .target
            .as_deref()
            .and_then(|t| <crate::client::Target as clap::ValueEnum>::from_str(t, false).ok())
            .is_some_and(crate::client::Target::direct);
        let by_seq = if given_up && direct {
            " (pushes were given up: one the server delivered anyway counts as 1 missing \
             and 1 unexpected, since direct pushes are checked by seq)"
        } else {
            ""
        };
        for (what, n) in [
            ("missing", self.messages_missing),
            ("duplicated", self.messages_duplicated),
            ("unexpected", self.messages_unexpected),
        ] {
            if let Some(n) = n.filter(|&n| n > 0) {
                let why = if what == "duplicated" { "" } else { by_seq };
                f.push(format!("{n} messages {what}{why}"));
            }
        }
        if let Some(n) = self.receivers_lost.filter(|&n| n > 0) {
            f.push(format!("{n} receivers lost"));
        }
        if let Some(errs) = self
            .churn_reconnect_errors
            .as_ref()
            .filter(|m| !m.is_empty())
        {
            let n: u64 = errs.values().sum();
            f.push(format!("{n} churn reconnects failed ({})", causes(errs)));
        }
        if let Some(d) = self.deploy.as_ref().filter(|d| d.not_moved > 0) {
            f.push(format!(
                "{} clients did not reach the second server",
                d.not_moved
            ));
        }
        if self.delivery_ok == Some(false) {
            f.push("pushes missing or duplicated across reconnects".to_string());
        }
        if let Some(c) = &self.chat {
            // Members that connected but were never answered `subscribed` published and
            // received nothing; the rooms' figures alone would not show them.
            let not_joined = self.connections_opened.saturating_sub(c.members_joined);
            if not_joined > 0 {
                f.push(format!(
                    "{not_joined} connected members never joined their room"
                ));
            }
            f.extend(
                c.problems()
                    .into_iter()
                    .map(|p| format!("chat delivery: {p}")),
            );
        }
        self.passed = Some(f.is_empty());
        self.failures = f;
        i32::from(self.passed == Some(false))
    }

    /// The human summary, printed to stdout.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let fmt_map = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "none".to_string()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        let h = &self.handshake_latency_us;
        s += &format!(
            "connections: opened {}/{} in {:.2}s ({:.0}/s), open at close {}, closed cleanly {}\n",
            self.connections_opened,
            self.connections_target,
            self.connect_secs,
            self.connect_rate_per_sec,
            self.connections_open_at_close,
            self.closed_clean
        );
        s += &format!(
            "handshake latency: p50 {} p99 {} max {}\n",
            fmt_us(h.p50),
            fmt_us(h.p99),
            fmt_us(h.max)
        );
        if let Some(t) = &self.tls {
            s += &t.summary();
        }
        s += &format!("connect errors: {}\n", fmt_map(&self.connect_errors));
        s += &format!("disconnects: {}\n", fmt_map(&self.disconnects));
        if !self.close_errors.is_empty() {
            s += &format!("close errors: {}\n", fmt_map(&self.close_errors));
        }
        if !self.server_errors.is_empty() {
            s += &format!("server errors: {}\n", fmt_map(&self.server_errors));
        }
        if let Some(r) = self.server_rss_bytes_per_conn {
            s += &format!(
                "server RSS: {} -> {} bytes, {:.0} bytes per connection ({} conns)\n",
                self.server_rss_bytes_before.unwrap_or(0),
                self.server_rss_bytes_after.unwrap_or(0),
                r,
                self.memory_conns.unwrap_or(0)
            );
        }
        if let Some(a) = self.server_anon_bytes_per_conn {
            s += &format!(
                "server anonymous RSS (RssAnon, without code pages): {a:.0} bytes per connection\n"
            );
        }
        if let Some(k) = self.kernel_tcp_bytes_per_conn {
            s += &format!(
                "kernel TCP buffer memory (sockstat, system-wide): {} -> {} bytes, {:.0} bytes per connection\n",
                self.kernel_tcp_bytes_before.unwrap_or(0),
                self.kernel_tcp_bytes_after.unwrap_or(0),
                k
            );
        }
        if let Some(k) = self.kernel_slab_bytes_per_conn {
            s += &format!(
                "kernel slab memory (system-wide, both loopback endpoints): {} -> {} bytes, {:.0} bytes per connection\n",
                self.kernel_slab_bytes_before.unwrap_or(0),
                self.kernel_slab_bytes_after.unwrap_or(0),
                k
            );
        }
        if let Some(c) = self.client_rss_bytes_per_conn {
            s += &format!("client RSS: {c:.0} bytes per connection\n");
        }
        let via = self.push_via.as_deref().unwrap_or("api");
        if let Some(sent) = self.pushes_sent {
            let of = self
                .pushes_scheduled
                .map_or(String::new(), |n| format!(" of {n} scheduled"));
            s += &format!(
                "pushes via {via}: {} accepted{of} in {:.1}s ({:.0}/s), {} requests, {} retries, errors: {}\n",
                sent,
                self.push_secs.unwrap_or(0.0),
                self.push_rate_per_sec.unwrap_or(0.0),
                self.push_requests.unwrap_or(0),
                self.push_retries.unwrap_or(0),
                fmt_map(self.push_errors.as_ref().unwrap_or(&BTreeMap::new()))
            );
            if let Some(late) = self.pushes_sent_late.filter(|&l| l > 0) {
                s += &format!(
                    "pushes sent more than 100ms after their slot at --rate: {late} (longest wait {}): the API fell behind the schedule\n",
                    fmt_us(self.push_max_send_lag_us.unwrap_or(0))
                );
            }
            if let Some(n) = self.pushes_sent_after_end.filter(|&n| n > 0) {
                s += &format!(
                    "pushes sent after the end of the run: {n} (due before it): the API stalled into the end\n"
                );
            }
            if let Some(n) = self.pushes_not_sent.filter(|&n| n > 0) {
                s += &format!(
                    "pushes never sent: {n} (their slots came before the end, but the API held the driver past it and the 10s grace)\n"
                );
            }
        }
        if let Some(exp) = self.messages_expected {
            s += &format!(
                "messages: expected {} received {} missing {} duplicated {} out-of-order {} unexpected {} late {} (receivers lost {})\n",
                exp,
                self.messages_received.unwrap_or(0),
                self.messages_missing.unwrap_or(0),
                self.messages_duplicated.unwrap_or(0),
                self.messages_out_of_order.unwrap_or(0),
                self.messages_unexpected.unwrap_or(0),
                self.messages_late.unwrap_or(0),
                self.receivers_lost.unwrap_or(0)
            );
            if self.messages_late.unwrap_or(0) > 0 {
                s += "late: delivered after --drain-secs ran out, while the connections closed (not missing; a longer --drain-secs waits for them)\n";
            }
            if let Some(l) = self.latency_us {
                let from = match self.latency_from.as_deref() {
                    Some("send") => "from send, unpaced",
                    _ => "from each push's slot at --rate",
                };
                s += &format!(
                    "push-to-client latency ({from}): p50 {} p90 {} p99 {} p99.9 {} max {}\n",
                    fmt_us(l.p50),
                    fmt_us(l.p90),
                    fmt_us(l.p99),
                    fmt_us(l.p999),
                    fmt_us(l.max)
                );
            }
            if let Some(a) = self.api_latency_us {
                let what = match via {
                    "kafka" => "Kafka produce-to-acknowledgement latency",
                    "redis_stream" => "push stream round-trip latency",
                    _ => "push API request latency",
                };
                s += &format!(
                    "{what} ({}): p50 {} p99 {} max {}\n",
                    if self.latency_from.as_deref() == Some("send") {
                        "from send"
                    } else {
                        "from slot"
                    },
                    fmt_us(a.p50),
                    fmt_us(a.p99),
                    fmt_us(a.max)
                );
            }
            s += &format!(
                "deliveries: {:.0}/s over {:.1}s\n",
                self.deliveries_per_sec.unwrap_or(0.0),
                self.delivery_secs.unwrap_or(0.0)
            );
        }
        if self.latency_stamps_ahead > 0 {
            s += &format!(
                "warning: {} latency samples had a stamp later than their receipt (counted as 0): pushes not from this run?\n",
                self.latency_stamps_ahead
            );
        }
        s += &self.compression.summary(self.tls.is_some());
        if let (Some(d), Some(_)) = (&self.deploy, self.churn_disconnects) {
            s += &format!(
                "reconnects: {} to the second server, reconnect errors: {}\n",
                d.moved,
                fmt_map(
                    self.churn_reconnect_errors
                        .as_ref()
                        .unwrap_or(&BTreeMap::new())
                )
            );
        } else if let (Some(d), Some(_)) = (self.churn_disconnects, &self.user_stream) {
            s += &format!(
                "reconnects: {} abrupt drops (TCP reset), {} reconnects, {} connections dropped at least once (all still counted), reconnect errors: {}\n",
                d,
                self.churn_reconnects.unwrap_or(0),
                self.churned_receivers.unwrap_or(0),
                fmt_map(self.churn_reconnect_errors.as_ref().unwrap_or(&BTreeMap::new()))
            );
        } else if let Some(d) = self.churn_disconnects {
            s += &format!(
                "churn: {} disconnects, {} reconnects, {} connections churned (left out of messages), reconnect errors: {}\n",
                d,
                self.churn_reconnects.unwrap_or(0),
                self.churned_receivers.unwrap_or(0),
                fmt_map(self.churn_reconnect_errors.as_ref().unwrap_or(&BTreeMap::new()))
            );
        }
        for (name, st) in [("user", &self.user_stream), ("topic", &self.topic_stream)] {
            let Some(st) = st else { continue };
            if st.streams == 0 {
                continue;
            }
            s += &format!(
                "{name} streams: {} tracked, expected {} delivered {} not replayed {} missing {} duplicated {} out-of-order {} unexpected {}; resumed true {} (owing {} replayed pushes) false {} ({})\n",
                st.streams,
                st.tally.expected,
                st.tally.delivered,
                st.not_replayed,
                st.tally.missing,
                st.tally.duplicated,
                st.tally.out_of_order,
                st.tally.unexpected,
                st.resumed_true,
                st.replayed,
                st.resumed_false,
                fmt_map(&st.resumed_false_because)
            );
            if st.not_replayed > 0 {
                s += &format!(
                    "{name} streams: {} pushes not replayed: a resume was answered resumed:false (history_not_held) for them, so the client reloads its state instead; not missing, not a failure\n",
                    st.not_replayed
                );
            }
            if st.resumed_false > st.resumed_true {
                s += &format!(
                    "warning: {} of {} {name} resumes were answered resumed:false: replay was barely tested (history_size or history_ttl_ms does not cover --offline-ms at this push rate)\n",
                    st.resumed_false,
                    st.resumed_true + st.resumed_false
                );
            }
        }
        if let Some(d) = &self.deploy {
            s += &d.summary();
        }
        if let Some(c) = &self.chat {
            s += &c.summary();
        }
        if let Some(ok) = self.delivery_ok {
            let not_replayed: u64 = [&self.user_stream, &self.topic_stream]
                .into_iter()
                .flatten()
                .map(|st| st.not_replayed)
                .sum();
            s += &if ok && self.pushes_sent == Some(0) {
                "delivery across reconnects: not tested (no push was accepted)\n".to_string()
            } else if ok && not_replayed > 0 {
                format!("delivery across reconnects: nothing missing, nothing duplicated ({not_replayed} not replayed after resumed:false, as the server said)\n")
            } else if ok {
                "delivery across reconnects: nothing missing, nothing duplicated\n".to_string()
            } else {
                "delivery across reconnects: FAILED (pushes missing or duplicated; exit status 1)\n"
                    .to_string()
            };
        }
        if let Some(steps) = &self.steps {
            for (i, st) in steps.iter().enumerate() {
                s += &step_line(i, st, false);
            }
        }
        if let Some(why) = &self.stopped_because {
            s += &format!(
                "stopped: {why} (most connections held: {})\n",
                self.max_connections_held.unwrap_or(0)
            );
        }
        match self.passed {
            Some(true) => s += "result: OK\n",
            Some(false) => {
                s += &format!(
                    "result: FAILED (exit status 1): {}\n",
                    self.failures.join("; ")
                )
            }
            None => {}
        }
        s
    }
}

/// One human line for a capacity step; `live` while the ramp runs (latencies are known
/// only once the event loops have handed in their histograms).
pub fn step_line(i: usize, st: &Step, live: bool) -> String {
    let per = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.0}"));
    let l = &st.latency_us;
    let lat = if live {
        "after the run".into()
    } else if l.count > 0 {
        format!(
            "p50 {} p99 {} p99.9 {} max {} ({} msgs)",
            fmt_us(l.p50),
            fmt_us(l.p99),
            fmt_us(l.p999),
            fmt_us(l.max),
            l.count
        )
    } else {
        "no probe deliveries".into()
    };
    format!(
        "step {:>3}: {:>7} conns | bytes/conn: server RSS {} kernel TCP {} slab {} | latency {} | probe pushes {}\n",
        i + 1,
        st.connections,
        per(st.server_rss_bytes_per_conn),
        per(st.kernel_tcp_bytes_per_conn),
        per(st.kernel_slab_bytes_per_conn),
        lat,
        st.probe_pushes
    )
}

#[cfg(test)]
mod step_tests {
    use super::*;

    #[test]
    fn step_histograms_merge_per_index() {
        let a = Report {
            raw_step_latency: vec![vec![(100, 3)], vec![(1000, 1)]],
            ..Default::default()
        };
        let b = Report {
            raw_step_latency: vec![vec![(200, 1)], vec![], vec![(5000, 2)]],
            ..Default::default()
        };
        let m = Report::merge(&[a, b]);
        assert_eq!(m.raw_step_latency.len(), 3);
        assert_eq!(m.step_latency(0).count, 4);
        assert_eq!(m.step_latency(1).count, 1);
        assert_eq!(m.step_latency(2).count, 2);
        assert!(m.step_latency(2).p50 >= 4990);
        assert_eq!(m.step_latency(7).count, 0);
    }

    #[test]
    fn churn_fields_merge() {
        let mut a = Report {
            churn_disconnects: Some(5),
            churn_reconnects: Some(4),
            churned_receivers: Some(3),
            ..Default::default()
        };
        a.churn_reconnect_errors = Some(BTreeMap::from([("eof".to_string(), 1)]));
        let m = Report::merge(&[a.clone(), a]);
        assert_eq!(m.churn_disconnects, Some(10));
        assert_eq!(m.churn_reconnects, Some(8));
        assert_eq!(m.churned_receivers, Some(6));
        assert_eq!(m.churn_reconnect_errors.unwrap()["eof"], 2);
        let plain = Report::merge(&[Report::default()]);
        let j = serde_json::to_value(&plain).unwrap();
        assert!(j.get("churn_disconnects").is_none());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_report_has_the_compression_section() {
        let plain = Report::default();
        let j = serde_json::to_value(&plain).unwrap();
        for k in [
            "offered",
            "negotiated_connections",
            "wire_bytes",
            "payload_bytes",
            "wire_bytes_per_delivery",
            "compressed_frames",
        ] {
            assert!(j["compression"].get(k).is_some(), "{k} in {j}");
        }
        assert!(plain
            .summary()
            .contains("\ncompression: off; wire bytes 0 "));
        // Workers' sections add up, and the per-delivery figure is recomputed.
        let mut t = ThreadOut::new();
        t.wire = crate::deflate::WireStats::new(true);
        t.wire.wire_bytes = 3000;
        t.wire.deliveries = 4;
        t.wire.compressed_frames = 4;
        let mut a = Report::default();
        a.fill_closed(&t, None, false);
        t.wire.deliveries = 2;
        let mut b = Report::default();
        b.fill_closed(&t, None, false);
        let m = Report::merge(&[a, b]);
        let c = &m.compression;
        assert!(c.offered);
        assert_eq!(
            (c.wire_bytes, c.deliveries, c.compressed_frames),
            (6000, 6, 8)
        );
        assert_eq!(c.wire_bytes_per_delivery, Some(1000.0));
        let back: Report = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back.compression, m.compression);
        // A report without the section (an older worker) still reads.
        let old: Report = serde_json::from_str(r#"{"mode":"connect","procs":1,"connections_target":0,"connections_opened":0,"connections_open_at_close":0,"connect_errors":{},"disconnects":{},"close_errors":{},"server_errors":{},"closed_clean":0,"connect_secs":0,"connect_rate_per_sec":0,"handshake_latency_us":{"count":0,"p50":0,"p90":0,"p99":0,"p999":0,"max":0,"mean":0},"pings_answered":0,"subscriptions_confirmed":0,"client_rss_delta_bytes":0}"#).unwrap();
        assert_eq!(
            old.compression,
            crate::deflate::CompressionReport::default()
        );
    }

    #[test]
    fn not_replayed_pushes_are_reported_apart_and_pass() {
        let topic = StreamTotals {
            streams: 4,
            tally: crate::track::Tally {
                expected: 100,
                delivered: 70,
                received: 70,
                ..Default::default()
            },
            not_replayed: 30,
            resumed_true: 1,
            resumed_false: 3,
            resumed_false_because: [("history_not_held".to_string(), 3)].into(),
            ..Default::default()
        };
        let r = Report {
            mode: "resume".into(),
            pushes_sent: Some(25),
            topic_stream: Some(topic),
            delivery_ok: Some(true),
            ..Default::default()
        };
        let s = r.summary();
        assert!(
            s.contains("expected 100 delivered 70 not replayed 30 missing 0"),
            "{s}"
        );
        assert!(s.contains("30 pushes not replayed: a resume was answered resumed:false"));
        assert!(s.contains("warning: 3 of 4 topic resumes were answered resumed:false"));
        assert!(s.contains("nothing missing, nothing duplicated (30 not replayed"));
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["topic_stream"]["not_replayed"], 30);
        assert_eq!(j["topic_stream"]["missing"], 0);
    }

    /// A push-mode report whose run went well: `n` pushes scheduled and accepted.
    fn pushed(mode: &str, n: u64) -> Report {
        Report {
            mode: mode.into(),
            connections_target: 10,
            connections_opened: 10,
            pushes_sent: Some(n),
            pushes_accepted: Some(n),
            pushes_scheduled: Some(n),
            pushes_not_sent: Some(0),
            pushes_sent_late: Some(0),
            pushes_sent_after_end: Some(0),
            push_errors: Some(BTreeMap::new()),
            messages_missing: Some(0),
            churn_reconnect_errors: Some(BTreeMap::new()),
            ..Default::default()
        }
    }

    #[test]
    fn a_resume_client_that_never_came_back_fails() {
        // Review s23 B2: resume and deploy ignored reconnects that failed and open
        // connections the server ended.
        for mode in ["resume", "deploy", "churn", "push"] {
            let mut r = pushed(mode, 100);
            assert_eq!(r.judge(), 0, "{mode}: {:?}", r.failures);
            r.churn_reconnect_errors =
                Some(BTreeMap::from([("http_503_over_capacity".to_string(), 10)]));
            r.disconnects.insert("close_4003".into(), 1);
            assert_eq!(r.judge(), 1, "{mode}");
            assert!(
                r.failures.contains(
                    &"10 churn reconnects failed (http_503_over_capacity=10)".to_string()
                ),
                "{mode}: {:?}",
                r.failures
            );
            assert!(
                r.failures.contains(
                    &"1 open connections were ended by the server or the network \
                      (close_4003=1)"
                        .to_string()
                ),
                "{mode}: {:?}",
                r.failures
            );
        }
    }

    #[test]
    fn a_given_up_direct_push_says_why_it_may_count_missing() {
        // Review s23-load N5: a given-up direct push the server delivered anyway shifts
        // the user's seq, so the last accepted one reads missing and it unexpected.
        let mut r = pushed("push", 100);
        r.target = Some("user".into());
        r.push_errors = Some(BTreeMap::from([("api_timeout".to_string(), 1)]));
        r.messages_missing = Some(1);
        r.messages_unexpected = Some(1);
        assert_eq!(r.judge(), 1);
        let why = "(pushes were given up: one the server delivered anyway counts as 1 \
                   missing and 1 unexpected, since direct pushes are checked by seq)";
        for what in ["missing", "unexpected"] {
            let line = format!("1 messages {what} {why}");
            assert!(r.failures.contains(&line), "{line}: {:?}", r.failures);
        }
        // Not without a push given up, nor for topics (checked by accepted number).
        r.target = Some("topic".into());
        r.judge();
        assert!(
            r.failures.contains(&"1 messages missing".to_string()),
            "{:?}",
            r.failures
        );
        r.target = Some("user".into());
        r.push_errors = Some(BTreeMap::new());
        r.judge();
        assert!(
            r.failures.contains(&"1 messages missing".to_string()),
            "{:?}",
            r.failures
        );
    }

    #[test]
    fn pushes_not_sent_or_sent_late_fail_the_run() {
        // Review s23 B1: pushes the driver could not send (or sent long after their
        // slot) were left out, and the run passed.
        let mut r = pushed("push", 3000);
        r.pushes_sent = Some(1451);
        r.pushes_not_sent = Some(1549);
        assert_eq!(r.judge(), 1);
        assert!(
            r.failures[0].starts_with("1549 of 3000 scheduled pushes were never sent"),
            "{:?}",
            r.failures
        );
        assert!(r
            .summary()
            .contains("pushes via api: 1451 accepted of 3000 scheduled"));
        // Sent late, but caught up on before the end (a stall mid-run): the latencies
        // count the wait, and the run passes. Sent late after the end: it fails.
        let mut r = pushed("push", 3000);
        r.pushes_sent_late = Some(1549);
        r.pushes_sent_after_end = Some(0);
        assert_eq!(r.judge(), 0, "{:?}", r.failures);
        r.pushes_sent_after_end = Some(1549);
        r.push_max_send_lag_us = Some(8_000_000);
        assert_eq!(r.judge(), 1);
        assert!(
            r.failures[0].starts_with(
                "1549 of 3000 scheduled pushes were sent after the end of the run, more than \
                 100 ms past their slot (the longest 8000.0ms)"
            ),
            "{:?}",
            r.failures
        );
        // A capacity probe's slow API is a figure of its step, not a failure.
        let mut r = pushed("capacity", 3000);
        r.max_connections_held = Some(10);
        r.pushes_sent_late = Some(3000);
        r.pushes_sent_after_end = Some(3000);
        assert_eq!(r.judge(), 0, "{:?}", r.failures);
        // Unpaced runs have no schedule, so nothing is late or unsent.
        let mut r = pushed("push", 3000);
        r.pushes_scheduled = None;
        assert_eq!(r.judge(), 0, "{:?}", r.failures);
    }

    #[test]
    fn a_capacity_probe_that_cannot_push_fails() {
        // Review s23 B3: capacity left push errors out of its verdict.
        let mut r = pushed("capacity", 300);
        r.max_connections_held = Some(300);
        r.pushes_sent = Some(0);
        r.push_errors = Some(BTreeMap::from([("http_401_unauthorized".to_string(), 300)]));
        assert_eq!(r.judge(), 1);
        assert_eq!(
            r.failures,
            [
                "no push was accepted: nothing was tested",
                "300 pushes failed (push_errors: http_401_unauthorized=300)"
            ]
        );
        // Without a probe (--probe-rate 0) nothing is scheduled, and none is asked for.
        let mut r = Report {
            mode: "capacity".into(),
            max_connections_held: Some(300),
            pushes_sent: Some(0),
            push_errors: Some(BTreeMap::new()),
            ..Default::default()
        };
        assert_eq!(r.judge(), 0, "{:?}", r.failures);
    }

    #[test]
    fn new_push_fields_merge_across_workers() {
        let mut a = pushed("push", 10);
        a.pushes_not_sent = Some(2);
        a.latency_stamps_ahead = 1;
        a.messages_expected = Some(10);
        let m = Report::merge(&[a.clone(), a]);
        assert_eq!(m.pushes_accepted, Some(20));
        assert_eq!(m.pushes_scheduled, Some(20));
        assert_eq!(m.pushes_not_sent, Some(4));
        assert_eq!(m.latency_stamps_ahead, 2);
        assert!(m
            .summary()
            .contains("warning: 2 latency samples had a stamp later"));
        let j = serde_json::to_value(&m).unwrap();
        assert_eq!(j["pushes_sent"], j["pushes_accepted"]);
    }

    #[test]
    fn merge_sums_and_recomputes() {
        let mut a = Report {
            mode: "push".into(),
            connections_target: 10,
            connections_opened: 10,
            connect_secs: 1.0,
            messages_expected: Some(100),
            messages_received: Some(99),
            messages_missing: Some(1),
            pushes_sent: Some(10),
            raw_handshake: vec![(100, 10)],
            raw_latency: vec![(500, 99)],
            ..Default::default()
        };
        a.connect_errors.insert("http_503_over_capacity".into(), 2);
        let mut b = a.clone();
        b.connect_secs = 2.0;
        b.connect_errors.insert("connection_refused".into(), 1);
        let m = Report::merge(&[a, b]);
        assert_eq!(m.procs, 2);
        assert_eq!(m.connections_opened, 20);
        assert_eq!(m.connect_rate_per_sec, 10.0);
        assert_eq!(m.connect_errors["http_503_over_capacity"], 4);
        assert_eq!(m.connect_errors["connection_refused"], 1);
        assert_eq!(m.messages_missing, Some(2));
        assert_eq!(m.handshake_latency_us.count, 20);
        assert_eq!(m.latency_us.unwrap().count, 198);
        let j = serde_json::to_value(&m).unwrap();
        assert!(j.get("messages_missing").is_some());
        assert!(j["handshake_latency_us"].get("p99").is_some());
    }
}
