//! throng-load over wss://: against an in-process rustls peer that speaks just enough
//! WebSocket (tests/common/tls_peer.rs), and against a plain throng server on a wss://
//! URL. The trust flags, TLS failures as connect errors, and the full and resumed
//! handshake counts of the JSON report. And pushes through a throng server's https://
//! push API.

mod common;
#[path = "common/tls_peer.rs"]
mod tls_peer;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tls_peer::{self_signed, Peer};

fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// `connect` to `url` with `n` connections, no settle or hold time, plus `extra`.
fn connect_args(url: &str, n: u64, extra: &[&str]) -> Vec<String> {
    let mut a = strings(&[
        "connect",
        "--url",
        url,
        "--jwt-secret",
        "s",
        "--connections",
        &n.to_string(),
        "--settle-secs",
        "0",
        "--hold-secs",
        "0",
    ]);
    a.extend(strings(extra));
    a
}

fn ca_flag(path: &Path) -> [String; 2] {
    ["--ca".into(), path.display().to_string()]
}

#[test]
fn wss_with_ca_opens_and_a_later_connection_resumes() {
    let pki = self_signed(&["127.0.0.1", "localhost"]);
    let ca = pki.write_cert(&tmp(), "ca-resume");
    let peer = Peer::start(&pki);
    // Paced so that the second connection starts well after the first is welcomed (and
    // holds its tickets).
    let mut args = connect_args(&peer.url(), 2, &["--connect-rate", "4"]);
    args.extend(ca_flag(&ca));
    let r = run_load(args);
    r.eq("connections_opened", 2);
    r.eq("closed_clean", 2);
    r.map_eq("connect_errors", &[]);
    r.map_eq("close_errors", &[]);
    r.eq("tls/attempts", 2);
    r.eq("tls/handshakes_full", 1);
    r.eq("tls/handshakes_resumed", 1);
    r.eq("tls/handshake_full_us/count", 1);
    r.eq("tls/handshake_resumed_us/count", 1);
    r.check(
        r.str("tls/protocol_version") == "TLSv1_3",
        "rustls on both ends negotiates TLS 1.3",
    );
    r.check(
        r.str("tls/cipher_suite").starts_with("TLS13_"),
        "a TLS 1.3 cipher suite",
    );
    r.check(
        r.v["tls"].get("raw_full_us").is_none(),
        "raw histograms stay between workers",
    );
    r.check(
        r.output.contains("handshakes full 1") && r.output.contains("resumed 1"),
        "the summary names full and resumed handshakes",
    );
    // The peer saw the same: two upgrades, one on a resumed session, both closed.
    let c = &peer.counts;
    let ok = wait_until(Duration::from_secs(5), || c.closed.load(Relaxed) == 2);
    r.check(ok, "the peer did not see two clean closes");
    r.eq("tls/handshakes_resumed", c.resumed.load(Relaxed));
    let _ = std::fs::remove_file(ca);
}

#[test]
fn wss_insecure_with_resumption_off_makes_every_handshake_full() {
    // A certificate for another name: --insecure checks neither chain nor name.
    let peer = Peer::start(&self_signed(&["other.example"]));
    let args = connect_args(
        &peer.url(),
        3,
        &["--connect-rate", "10", "--insecure", "--tls-resume", "off"],
    );
    let r = run_load(args);
    r.eq("connections_opened", 3);
    r.eq("closed_clean", 3);
    r.map_eq("connect_errors", &[]);
    r.eq("tls/attempts", 3);
    r.eq("tls/handshakes_full", 3);
    r.eq("tls/handshakes_resumed", 0);
    r.eq("tls/handshake_resumed_us/count", 0);
    r.eq("tls/handshakes_resumed", peer.counts.resumed.load(Relaxed));
}

