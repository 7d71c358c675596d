//! HTTPS on the push API (`--api-tls-cert`), black box: real servers with generated
//! certificates, rustls and Python's `http.client` (OpenSSL) as clients over loopback;
//! keep-alive, pipelining, large bodies both ways, a client that reads slowly, plain HTTP
//! and garbage on the HTTPS port, the connection bound, handshakes that stall, certificate
//! reload on SIGHUP and bad files at start.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::tls::*;
use common::*;
use serde_json::json;

/// An in-process server whose push API speaks HTTPS with `dir`'s certificate.
fn https_server(dir: &TlsDir, extra: &[&str]) -> TestServer {
    let mut args = vec![
        "--api-tls-cert",
        dir.cert_path(),
        "--api-tls-key",
        dir.key_path(),
    ];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

fn push_body(user: &str, data: &str) -> String {
    json!({"user": user, "data": data}).to_string()
}

#[test]
fn pushes_over_https_reach_clients_on_one_keep_alive_connection() {
    let dir = TlsDir::new("api-push");
    let srv = https_server(&dir, &[]);
    let cfg = dir.client(None);
    let mut alice = srv.connect("alice");
    let mut api = HttpsConn::connect_tls(srv.api, &cfg);
    for i in 0..5 {
        let body = push_body("alice", &format!("m{i}"));
        let r = api.request("POST", "/v1/push", Some(API_KEY), Some(&body));
        assert_eq!(r.status, 202, "{}", r.text());
        assert_eq!(alice.recv()["data"], format!("m{i}"));
    }
    let body = push_body("alice", "waited");
    let r = api.request("POST", "/v1/push?wait=1", Some(API_KEY), Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["delivered"], 1);
    assert_eq!(alice.recv()["data"], "waited");
    let stats = api.request("GET", "/v1/stats", Some(API_KEY), None).json();
    assert_eq!(stats["api_tls"]["handshakes_full"], 1, "{stats}");
    assert_eq!(stats["api_tls"]["handshakes_failed"], 0, "{stats}");
    assert!(
        stats["tls"].is_null(),
        "the client listener stays plain: {stats}"
    );
    // A wrong key is answered inside TLS like any refusal, and closes the connection.
    let r = api.request("GET", "/v1/stats", Some("wrong"), None);
    r.assert_refusal(401, "unauthorized");
}

#[test]
fn pipelined_requests_and_large_bodies_cross_many_records() {
    let dir = TlsDir::new("api-pipeline");
    let srv = https_server(&dir, &[]);
    let cfg = dir.client(Some(Version::Tls12));
    let mut bob = srv.connect("bob");
    let mut api = HttpsConn::connect_tls(srv.api, &cfg);
    // Three requests in one write; the answers come back in order.
    let mut raw = Vec::new();
    for i in 0..3 {
        let body = push_body("bob", &format!("p{i}"));
        raw.extend(request_bytes(
            srv.api,
            "POST",
            "/v1/push",
            Some(API_KEY),
            Some(&body),
        ));
    }
    api.write(&raw);
    for i in 0..3 {
        assert_eq!(api.read().status, 202);
        assert_eq!(bob.recv()["data"], format!("p{i}"));
    }
    // 200 KB of data: a dozen TLS records in, one WebSocket message out.
    let big = "x".repeat(200_000);
    let r = api.request(
        "POST",
        "/v1/push",
        Some(API_KEY),
        Some(&push_body("bob", &big)),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(bob.recv()["data"].as_str().map(str::len), Some(big.len()));
}

#[test]
fn a_client_that_reads_slowly_gets_every_answer_whole_then_close_notify() {
    let dir = TlsDir::new("api-slow");
    let srv = https_server(&dir, &[]);
    let cfg = dir.client(None);
    // A small receive buffer: the server's records wait for the socket (in rustls,
    // then in the connection's output) while the client has not read.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&srv.api.into(), IO_TIMEOUT).unwrap();
    let sock: TcpStream = sock.into();
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut tls = tls_handshake(sock, &cfg).unwrap_or_else(|e| panic!("{e}"));
    // Batches of requests until answers wait in the server (the socket's send buffer
    // autotunes up to net.ipv4.tcp_wmem's maximum first).
    const BATCH: usize = 50;
    let one = request_bytes(srv.api, "GET", "/metrics", Some(API_KEY), None);
    let mut watcher = HttpsConn::connect_tls(srv.api, &cfg);
    // (answers waiting, requests the API has read), as the watcher sees them.
    let mut look = || {
        let r = watcher.request("GET", "/metrics", Some(API_KEY), None);
        (
            metric_in(&r, "throng_api_output_bytes") > 0,
            metric_in(&r, "throng_api_requests_total"),
        )
    };
    let mut sent = 0;
    let mut looks = 0;
    loop {
        let (waiting, _) = look();
        looks += 1;
        if waiting || sent >= 100 * BATCH {
            assert!(waiting, "the answers never waited for the socket");
            break;
        }
        std::io::Write::write_all(&mut tls, &one.repeat(BATCH)).unwrap();
        std::io::Write::flush(&mut tls).unwrap();
        sent += BATCH;
        // Until the API has read the batch, or stopped reading because answers wait.
        assert!(wait_until(WAIT, || {
            let (waiting, read) = look();
            looks += 1;
            waiting || read >= (sent + looks) as u64
        }));
    }
    // The last request closes: its close_notify must follow every record before it.
    let close = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {API_KEY}\r\n\
         Connection: close\r\n\r\n",
        srv.api
    );
    std::io::Write::write_all(&mut tls, close.as_bytes()).unwrap();
    std::io::Write::flush(&mut tls).unwrap();
    let mut buf = Vec::new();
    for i in 0..=sent {
        let (r, rest) = read_response(&mut tls, buf).unwrap_or_else(|e| panic!("answer {i}: {e}"));
        buf = rest;
        assert_eq!(r.status, 200, "answer {i}");
        assert!(r.text().contains("throng_connections"), "answer {i} whole");
    }
    assert!(buf.is_empty(), "nothing after the last answer");
    let mut rest = [0u8; 64];
    assert_eq!(tls.read(&mut rest).expect("a clean close_notify"), 0);
}

#[test]
fn connection_close_ends_with_close_notify() {
    let dir = TlsDir::new("api-close");
    let srv = https_server(&dir, &[]);
    let cfg = dir.client(Some(Version::Tls13));
    let mut api = HttpsConn::connect_tls(srv.api, &cfg);
    let raw = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        srv.api
    );
    let r = api.send_raw(raw.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    // rustls reads Ok(0) only after the server's close_notify (an abrupt end is an error).
    let mut rest = [0u8; 64];
    assert_eq!(api.stream.read(&mut rest).expect("a clean close_notify"), 0);
}

#[test]
fn plain_http_and_garbage_on_the_https_port_fail_alone() {
    let dir = TlsDir::new("api-plain");
    let srv = https_server(&dir, &[]);
    let cfg = dir.client(None);
    let mut good = HttpsConn::connect_tls(srv.api, &cfg);

    // Plain HTTP: a plain 400 that says what to do, then the end.
    let mut plain = HttpConn::connect(srv.api);
    let r = plain.request("GET", "/v1/stats", Some(API_KEY), None);
    r.assert_error(400, "plain_http");
    assert!(r.text().contains("https://"), "{}", r.text());
    let mut rest = [0u8; 16];
    assert_eq!(plain.stream.read(&mut rest).unwrap_or(0), 0, "closed after");

    // A record header with garbage after it: rustls refuses, only that connection ends.
    let mut garbage = tcp(srv.api);
    std::io::Write::write_all(&mut garbage, &[0x16, 0x03, 0x01, 0x00, 0x10]).unwrap();
    std::io::Write::write_all(&mut garbage, &[0xab; 16]).unwrap();
    let mut sink = Vec::new();
    let _ = garbage.read_to_end(&mut sink);

    // A client that resets after its request: no TLS error, only a connection gone.
    let mut reset = HttpsConn::connect_tls(srv.api, &cfg);
    assert_eq!(reset.request("GET", "/healthz", None, None).status, 200);
    socket2::SockRef::from(&reset.stream.sock)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    drop(reset);
    // Only the good connection is left open.
    let open = || {
        let r = good.request("GET", "/metrics", Some(API_KEY), None);
        metric_in(&r, "throng_api_connections") == 1
    };
    assert!(wait_until(Duration::from_secs(5), open), "the reset seen");

    let body = push_body("nobody", "still served");
    let r = good.request("POST", "/v1/push", Some(API_KEY), Some(&body));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        https_metric(srv.api, &cfg, "throng_api_tls_handshakes_failed_total"),
        2
    );
    assert_eq!(
        https_metric(srv.api, &cfg, "throng_api_tls_record_errors_total"),
        0
    );
    assert_eq!(
        https_metric(srv.api, &cfg, "throng_api_tls_handshakes_full_total"),
        5,
        "the good connection, the reset one and three metric reads"
    );
}

