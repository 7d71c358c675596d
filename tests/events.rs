//! docs/protocol.md 6: client `send` messages and lifecycle events POSTed to `events_url`
//! (standalone), batched, in order per session, retried while the upstream fails, and
//! refused with `overloaded` (never dropped in silence) when the queue is full. A batch
//! the upstream fails on is halved, and one event it always fails on is dropped, so
//! nothing blocks the events behind it for good; a redirect is not delivery.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// What an upstream does and saw; its connections share it.
#[derive(Default)]
struct State {
    /// Events of the batches answered 2xx.
    events: Mutex<Vec<Value>>,
    /// The answer's status (0: 200).
    status: AtomicU16,
    /// `POST /events` requests answered.
    requests: AtomicU64,
    /// `POST /events` requests whose head was read (answered or not yet).
    started: AtomicU64,
    /// Connections accepted.
    connections: AtomicU64,
    /// Requests other than `POST /events` (a redirect followed), each answered 200.
    strays: AtomicU64,
    /// The last `Authorization` header.
    authorization: Mutex<Option<String>>,
    /// The body of every answer.
    answer_body: Mutex<String>,
    /// A batch holding this text is answered 500.
    poison: Mutex<Option<String>>,
    /// A batch holding this text is answered after a second.
    hold: Mutex<Option<String>>,
    /// A batch of more than one event is processed (and stored) for this long before
    /// it is answered.
    slow_batches: Mutex<Option<Duration>>,
}

/// A small HTTP upstream: records the events of each POST it answers 2xx, answers with
/// `status` (and `Location: /moved` on a 3xx), and remembers the last `Authorization`
/// header.
struct Upstream {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
}

impl std::ops::Deref for Upstream {
    type Target = State;

    fn deref(&self) -> &State {
        &self.state
    }
}

impl Upstream {
    fn start() -> Upstream {
        Upstream::start_with(None)
    }

