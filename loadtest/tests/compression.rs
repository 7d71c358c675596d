//! `--compression` against a real, in-process Throng server: permessage-deflate is
//! negotiated, the server's compressed push frames are inflated and counted, and the
//! report's `compression` section shows what they cost on the wire, against the same run
//! without the flag.

mod common;

use common::*;
use std::time::Duration;

/// Connections of each run.
const CONNS: u64 = 20;
/// Broadcasts of each run.
const PUSHES: u64 = 50;
/// Size of each push's data document.
const PAYLOAD: u64 = 2000;

/// `push` of PUSHES broadcasts with a JSON document of PAYLOAD bytes to CONNS
/// connections, plus `extra`.
fn broadcast_args(srv: &TestServer, extra: &[&str]) -> Vec<String> {
    let mut a = strings(&[
        "push",
        "--target",
        "broadcast",
        "--count",
        &PUSHES.to_string(),
        "--rate",
        "500",
        "--payload-bytes",
        &PAYLOAD.to_string(),
        "--payload-json",
    ]);
    a.extend(strings(extra));
    a.extend(srv.push_args(CONNS));
    a
}

/// Waits (bounded) until the server's counter `name` reaches `want`; returns its value.
fn counter_reaches(srv: &TestServer, name: &str, want: u64) -> u64 {
    let mut got = 0;
    wait_until(Duration::from_secs(5), || {
        got = srv.counter(name);
        got >= want
    });
    got
}

#[test]
fn push_with_compression_inflates_every_push_and_counts_wire_bytes() {
    let srv = TestServer::start(&[]);
    // Two worker processes: the flag reaches them and their counts add up.
    let r = run_load(broadcast_args(&srv, &["--compression", "--procs", "2"]));
    let deliveries = PUSHES * CONNS;
    assert_complete(&r, PUSHES, deliveries);
    r.map_eq("connect_errors", &[]);
    r.map_eq("server_errors", &[]);
    r.eq("closed_clean", CONNS);
    r.check(
        r.get("compression/offered").as_bool() == Some(true),
        "offered",
    );
    r.eq("compression/offered_connections", CONNS);
    r.eq("compression/negotiated_connections", CONNS);
    r.eq("compression/deliveries", deliveries);
    // Every push (over 256 bytes, shrinking under deflate) came compressed; the welcomes
    // (small) did not.
    r.eq("compression/compressed_frames", deliveries);
    let wire = r.f("compression/wire_bytes_per_delivery");
    let payload = r.f("compression/payload_bytes_per_delivery");
    eprintln!("DEBUGWIRE {wire} {payload} {}", r.v["compression"]);
    r.check(
        payload > PAYLOAD as f64,
        "each delivery carries the document and its envelope",
    );
    // About 48% (the documents compress like JSON); the exact figure moves by a percent
    // with the digits of the pushes' `t` stamps.
    r.check(
        wire < 0.55 * payload,
        &format!("{wire} wire bytes per delivery is not well below the {payload}-byte payload"),
    );
    let (deflated, inflated) = (
        r.u("compression/deflated_bytes"),
        r.u("compression/inflated_bytes"),
    );
    r.check(
        deflated > 0 && inflated > 2 * deflated,
        "compressed pushes inflate to more than twice their size",
    );
    r.check(
        r.u("compression/wire_bytes") > deflated,
        "the wire bytes include the compressed payloads and every frame's header",
    );
    r.check(
        r.output
            .contains("compression: offered, negotiated on 20 of 20 upgrades"),
        "the summary line says compression was negotiated",
    );
    // The server sent exactly the compressed frames the load generator counted.
    let sent = counter_reaches(&srv, "deflated_sends", deliveries);
    r.check(
        sent == deliveries,
        &format!("the server counts {sent} compressed sends"),
    );
}

#[test]
fn push_without_compression_gets_plain_frames() {
    let srv = TestServer::start(&[]);
    let r = run_load(broadcast_args(&srv, &[]));
    let deliveries = PUSHES * CONNS;
    assert_complete(&r, PUSHES, deliveries);
    r.map_eq("connect_errors", &[]);
    r.check(
        r.get("compression/offered").as_bool() == Some(false),
        "not offered",
    );
    r.eq("compression/offered_connections", 0);
    r.eq("compression/negotiated_connections", 0);
    r.eq("compression/compressed_frames", 0);
    r.eq("compression/deflated_bytes", 0);
    r.eq("compression/deliveries", deliveries);
    let wire = r.f("compression/wire_bytes_per_delivery");
    let payload = r.f("compression/payload_bytes_per_delivery");
    r.check(
        wire > payload && payload > PAYLOAD as f64,
        "plain frames cost their payload and a header on the wire",
    );
    r.check(
        r.output.contains("compression: off; wire bytes"),
        "the summary line is there without compression too",
    );
    r.eq("compression/deliveries", srv.counter("pushes_delivered"));
    r.check(
        srv.counter("deflated_sends") == 0,
        "the server compressed nothing",
    );
}

#[test]
fn a_server_that_declines_leaves_the_frames_plain() {
    let srv = TestServer::start(&["--compression", "off"]);
    let r = run_load(broadcast_args(&srv, &["--compression"]));
    assert_complete(&r, PUSHES, PUSHES * CONNS);
    r.map_eq("connect_errors", &[]);
    r.eq("compression/offered_connections", CONNS);
    r.eq("compression/negotiated_connections", 0);
    r.eq("compression/compressed_frames", 0);
    r.check(
        r.output.contains("negotiated on 0 of 20 upgrades"),
        "the summary says the offer was declined",
    );
}

#[test]
fn compression_over_wss_counts_the_plaintext() {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let tag = std::process::id();
    let cert = dir.join(format!("compression-{tag}-cert.pem"));
    let key = dir.join(format!("compression-{tag}-key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let srv = TestServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let mut args = broadcast_args(&srv, &["--compression", "--insecure"]);
    let at = args.iter().position(|a| a == "--url").unwrap();
    args[at + 1] = format!("wss://{}/ws", srv.ws);
    let r = run_load(args);
    let deliveries = PUSHES * CONNS;
    assert_complete(&r, PUSHES, deliveries);
    r.eq("tls/attempts", CONNS);
    r.eq("compression/negotiated_connections", CONNS);
    r.eq("compression/compressed_frames", deliveries);
    r.check(
        r.f("compression/wire_bytes_per_delivery")
            < 0.55 * r.f("compression/payload_bytes_per_delivery"),
        "compressed over TLS too",
    );
    r.check(
        r.output
            .contains("(TLS plaintext, record overhead not counted)"),
        "the summary says the wss:// wire bytes are plaintext",
    );
    let _ = std::fs::remove_file(cert);
    let _ = std::fs::remove_file(key);
}