#[test]
fn over_the_connection_bound_a_tls_client_is_closed_and_counted() {
    let dir = TlsDir::new("api-bound");
    let srv = https_server(&dir, &["--api-max-connections", "1"]);
    let cfg = dir.client(None);
    let mut first = HttpsConn::connect_tls(srv.api, &cfg);
    // Keyed, so not a stranger a newcomer could take the place of.
    assert_eq!(
        first
            .request("GET", "/v1/stats", Some(API_KEY), None)
            .status,
        200
    );
    let refused = tls_connect(srv.api, &cfg);
    assert!(refused.is_err(), "a second connection over the bound");
    let stats = first
        .request("GET", "/v1/stats", Some(API_KEY), None)
        .json();
    assert_eq!(stats["counters"]["api_refused_connections"], 1, "{stats}");
}

#[test]
fn stalled_handshakes_count_toward_the_bound_until_a_newcomer_or_the_request_timeout_closes_them() {
    let dir = TlsDir::new("api-stall");
    let srv = https_server(
        &dir,
        &[
            "--api-max-connections",
            "3",
            "--api-request-timeout-ms",
            "3000",
        ],
    );
    let cfg = dir.client(None);
    let mut alice = srv.connect("alice");
    // Two peers start a handshake and never finish it: a record header and one byte.
    let stall = || {
        let mut s = tcp(srv.api);
        std::io::Write::write_all(&mut s, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
        s
    };
    let mut first = stall();
    let mut second = stall();
    // The third place serves pushes meanwhile.
    let mut api = HttpsConn::connect_tls(srv.api, &cfg);
    let body = push_body("alice", "through");
    let r = api.request("POST", "/v1/push", Some(API_KEY), Some(&body));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(alice.recv()["data"], "through");
    let r = api.request("GET", "/metrics", Some(API_KEY), None);
    assert_eq!(metric_in(&r, "throng_api_pending_handshakes"), 2);
    assert_eq!(metric_in(&r, "throng_api_connections"), 3);
    // A fourth takes the place of the oldest stalled handshake (review s17c: peers that
    // never finish a handshake held every place for the request timeout), once it is
    // 100 ms old; a newcomer before that is refused.
    let closed = |s: &mut TcpStream, within: Duration| {
        s.set_read_timeout(Some(within)).unwrap();
        let mut sink = [0u8; 64];
        match s.read(&mut sink) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("the stalled handshake was not closed: {other:?}"),
        }
    };
    assert!(
        wait_until(WAIT, || try_request(srv.api, &cfg) == Ok(200)),
        "no place was made for a newcomer"
    );
    closed(&mut first, Duration::from_secs(5));
    let stats = api.request("GET", "/v1/stats", Some(API_KEY), None).json();
    assert_eq!(stats["counters"]["api_evictions"], 1, "{stats}");
    // The other one is closed at the request timeout, counted as a failed handshake.
    closed(&mut second, Duration::from_secs(20));
    let stats = api.request("GET", "/v1/stats", Some(API_KEY), None).json();
    assert_eq!(stats["api_tls"]["handshakes_failed"], 1, "{stats}");
    assert_eq!(stats["api_pending_handshakes"], 0, "{stats}");
    let only_this_one = || {
        let r = api.request("GET", "/metrics", Some(API_KEY), None);
        metric_in(&r, "throng_api_connections") == 1
    };
    assert!(wait_until(Duration::from_secs(5), only_this_one));
}