#[test]
fn wss_with_the_wrong_ca_is_a_tls_connect_error() {
    let peer = Peer::start(&self_signed(&["127.0.0.1"]));
    let wrong = self_signed(&["127.0.0.1"]).write_cert(&tmp(), "ca-wrong");
    let mut args = connect_args(&peer.url(), 3, &[]);
    args.extend(ca_flag(&wrong));
    let r = Load::spawn(args).wait_failed(RUN_LIMIT);
    r.eq("connections_opened", 0);
    let errors = r.map("connect_errors");
    r.check(
        errors.len() == 1 && errors[0].1 == 3,
        "three failures with one cause",
    );
    r.check(
        errors[0].0.starts_with("tls: invalid peer certificate"),
        "the cause names the certificate problem",
    );
    r.eq("tls/attempts", 3);
    r.eq("tls/handshakes_full", 0);
    r.check(
        peer.counts.welcomed.load(Relaxed) == 0,
        "nothing was upgraded",
    );
    let _ = std::fs::remove_file(wrong);
}

#[test]
fn wss_against_a_plain_ws_server_names_tls() {
    let srv = TestServer::start(&[]);
    let url = format!("wss://{}/ws", srv.ws);
    let r = Load::spawn(connect_args(&url, 3, &["--insecure"])).wait_failed(RUN_LIMIT);
    r.eq("connections_opened", 0);
    let errors = r.map("connect_errors");
    r.check(
        errors.iter().map(|e| e.1).sum::<u64>() == 3,
        "three failures",
    );
    r.check(
        errors.iter().all(|(k, _)| k.starts_with("tls: ")),
        "every cause is a TLS one",
    );
}

#[test]
fn wss_without_ca_or_insecure_is_refused_before_connecting() {
    refused_naming_the_trust_flags(connect_args("wss://127.0.0.1:1/ws", 1, &[]), "--url");
}

/// throng-load with `args` exits 2 before connecting, naming `flag`, `--ca` and
/// `--insecure`.
fn refused_naming_the_trust_flags(args: Vec<String>, flag: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_throng-load"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(flag) && stderr.contains("--ca") && stderr.contains("--insecure"),
        "{stderr}"
    );
}

#[test]
fn wss_over_worker_processes_merges_the_tls_counts() {
    let pki = self_signed(&["127.0.0.1"]);
    let ca = pki.write_cert(&tmp(), "ca-procs");
    let peer = Peer::start(&pki);
    let mut args = connect_args(&peer.url(), 4, &["--procs", "2", "--connect-rate", "20"]);
    args.extend(ca_flag(&ca));
    let r = run_load(args);
    r.eq("procs", 2);
    r.eq("connections_opened", 4);
    r.eq("tls/attempts", 4);
    r.check(
        r.u("tls/handshakes_full") + r.u("tls/handshakes_resumed") == 4,
        "every handshake counted once",
    );
    // Each worker has its own session store, so each starts with a full handshake.
    r.check(
        r.u("tls/handshakes_full") >= 2,
        "one full handshake per worker at least",
    );
    r.eq("tls/handshake_full_us/count", r.u("tls/handshakes_full"));
    let _ = std::fs::remove_file(ca);
}

/// `push` of 200 pushes to 20 connections through `srv`'s push API at `api`, plus `extra`.
fn https_push_args(srv: &TestServer, api: &str, extra: &[String]) -> Vec<String> {
    let mut args = strings(&["push", "--target", "user", "--count", "200"]);
    args.extend(srv.connect_args(20));
    args.extend(strings(&["--api", api, "--api-key", API_KEY]));
    args.extend(extra.iter().cloned());
    args
}

#[test]
fn push_through_an_https_api_delivers_everything() {
    let pki = self_signed(&["127.0.0.1", "localhost"]);
    let ca = pki.write_cert(&tmp(), "api-ca");
    let key = pki.write_key(&tmp(), "api");
    let (ca_s, key_s) = (ca.display().to_string(), key.display().to_string());
    let srv = TestServer::start(&["--api-tls-cert", &ca_s, "--api-tls-key", &key_s]);
    let api = format!("https://{}", srv.api);
    // Over two processes: each worker dials the API with the trust it was handed.
    let mut extra = ca_flag(&ca).to_vec();
    extra.extend(strings(&["--procs", "2", "--api-concurrency", "2"]));
    let r = run_load(https_push_args(&srv, &api, &extra));
    assert_eq!(r.str("push_via"), "api");
    assert_complete(&r, 200, 200);
    // The WebSocket side stays plain: no TLS there.
    r.check(
        r.v.get("tls").is_none_or(|t| t["attempts"] == 0),
        "no wss:// handshakes",
    );
    let _ = (std::fs::remove_file(ca), std::fs::remove_file(key));
}