    /// An upstream on https:// with `pair`'s certificate.
    fn start_tls(pair: &common::tls::CertPair) -> Upstream {
        Upstream::start_with(Some(pair.server_config()))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let up = Upstream {
            addr: listener.local_addr().expect("addr"),
            state: Arc::default(),
            stop: Arc::default(),
        };
        up.status.store(200, Relaxed);
        let (state, stop) = (Arc::clone(&up.state), Arc::clone(&up.stop));
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        state.connections.fetch_add(1, Relaxed);
                        let state = Arc::clone(&state);
                        let tls = tls.clone();
                        std::thread::spawn(move || match tls {
                            None => serve(s, &state),
                            Some(config) => {
                                let Ok(conn) = rustls::ServerConnection::new(config) else {
                                    return;
                                };
                                let s = rustls::StreamOwned::new(conn, s);
                                serve(s, &state)
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        up
    }

    fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    fn https_url(&self) -> String {
        format!("https://localhost:{}/events", self.addr.port())
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until `n` events have arrived; returns them.
    fn wait_events(&self, n: usize) -> Vec<Value> {
        self.wait_events_within(n, WAIT)
    }

    /// Waits up to `timeout` until `n` events have arrived; returns them.
    fn wait_events_within(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let ok = wait_until(timeout, || self.events.lock().unwrap().len() >= n);
        let got = self.events();
        assert!(ok, "expected {n} events, got {}: {got:?}", got.len());
        got
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// One keep-alive connection of the upstream.
fn serve<S: Read + Write>(s: S, state: &State) {
    let mut r = BufReader::new(s);
    loop {
        let mut len = 0usize;
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let stray = !line.starts_with("POST /events ");
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (name, value) = l.split_once(':').expect("header");
            match name.to_ascii_lowercase().as_str() {
                "content-length" => len = value.trim().parse().expect("length"),
                "authorization" => {
                    *state.authorization.lock().unwrap() = Some(value.trim().to_string())
                }
                _ => {}
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let answer = state.answer_body.lock().unwrap().clone();
        let mut st = state.status.load(Relaxed);
        if stray {
            state.strays.fetch_add(1, Relaxed);
            st = 200;
        } else {
            state.started.fetch_add(1, Relaxed);
            let text = String::from_utf8_lossy(&body).into_owned();
            let has = |m: &Mutex<Option<String>>| {
                m.lock()
                    .unwrap()
                    .as_ref()
                    .is_some_and(|t| text.contains(t.as_str()))
            };
            if has(&state.hold) {
                std::thread::sleep(Duration::from_secs(1));
            }
            if has(&state.poison) {
                st = 500;
            }
            let batch: Vec<Value> = serde_json::from_slice(&body).expect("a JSON array");
            assert!(!batch.is_empty(), "an empty batch was POSTed");
            if batch.len() > 1 {
                if let Some(d) = *state.slow_batches.lock().unwrap() {
                    std::thread::sleep(d);
                }
            }
            state.requests.fetch_add(1, Relaxed);
            if (200..300).contains(&st) {
                state.events.lock().unwrap().extend(batch);
            }
        }
        let location = if (300..400).contains(&st) {
            "Location: /moved\r\n"
        } else {
            ""
        };
        let resp = format!(
            "HTTP/1.1 {st} X\r\n{location}Content-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        let w = r.get_mut();
        if w.write_all(resp.as_bytes())
            .and_then(|()| w.flush())
            .is_err()
        {
            return;
        }
    }
}

fn without_ts(mut e: Value) -> Value {
    assert!(
        e["ts"].as_u64().is_some_and(|t| t > 1_700_000_000_000),
        "{e}"
    );
    e.as_object_mut().unwrap().remove("ts");
    e
}

#[test]
fn send_is_answered_sent_and_posted_with_user_session_node_and_time() {
    let up = Upstream::start();
    let url = up.url();
    let srv = TestServer::start(&["--events-url", &url, "--events-key", "ev-secret"]);
    let mut alice = srv.connect("alice");
    let session = alice.welcome["session"].clone();
    for i in 0..3 {
        alice.send(json!({"type": "send", "data": {"n": i, "text": "hé"}, "ref": i}));
        assert_eq!(alice.recv(), json!({"type": "sent", "ref": i}));
    }
    let got = up.wait_events(3);
    let node = srv.ws.to_string();
    for (i, e) in got.into_iter().enumerate() {
        assert_eq!(
            without_ts(e),
            json!({"type": "send", "user": "alice", "session": session, "node": node,
                   "data": {"n": i, "text": "hé"}})
        );
    }
    assert_eq!(
        up.authorization.lock().unwrap().as_deref(),
        Some("Bearer ev-secret")
    );
    let s = srv.stats();
    assert_eq!(s["events"]["delivered"], 3, "{s}");
    assert_eq!(s["events"]["up"], 1, "{s}");
    // Without lifecycle_events, connects and disconnects are not sent.
    drop(alice);
    srv.wait_connections(0);
    alice = srv.connect("alice");
    alice.barrier("b");
    assert_eq!(up.events().len(), 3);
}

#[test]
fn lifecycle_events_follow_each_session_in_order() {
    let up = Upstream::start();
    let url = up.url();
    let srv = TestServer::start(&[
        "--events-url",
        &url,
        "--lifecycle-events",
        "--public-topics",
        "room:*",
    ]);
    let mut a = srv.connect("a");
    let sa = a.welcome["session"].as_str().unwrap().to_string();
    a.send(json!({"type": "subscribe", "topic": "room:1"}));
    a.recv();
    // Subscribing again changes nothing: no event.
    a.send(json!({"type": "subscribe", "topic": "room:1"}));
    a.recv();
    a.send(json!({"type": "send", "data": null}));
    a.recv();
    a.send(json!({"type": "unsubscribe", "topic": "room:1"}));
    a.recv();
    a.ws.close(None).expect("close");
    assert!(matches!(a.expect_close(), Closed::Code(_)));
    // A client that vanishes without a close: 1006. One closed by the API: 4003.
    let b = srv.connect("b");
    let sb = b.welcome["session"].as_str().unwrap().to_string();
    drop(b);
    let mut c = srv.connect("c");
    let sc = c.welcome["session"].as_str().unwrap().to_string();
    let r = srv.api("POST", "/v1/disconnect", Some(r#"{"user":"c"}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.expect_close(), Closed::Code(Some(4003)));

    let got = up.wait_events(9);
    let of = |s: &str| -> Vec<Value> {
        got.iter()
            .filter(|e| e["session"] == s)
            .map(|e| {
                let mut e = without_ts(e.clone());
                let o = e.as_object_mut().unwrap();
                o.remove("session");
                o.remove("node");
                e
            })
            .collect()
    };
    assert_eq!(
        of(&sa),
        vec![
            json!({"type": "connect", "user": "a"}),
            json!({"type": "subscribe", "user": "a", "topic": "room:1"}),
            json!({"type": "send", "user": "a", "data": null}),
            json!({"type": "unsubscribe", "user": "a", "topic": "room:1"}),
            json!({"type": "disconnect", "user": "a", "code": 1005}),
        ]
    );
    assert_eq!(
        of(&sb),
        vec![
            json!({"type": "connect", "user": "b"}),
            json!({"type": "disconnect", "user": "b", "code": 1006}),
        ]
    );
    assert_eq!(
        of(&sc),
        vec![
            json!({"type": "connect", "user": "c"}),
            json!({"type": "disconnect", "user": "c", "code": 4003}),
        ]
    );
}

#[test]
fn a_failing_upstream_is_retried_and_a_full_queue_refuses_sends_without_slowing_pushes() {
    let up = Upstream::start();
    up.status.store(503, Relaxed);
    let url = up.url();
    let srv = TestServer::start(&[
        "--events-url",
        &url,
        "--events-queue",
        "5",
        "--client-rate",
        "0",
    ]);
    let mut a = srv.connect("a");
    // The first event is taken from the queue and retried; five more fill the queue.
    let mut sent = 0;
    let mut refused = 0;
    for i in 0..40 {
        a.send(json!({"type": "send", "data": i, "ref": i}));
        let m = a.recv();
        match m["type"].as_str() {
            Some("sent") => sent += 1,
            Some("error") => {
                assert_eq!(m["code"], "overloaded", "{m}");
                assert_eq!(m["ref"], i, "{m}");
                refused += 1;
                break;
            }
            _ => panic!("unexpected {m}"),
        }
        // Each refusal counts toward the 1008 close; stop at the first.
    }
    assert_eq!(refused, 1);
    assert!(
        (5..=6).contains(&sent),
        "sent {sent} before the queue was full"
    );
    srv.wait_stats("failures seen", |s| {
        s["events"]["failures"].as_u64() >= Some(2) && s["events"]["up"] == 0
    });
    // Pushes do not wait for the events upstream.
    let r = srv.push_wait(json!({"user": "a", "data": "still here"}));
    assert_eq!(r["delivered"], 1, "{r}");
    assert_eq!(a.recv()["data"], "still here");
    assert!(up.requests.load(Relaxed) >= 2);
    assert!(up.events().is_empty());
    // The upstream recovers: everything that was answered `sent` arrives, in order.
    up.status.store(204, Relaxed);
    let got = up.wait_events(sent);
    let data: Vec<Value> = got.iter().map(|e| e["data"].clone()).collect();
    assert_eq!(data, (0..sent).map(|i| json!(i)).collect::<Vec<_>>());
    let s = srv.wait_stats("up again", |s| s["events"]["up"] == 1);
    assert_eq!(s["events"]["refused"], 1, "{s}");
    assert_eq!(s["events"]["queued"], 0, "{s}");
    a.send(json!({"type": "send", "data": "after", "ref": "x"}));
    assert_eq!(a.recv()["type"], "sent");
    assert_eq!(up.wait_events(sent + 1)[sent]["data"], "after");
}

#[test]
fn a_batch_refused_for_good_is_dropped_and_counted_and_the_next_goes_through() {
    let up = Upstream::start();
    up.status.store(400, Relaxed);
    let url = up.url();
    let srv = TestServer::start(&["--events-url", &url]);
    let mut a = srv.connect("a");
    a.send(json!({"type": "send", "data": "refused"}));
    assert_eq!(a.recv()["type"], "sent");
    srv.wait_stats("dropped", |s| s["events"]["dropped"] == 1);
    up.status.store(200, Relaxed);
    a.send(json!({"type": "send", "data": "taken"}));
    assert_eq!(a.recv()["type"], "sent");
    let got = up.wait_events(1);
    assert_eq!(got[0]["data"], "taken");
}

#[test]
fn send_needs_an_upstream_and_respects_the_data_limit() {
    let srv = TestServer::start(&[]);
    let mut a = srv.connect("a");
    a.send(json!({"type": "send", "data": 1, "ref": 1}));
    let e = a.recv();
    assert_eq!(
        (&e["code"], &e["ref"]),
        (&json!("unavailable"), &json!(1)),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("events_url"), "{e}");

    let up = Upstream::start();
    let url = up.url();
    let srv = TestServer::start(&["--events-url", &url, "--max-client-data-bytes", "10"]);
    let mut a = srv.connect("a");
    a.send(json!({"type": "send", "data": "0123456789", "ref": 2}));
    let e = a.recv();
    assert_eq!(
        (&e["code"], &e["ref"]),
        (&json!("too_large"), &json!(2)),
        "{e}"
    );
    a.send(json!({"type": "send", "ref": 3}));
    assert_eq!(a.recv()["code"], "bad_json");
    a.send(json!({"type": "send", "data": "01234567", "ref": 4}));
    assert_eq!(a.recv(), json!({"type": "sent", "ref": 4}));
}

#[test]
fn bad_events_settings_are_refused_by_name() {
    let dir = common::tls::TlsDir::new("events-ca-bad");
    let empty = dir.path("empty.pem");
    std::fs::write(&empty, "no certificate here\n").expect("write");
    let missing = dir.path("missing.pem");
    let https = "https://localhost:1/events";
    assert_config_refused(&[
        (&["--events-url", "ftp://x/"], "events_url"),
        (&["--events-url", "http:///path"], "events_url"),
        (&["--events-url", "http://127.0.0.1:99999/x"], "events_url"),
        (&["--events-url", "http://127.0.0.1:0/x"], "events_url"),
        (&["--events-url", "http://127.0.0.1:abc/x"], "events_url"),
        (&["--events-url", "http://[::1/x"], "events_url"),
        (&["--events-url", "http://user@/x"], "events_url"),
        (
            &["--events-url", "http://x/", "--events-key", "abc\ndef"],
            "events_key",
        ),
        (
            &["--events-url", "http://x/", "--events-key", "secret\n"],
            "visible ASCII",
        ),
        (
            &["--events-url", "http://x/", "--events-key", "two words"],
            "events_key",
        ),
        (
            &["--events-url", "http://x/", "--events-queue", "0"],
            "greater than 0",
        ),
        // Settings of an upstream that is not set (review s21c).
        (&["--events-key", "k"], "used only with events_url"),
        (&["--events-queue", "9"], "neither is set"),
        (&["--events-maxlen", "0"], "events_maxlen"),
        (&["--events-ca", dir.cert_path()], "events_ca"),
        (
            &["--events-url", "http://x/", "--events-ca", dir.cert_path()],
            "is for an https:// events_url",
        ),
        (
            &["--events-url", https, "--events-ca", &missing],
            "cannot read",
        ),
        (
            &["--events-url", https, "--events-ca", &empty],
            "holds no PEM certificate",
        ),
        (
            &["--events-url", https, "--events-ca", dir.key_path()],
            "holds no PEM certificate",
        ),
    ]);
}

#[test]
fn events_reach_an_https_upstream_verified_against_events_ca() {
    let dir = common::tls::TlsDir::new("events-ca");
    let up = Upstream::start_tls(&dir.pair);
    let url = up.https_url();
    let srv = TestServer::start(&["--events-url", &url, "--events-ca", dir.cert_path()]);
    let mut alice = srv.connect("alice");
    alice.send(json!({"type": "send", "data": "over https", "ref": 1}));
    assert_eq!(alice.recv(), json!({"type": "sent", "ref": 1}));
    let got = up.wait_events(1);
    assert_eq!(got[0]["data"], "over https", "{got:?}");
    assert_eq!(got[0]["user"], "alice", "{got:?}");
}

#[test]
fn sighup_reloads_events_ca_and_keeps_the_roots_when_the_file_is_bad() {
    use common::tls::{metric, wait_metric, CertPair, ServeProc, TlsDir};
    let dir = TlsDir::new("events-ca-reload");
    let up = Upstream::start_tls(&dir.pair);
    // events_ca starts out holding another certificate: the upstream is not trusted.
    let ca = dir.path("ca.pem");
    std::fs::write(&ca, CertPair::generate().cert_pem).unwrap();
    let mut p = ServeProc::spawn(&["--events-url", &up.https_url(), "--events-ca", &ca]);
    let (ws, api) = p.listening();
    let mut alice = Client::connect(ws, &token("alice")).expect("alice connects");
    alice.send(json!({"type": "send", "data": "first", "ref": 1}));
    assert_eq!(alice.recv()["type"], "sent");
    let failed = wait_until(WAIT, || metric(api, "throng_events_failures_total") >= 1);
    assert!(failed, "the untrusted upstream never failed a delivery");
    assert_eq!(up.requests.load(Relaxed), 0);

    // The upstream's CA in the file, SIGHUP: the waiting event goes through.
    std::fs::write(&ca, &dir.pair.cert_pem).unwrap();
    p.signal(libc::SIGHUP);
    p.find(WAIT, |l| l.contains("events_ca reloaded").then_some(()));
    assert_eq!(up.wait_events(1)[0]["data"], "first");
    assert_eq!(metric(api, "throng_events_ca_reloads_total"), 1);

    // A file that is not PEM: the reload fails, names the file, and the roots stay.
    std::fs::write(&ca, "not a certificate\n").unwrap();
    p.signal(libc::SIGHUP);
    let line = p.find(WAIT, |l| {
        l.contains("events_ca not reloaded").then(|| l.to_string())
    });
    assert!(line.contains(&ca), "the log names the file: {line}");
    wait_metric(api, "throng_events_ca_reload_errors_total", 1, WAIT);
    alice.send(json!({"type": "send", "data": "second", "ref": 2}));
    assert_eq!(alice.recv()["type"], "sent");
    assert_eq!(up.wait_events(2)[1]["data"], "second");
}

#[test]
fn an_https_upstream_outside_the_trusted_roots_gets_nothing() {
    // The same self-signed upstream, verified against the bundled roots: the TLS
    // handshake fails, so no request is made, and the failure shows as for any
    // unreachable upstream.
    let dir = common::tls::TlsDir::new("events-no-ca");
    let up = Upstream::start_tls(&dir.pair);
    let url = up.https_url();
    let srv = TestServer::start(&["--events-url", &url]);
    let mut alice = srv.connect("alice");
    alice.send(json!({"type": "send", "data": 1, "ref": 1}));
    assert_eq!(alice.recv()["type"], "sent");
    srv.wait_stats("failed", |s| s["events"]["failures"].as_u64() >= Some(1));
    assert_eq!(up.requests.load(Relaxed), 0);
    assert!(up.events().is_empty());
}

#[test]
fn an_unreachable_upstream_shows_in_metrics_and_pushes_go_on() {
    // A port nobody listens on: connections are refused.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/events", closed.local_addr().expect("addr"));
    drop(closed);
    let srv = TestServer::start(&["--events-url", &url, "--events-queue", "3"]);
    let mut a = srv.connect("a");
    for i in 0..3 {
        a.send(json!({"type": "send", "data": i, "ref": i}));
        assert_eq!(a.recv()["type"], "sent");
    }
    a.send(json!({"type": "send", "data": 3, "ref": 3}));
    assert_eq!(a.recv()["code"], "overloaded");
    srv.wait_stats("retried", |s| s["events"]["failures"].as_u64() >= Some(2));
    let metrics = srv.api("GET", "/metrics", None).text();
    assert!(metrics.contains("throng_events_up 0"), "{metrics}");
    assert!(metrics.contains("throng_events_queued 3"), "{metrics}");
    let r = srv.push_wait(json!({"user": "a", "data": "push"}));
    assert_eq!(r["delivered"], 1, "{r}");
    assert_eq!(a.recv()["data"], "push");
}

#[test]
fn good_events_urls_and_keys_are_taken() {
    for url in [
        "http://127.0.0.1:8080/events",
        "https://[::1]:443/x?y=1",
        "http://upstream/events",
        "https://user@upstream.example/events",
    ] {
        let args = [
            "--jwt-secret",
            SECRET,
            "--events-url",
            url,
            "--events-key",
            "k-1.A~b/c+d=",
        ];
        throng::config::Config::from_args(args).unwrap_or_else(|e| panic!("{url} refused: {e}"));
    }
}

#[test]
fn a_redirect_is_not_delivery_the_batch_is_refused_and_not_followed() {
    let up = Upstream::start();
    up.status.store(302, Relaxed);
    let url = up.url();
    let srv = TestServer::start(&["--events-url", &url]);
    let mut a = srv.connect("a");
    a.send(json!({"type": "send", "data": "moved"}));
    assert_eq!(a.recv()["type"], "sent");
    let s = srv.wait_stats("dropped as refused", |s| {
        s["events"]["dropped_refused"] == 1
    });
    assert_eq!(s["events"]["delivered"], 0, "{s}");
    assert_eq!(s["events"]["dropped"], 1, "{s}");
    assert_eq!(up.strays.load(Relaxed), 0, "the redirect was followed");
    assert_eq!(
        up.requests.load(Relaxed),
        1,
        "refused for good: not retried"
    );
    let m = srv.api("GET", "/metrics", None).text();
    assert!(
        m.contains("throng_events_dropped_total{reason=\"refused\"} 1"),
        "{m}"
    );
    // A 307 (which keeps the POST) is refused the same way.
    up.status.store(307, Relaxed);
    a.send(json!({"type": "send", "data": "moved again"}));
    assert_eq!(a.recv()["type"], "sent");
    srv.wait_stats("dropped as refused", |s| {
        s["events"]["dropped_refused"] == 2
    });
    assert_eq!(up.strays.load(Relaxed), 0);
    assert!(up.events().is_empty());
}

#[test]
fn an_answer_with_a_body_leaves_the_connection_to_the_next_batch() {
    let up = Upstream::start();
    *up.answer_body.lock().unwrap() = r#"{"ok":true}"#.into();
    let url = up.url();
    let srv = TestServer::start(&["--events-url", &url]);
    let mut a = srv.connect("a");
    for i in 0..3 {
        a.send(json!({"type": "send", "data": i}));
        assert_eq!(a.recv()["type"], "sent");
        // One batch each.
        up.wait_events(i + 1);
    }
    assert_eq!(up.requests.load(Relaxed), 3);
    assert_eq!(
        up.connections.load(Relaxed),
        1,
        "one connection for every batch"
    );
}

#[test]
fn an_event_the_upstream_always_fails_on_is_dropped_and_the_rest_go_through() {
    let up = Upstream::start();
    *up.poison.lock().unwrap() = Some("poison".into());
    let url = up.url();
    let srv = TestServer::start(&["--events-url", &url, "--client-rate", "0"]);
    let mut mallory = srv.connect("mallory");
    let mut alice = srv.connect("alice");
    mallory.send(json!({"type": "send", "data": {"poison": 1}}));
    assert_eq!(mallory.recv()["type"], "sent");
    for i in 0..20 {
        alice.send(json!({"type": "send", "data": i}));
        assert_eq!(alice.recv()["type"], "sent");
    }
    // Tries with backoff, halvings, then five tries alone: a few seconds.
    let got = up.wait_events_within(20, Duration::from_secs(60));
    let data: Vec<Value> = got.iter().map(|e| e["data"].clone()).collect();
    assert_eq!(data, (0..20).map(|i| json!(i)).collect::<Vec<_>>());
    let s = srv.wait_stats("the poison dropped", |s| {
        s["events"]["dropped_failed"] == 1 && s["events"]["queued"] == 0
    });
    assert_eq!(s["events"]["delivered"], 20, "{s}");
    assert_eq!(s["events"]["up"], 1, "{s}");
    let m = srv.api("GET", "/metrics", None).text();
    assert!(
        m.contains("throng_events_dropped_total{reason=\"failed\"} 1"),
        "{m}"
    );
}

#[test]
fn an_upstream_failing_every_request_for_a_while_loses_no_event() {
    // An outage answered 500 to everything is not a poison event: once the failing event
    // is alone, the next one (another session's) is tried alone too, fails as well, and
    // nothing is dropped (before, one event went every few seconds).
    let up = Upstream::start();
    *up.poison.lock().unwrap() = Some(String::new());
    let url = up.url();
    let srv = TestServer::start(&["--events-url", &url]);
    let mut a = srv.connect("a");
    let mut b = srv.connect("b");
    a.send(json!({"type": "send", "data": "a1"}));
    assert_eq!(a.recv()["type"], "sent");
    b.send(json!({"type": "send", "data": "b1"}));
    assert_eq!(b.recv()["type"], "sent");
    // Past the halvings and the five tries alone that drop a poison event.
    srv.wait_stats_within("many failures", Duration::from_secs(60), |s| {
        s["events"]["failures"].as_u64() >= Some(8)
    });
    assert_eq!(srv.stats()["events"]["dropped"], 0);
    *up.poison.lock().unwrap() = None;
    let got = up.wait_events_within(2, Duration::from_secs(30));
    let data: Vec<Value> = got.iter().map(|e| e["data"].clone()).collect();
    assert!(
        data.contains(&json!("a1")) && data.contains(&json!("b1")),
        "{data:?}"
    );
    assert_eq!(srv.stats()["events"]["dropped"], 0);
}

#[test]
fn a_batch_too_slow_for_the_upstream_goes_again_halved_and_is_taken() {
    let up = Upstream::start();
    // The first event is held a second, so the next two make one batch, which the
    // upstream processes (and stores) for longer than the 10 s the server waits.
    *up.hold.lock().unwrap() = Some("hold".into());
    *up.slow_batches.lock().unwrap() = Some(Duration::from_secs(11));
    let url = up.url();
    let srv = TestServer::start(&["--events-url", &url]);
    let mut a = srv.connect("a");
    a.send(json!({"type": "send", "data": "hold"}));
    assert_eq!(a.recv()["type"], "sent");
    assert!(wait_until(WAIT, || up.started.load(Relaxed) == 1));
    for d in ["e1", "e2"] {
        a.send(json!({"type": "send", "data": d}));
        assert_eq!(a.recv()["type"], "sent");
    }
    let s = srv.wait_stats_within("all taken", Duration::from_secs(40), |s| {
        s["events"]["delivered"] == 3
    });
    assert!(s["events"]["failures"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["events"]["dropped"], 0, "{s}");
    // The slow batch was stored once, by the upstream, after the server gave up on it;
    // then each event went alone, once.
    let got = up.wait_events_within(5, Duration::from_secs(5));
    let count = |d: &str| got.iter().filter(|e| e["data"] == d).count();
    assert_eq!((count("e1"), count("e2")), (2, 2), "{got:?}");
    assert_eq!(got.len(), 5, "{got:?}");
}

#[test]
fn sighup_reloads_events_key_file_and_keeps_the_key_when_the_file_is_bad() {
    use common::tls::{metric, wait_metric, ServeProc, TlsDir};
    let dir = TlsDir::new("events-key-reload");
    let up = Upstream::start();
    let key = dir.path("events.key");
    std::fs::write(&key, "# for the upstream\nkey-one\n").unwrap();
    let mut p = ServeProc::spawn(&["--events-url", &up.url(), "--events-key-file", &key]);
    let (ws, api) = p.listening();
    let mut alice = Client::connect(ws, &token("alice")).expect("alice connects");
    let mut send = |n: u64| {
        alice.send(json!({"type": "send", "data": n, "ref": n}));
        assert_eq!(alice.recv()["type"], "sent");
        up.wait_events(n as usize);
        up.authorization.lock().unwrap().clone()
    };
    assert_eq!(send(1).as_deref(), Some("Bearer key-one"));

    // The upstream's new key in the file, SIGHUP: the next POST sends it.
    std::fs::write(&key, "key-two\n").unwrap();
    p.signal(libc::SIGHUP);
    p.find(WAIT, |l| {
        l.contains("events_key_file reloaded").then_some(())
    });
    assert_eq!(send(2).as_deref(), Some("Bearer key-two"));
    assert_eq!(metric(api, "throng_events_key_reloads_total"), 1);

    // Two keys: the reload fails, names the file, and the key in use stays.
    std::fs::write(&key, "key-three\nkey-four\n").unwrap();
    p.signal(libc::SIGHUP);
    let line = p.find(WAIT, |l| {
        l.contains("events_key_file not reloaded")
            .then(|| l.to_string())
    });
    assert!(
        line.contains(&key) && line.contains("second key on line 2"),
        "{line}"
    );
    assert!(
        !line.contains("key-three"),
        "the log never shows a key: {line}"
    );
    wait_metric(api, "throng_events_key_reload_errors_total", 1, WAIT);
    assert_eq!(send(3).as_deref(), Some("Bearer key-two"));
}