#[test]
fn python_http_client_pushes_over_https() {
    let dir = TlsDir::new("api-python");
    let srv = https_server(&dir, &[]);
    let mut carol = srv.connect("carol");
    let script = r#"
import http.client, json, ssl, sys
ca, port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
for i in range(3):
    body = json.dumps({"user": "carol", "data": "py%d" % i})
    c.request("POST", "/v1/push", body=body, headers={"Authorization": "Bearer " + key})
    r = c.getresponse()
    print(r.status, r.read().decode())
c.close()
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            dir.cert_path(),
            &srv.api.port().to_string(),
            API_KEY,
        ])
        .output()
        .expect("python3 is needed for this test (apt-get install python3)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("202 ")).count(),
        3,
        "{stdout}"
    );
    for i in 0..3 {
        assert_eq!(carol.recv()["data"], format!("py{i}"));
    }
}

#[test]
fn sighup_reloads_the_api_certificate_and_keeps_it_when_the_file_is_bad() {
    let dir = TlsDir::new("api-reload");
    let a = dir.pair.der.clone();
    let b = CertPair::generate();
    let cfg = client_config(&[&a, &b.der], None);
    let mut p = ServeProc::spawn(&[
        "--api-tls-cert",
        dir.cert_path(),
        "--api-tls-key",
        dir.key_path(),
    ]);
    let (_, api) = p.listening();
    let leaf_now = |cfg: &Arc<rustls::ClientConfig>, api: SocketAddr| {
        let s = tls_connect(api, cfg).unwrap_or_else(|e| panic!("new connection: {e}"));
        peer_leaf(&s.conn)
    };
    assert!(leaf_now(&cfg, api) == a.as_ref(), "serves A at start");
    let mut open = HttpsConn::connect_tls(api, &cfg);

    dir.write(&b);
    p.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || leaf_now(&cfg, api)
            == b.der.as_ref()),
        "new connections never got certificate B; log:\n{}",
        p.seen.join("\n")
    );
    p.find(Duration::from_secs(5), |l| {
        l.contains("push API certificate reloaded").then_some(())
    });
    assert_eq!(https_metric(api, &cfg, "throng_api_tls_reloads_total"), 1);
    // The connection opened under A carries on.
    assert_eq!(open.request("GET", "/healthz", None, None).status, 200);

    std::fs::write(&dir.key, "not a key\n").unwrap();
    p.signal(libc::SIGHUP);
    let line = p.find(Duration::from_secs(10), |l| {
        l.contains("push API certificate not reloaded")
            .then(|| l.to_string())
    });
    assert!(
        line.contains(dir.key_path()),
        "the log names the file: {line}"
    );
    assert_eq!(
        https_metric(api, &cfg, "throng_api_tls_reload_errors_total"),
        1
    );
    assert!(leaf_now(&cfg, api) == b.der.as_ref(), "still B");

    p.signal(libc::SIGTERM);
    let st = p.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "exit {st:?}; log:\n{}", p.seen.join("\n"));
}