#[test]
fn an_https_api_needs_trust_and_the_wrong_ca_fails_every_push() {
    let pki = self_signed(&["127.0.0.1"]);
    let ca = pki.write_cert(&tmp(), "api-ca2");
    let key = pki.write_key(&tmp(), "api2");
    let (ca_s, key_s) = (ca.display().to_string(), key.display().to_string());
    let srv = TestServer::start(&["--api-tls-cert", &ca_s, "--api-tls-key", &key_s]);
    let api = format!("https://{}", srv.api);
    // Neither --ca nor --insecure: refused before connecting, naming the flags.
    refused_naming_the_trust_flags(https_push_args(&srv, &api, &[]), "--api");
    // The wrong CA: every push fails as an API error that names the certificate.
    let wrong = self_signed(&["127.0.0.1"]).write_cert(&tmp(), "api-wrong");
    let mut args = https_push_args(&srv, &api, &ca_flag(&wrong));
    args.extend(strings(&["--drain-secs", "0"]));
    let (_, r) = Load::spawn(args).wait_code(RUN_LIMIT);
    let errors = r.map("push_errors");
    r.check(
        errors.iter().map(|(_, n)| n).sum::<u64>() == 200,
        "every push counted as failed",
    );
    r.check(
        errors.iter().all(|(k, _)| k.starts_with("api_")),
        "the failures are the API connection's",
    );
    r.eq("pushes_sent", 0);
    let _ = (
        std::fs::remove_file(ca),
        std::fs::remove_file(key),
        std::fs::remove_file(wrong),
    );
}

/// A CA certificate (PEM) and a client certificate and key it issued (PEM).
fn client_ca_and_cert() -> (String, String, String) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "load test clients");
    let issuer =
        rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let mut client = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = client.signed_by(&key, &issuer).unwrap();
    (issuer.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn push_with_a_client_certificate_through_an_mtls_api() {
    let pki = self_signed(&["127.0.0.1"]);
    let ca = pki.write_cert(&tmp(), "mtls-ca");
    let key = pki.write_key(&tmp(), "mtls");
    let (client_ca, client_cert, client_key) = client_ca_and_cert();
    let write = |tag: &str, pem: &str| {
        let path = tmp().join(format!("mtls-{}-{tag}.pem", std::process::id()));
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let (client_ca, client_cert, client_key) = (
        write("client-ca", &client_ca),
        write("client-cert", &client_cert),
        write("client-key", &client_key),
    );
    let (ca_s, key_s) = (ca.display().to_string(), key.display().to_string());
    let srv = TestServer::start(&[
        "--api-tls-cert",
        &ca_s,
        "--api-tls-key",
        &key_s,
        "--api-tls-client-ca",
        &client_ca,
    ]);
    let api = format!("https://{}", srv.api);
    let mut extra = ca_flag(&ca).to_vec();
    extra.extend(strings(&[
        "--client-cert",
        &client_cert,
        "--client-key",
        &client_key,
        "--procs",
        "2",
    ]));
    let r = run_load(https_push_args(&srv, &api, &extra));
    assert_complete(&r, 200, 200);
    // Without the certificate the API answers nothing: every push fails.
    let mut args = https_push_args(&srv, &api, &ca_flag(&ca));
    args.extend(strings(&["--drain-secs", "0"]));
    let (_, r) = Load::spawn(args).wait_code(RUN_LIMIT);
    r.eq("pushes_sent", 0);
    r.check(
        r.map("push_errors").iter().map(|(_, n)| n).sum::<u64>() == 200,
        "every push counted as failed",
    );
    for f in [client_ca, client_cert, client_key] {
        let _ = std::fs::remove_file(f);
    }
    let _ = (std::fs::remove_file(ca), std::fs::remove_file(key));
}