#[test]
fn bad_api_certificate_or_key_at_start_exits_2_naming_the_file() {
    let dir = TlsDir::new("api-badstart");
    let cert = dir.cert_path().to_string();
    let key = dir.key_path().to_string();
    let missing = dir.path("missing.pem");
    let other_key = dir.path("other-key.pem");
    std::fs::write(&other_key, CertPair::generate().key_pem).unwrap();
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["--api-tls-cert", &missing, "--api-tls-key", &key],
            &[&missing, "config error: api_tls_cert"],
        ),
        (
            &["--api-tls-cert", &cert, "--api-tls-key", &other_key],
            &[&cert, &other_key, "does not belong", "(--api-tls-cert"],
        ),
        (&["--api-tls-cert", &cert], &["--api-tls-key"]),
        (&["--api-tls-key", &key], &["--api-tls-cert"]),
    ];
    for (args, needles) in cases {
        let (status, stderr) = serve_refused(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {status:?}; {stderr}");
        for n in needles {
            assert!(
                stderr.contains(n),
                "{args:?}: stderr must name {n:?}: {stderr}"
            );
        }
    }
}

// ---- Client certificates (--api-tls-client-ca) -----------------------------------------

/// Sends one request on a new TLS connection made with `cfg`: the status, or why there
/// was none (a refused client certificate shows as an alert or a reset on the read, after
/// a TLS 1.3 client already thinks the handshake done).
fn try_request(api: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> Result<u16, String> {
    let stream = tls_connect(api, cfg)?;
    let mut c = HttpConn::over(stream, api);
    let raw = request_bytes(api, "GET", "/v1/stats", Some(API_KEY), None);
    std::io::Write::write_all(&mut c.stream, &raw).map_err(|e| e.to_string())?;
    read_response(&mut c.stream, Vec::new()).map(|(r, _)| r.status)
}

#[test]
fn client_certificates_from_the_ca_are_required() {
    let dir = TlsDir::new("api-mtls");
    let ca = ClientCa::generate("throng test clients");
    let other = ClientCa::generate("someone else");
    let ca_path = dir.path("clients.pem");
    std::fs::write(&ca_path, &ca.ca_pem).unwrap();
    let srv = https_server(&dir, &["--api-tls-client-ca", &ca_path]);
    let backend = ca.issue("backend");
    let good = client_config_with_cert(&dir.pair.der, &backend);

    let mut alice = srv.connect("alice");
    let mut api = HttpsConn::connect_tls(srv.api, &good);
    let r = api.request(
        "POST",
        "/v1/push",
        Some(API_KEY),
        Some(&push_body("alice", "with a certificate")),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(alice.recv()["data"], "with a certificate");

    // No certificate, or one from another CA: no answer at all.
    let none = dir.client(None);
    let stranger = client_config_with_cert(&dir.pair.der, &other.issue("stranger"));
    for (what, cfg) in [("no certificate", &none), ("another CA's", &stranger)] {
        let got = try_request(srv.api, cfg);
        assert!(got.is_err(), "{what}: answered {got:?}");
    }
    // Counted as failed handshakes; the good connection carries on.
    let r = api.request("GET", "/metrics", Some(API_KEY), None);
    assert_eq!(metric_in(&r, "throng_api_tls_handshakes_failed_total"), 2);

    // Python's http.client (OpenSSL) with the certificate and key files.
    let (cert_file, key_file) = (dir.path("backend.pem"), dir.path("backend-key.pem"));
    std::fs::write(&cert_file, &backend.cert_pem).unwrap();
    std::fs::write(&key_file, &backend.key_pem).unwrap();
    let script = r#"
import http.client, json, ssl, sys
ca, port, key, cert, cert_key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, cert_key)
c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
c.request("POST", "/v1/push", body=json.dumps({"user": "alice", "data": "from python"}),
          headers={"Authorization": "Bearer " + key})
r = c.getresponse()
print(r.status, r.read().decode())
"#;
    let port = srv.api.port().to_string();
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            dir.cert_path(),
            &port,
            API_KEY,
            &cert_file,
            &key_file,
        ])
        .output()
        .expect("python3 is needed for this test (apt-get install python3)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("202 "),
        "python: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(alice.recv()["data"], "from python");
}

#[test]
fn sighup_reloads_the_client_ca() {
    let dir = TlsDir::new("api-mtls-reload");
    let a = ClientCa::generate("first clients");
    let b = ClientCa::generate("second clients");
    let ca_path = dir.path("clients.pem");
    std::fs::write(&ca_path, &a.ca_pem).unwrap();
    let mut p = ServeProc::spawn(&[
        "--api-tls-cert",
        dir.cert_path(),
        "--api-tls-key",
        dir.key_path(),
        "--api-tls-client-ca",
        &ca_path,
    ]);
    let (_, api) = p.listening();
    let from_a = client_config_with_cert(&dir.pair.der, &a.issue("a"));
    let from_b = client_config_with_cert(&dir.pair.der, &b.issue("b"));
    assert_eq!(try_request(api, &from_a), Ok(200));
    assert!(
        try_request(api, &from_b).is_err(),
        "B's client before the reload"
    );

    std::fs::write(&ca_path, &b.ca_pem).unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || try_request(api, &from_b)
            == Ok(200)),
        "B's client never got in; log:\n{}",
        p.seen.join("\n")
    );
    // Also with the session its client kept from before: the API resumes none.
    assert!(
        try_request(api, &from_a).is_err(),
        "A's client after the reload"
    );

    // A bad CA file: logged naming it, and B's CA stays.
    std::fs::write(&ca_path, "not a certificate\n").unwrap();
    p.signal(libc::SIGHUP);
    let line = p.find(Duration::from_secs(10), |l| {
        l.contains("push API certificate not reloaded")
            .then(|| l.to_string())
    });
    assert!(line.contains(&ca_path), "the log names the file: {line}");
    assert_eq!(try_request(api, &from_b), Ok(200));

    p.signal(libc::SIGTERM);
    let st = p.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "exit {st:?}; log:\n{}", p.seen.join("\n"));
}

#[test]
fn a_bad_client_ca_file_at_start_exits_2_naming_it() {
    let dir = TlsDir::new("api-mtls-bad");
    let junk = dir.path("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let missing = dir.path("missing.pem");
    for ca in [&junk, &missing] {
        let (status, stderr) = serve_refused(&[
            "--api-tls-cert",
            dir.cert_path(),
            "--api-tls-key",
            dir.key_path(),
            "--api-tls-client-ca",
            ca,
        ]);
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(ca.as_str()), "names {ca}: {stderr}");
    }
    let (status, stderr) = serve_refused(&["--api-tls-client-ca", &junk]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("needs api_tls_cert"), "{stderr}");
}

#[test]
fn a_handshake_past_its_allowance_is_refused_at_once() {
    // A ClientHello that says it is 65,000 bytes long, sent as 20 KiB of records and then
    // a stall: rustls would buffer up to 64 KiB of it until the deadline. The deadline
    // here is far beyond the test: a close at all comes from the 16 KiB bound.
    let dir = TlsDir::new("api-endless");
    let srv = https_server(&dir, &["--api-request-timeout-ms", "60000"]);
    let mut endless = Vec::new();
    for _ in 0..5 {
        endless.extend_from_slice(&[22, 3, 1, 0x10, 0x00, 1, 0, 0xfd, 0xe8, 3, 3]);
        endless.resize(endless.len() + 4096 - 6, b'A');
    }
    let mut s = tcp(srv.api);
    std::io::Write::write_all(&mut s, &endless).expect("write");
    let got = read_to_close(&mut s);
    assert!(
        got.is_empty() || got[0] == 21,
        "closed, at most with an alert: {got:?}"
    );
    let cfg = dir.client(None);
    assert_eq!(
        https_metric(srv.api, &cfg, "throng_api_tls_handshakes_failed_total"),
        1
    );
    // A real client still gets in.
    let r = HttpsConn::connect_tls(srv.api, &cfg).request("GET", "/healthz", None, None);
    assert_eq!(r.status, 200, "{}", r.text());
}
