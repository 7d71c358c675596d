//! The record layer against rustls's own client: every suite of TLS 1.2 and 1.3, records
//! split anywhere, key updates both ways, alerts, tampering.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use super::record::Session;
use super::{TlsAccept, TlsError, TlsFiles, TlsServer};

/// A self-signed certificate for localhost written to a fresh directory.
pub(crate) fn test_files(tag: &str) -> (TlsFiles, CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let dir = std::env::temp_dir().join(format!("throng-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&files.key, ck.signing_key.serialize_pem()).expect("write key");
    (files, ck.cert.der().clone())
}

fn client_config(
    root: &CertificateDer<'static>,
    tls13: bool,
    suite: &str,
) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| format!("{:?}", s.suite()).contains(suite));
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13 {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12]
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).expect("root");
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Bytes the client has for the server.
fn client_out(c: &mut rustls::ClientConnection) -> Vec<u8> {
    let mut v = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut v).expect("write_tls");
    }
    v
}

/// Gives `bytes` to the client and returns the application data it then has.
fn client_in(c: &mut rustls::ClientConnection, bytes: &[u8]) -> Result<Vec<u8>, rustls::Error> {
    let mut rd = bytes;
    let mut plain = Vec::new();
    let mut chunk = [0u8; 8192];
    while !rd.is_empty() {
        c.read_tls(&mut rd).expect("read_tls");
        c.process_new_packets()?;
        loop {
            match c.reader().read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => plain.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("client read: {e}"),
            }
        }
    }
    Ok(plain)
}

/// A finished handshake: the client, the server's session, and the upgrade request the
/// server received through TLS.
fn connect(
    server: &TlsServer,
    config: Arc<rustls::ClientConfig>,
) -> (rustls::ClientConnection, Session, Vec<u8>) {
    connect_with(server, config, b"GET /ws HTTP/1.1\r\n\r\n", 0)
}

/// The same with `request` as the upgrade request. With `early_updates`, the client sends
/// it once the handshake is over, after as many key updates; otherwise it goes with the
/// client's last handshake flight.
fn connect_with(
    server: &TlsServer,
    config: Arc<rustls::ClientConfig>,
    request: &[u8],
    early_updates: usize,
) -> (rustls::ClientConnection, Session, Vec<u8>) {
    let mut client = rustls::ClientConnection::new(config, "localhost".try_into().expect("name"))
        .expect("client");
    client.set_buffer_limit(None);
    let mut accept: TlsAccept = server.accept().expect("accept");
    if early_updates == 0 {
        client.writer().write_all(request).expect("request");
    }
    let mut plain = Vec::new();
    for round in 0..10 {
        if round > 0 && early_updates > 0 && !client.is_handshaking() && plain.is_empty() {
            for _ in 0..early_updates {
                client.refresh_traffic_keys().expect("key update");
            }
            client.writer().write_all(request).expect("request");
        }
        let bytes = client_out(&mut client);
        accept.receive(&bytes, &mut plain).expect("handshake");
        let out = std::mem::take(accept.out());
        client_in(&mut client, &out).expect("client handshake");
        if !client.is_handshaking() && !accept.is_handshaking() && plain == request {
            break;
        }
    }
    assert_eq!(plain, request);
    let finished = accept.finish().expect("finish");
    assert!(finished.sealed_in.is_empty());
    if !finished.out.is_empty() {
        client_in(&mut client, &finished.out).expect("tickets");
    }
    (client, finished.session, plain)
}

/// Opens `bytes` one slice of `step` at a time, keeping incomplete records as the shard
/// does; returns the application data.
fn open_in_steps(session: &mut Session, bytes: &[u8], step: usize) -> Result<Vec<u8>, TlsError> {
    let mut kept: Vec<u8> = Vec::new();
    let mut plain = Vec::new();
    for chunk in bytes.chunks(step) {
        kept.extend_from_slice(chunk);
        let o = session.open(&mut kept)?;
        plain.extend_from_slice(&kept[..o.plain]);
        kept.drain(..o.consumed);
        if o.peer_closed {
            break;
        }
    }
    assert!(kept.is_empty(), "{} bytes of a record left", kept.len());
    Ok(plain)
}

const SUITES: [&str; 3] = ["AES_128_GCM", "AES_256_GCM", "CHACHA20"];

#[test]
fn records_flow_both_ways_for_every_suite_and_version() {
    let (files, root) = test_files("suites");
    let server = TlsServer::load(&files).expect("load");
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    for tls13 in [true, false] {
        for suite in SUITES {
            let what = format!("tls13={tls13} {suite}");
            let (mut client, mut session, _) = connect(&server, client_config(&root, tls13, suite));
            // Client to server, whole and split at every few bytes.
            client.writer().write_all(b"hello").expect("write");
            let bytes = client_out(&mut client);
            assert_eq!(
                open_in_steps(&mut session, &bytes, 7).expect(&what),
                b"hello"
            );
            client.writer().write_all(&big).expect("write");
            let bytes = client_out(&mut client);
            assert_eq!(open_in_steps(&mut session, &bytes, 4093).expect(&what), big);
            // Server to client: many pushes coalesced, then one larger than a record.
            let mut out = Vec::new();
            let mut sealer = session.sealer(&mut out).expect("sealer");
            for i in 0..100 {
                sealer.push(format!("push {i};").as_bytes());
            }
            sealer.push(&big);
            sealer.finish().expect("finish");
            let mut expected: Vec<u8> = (0..100)
                .flat_map(|i| format!("push {i};").into_bytes())
                .collect();
            expected.extend_from_slice(&big);
            assert_eq!(
                client_in(&mut client, &out).expect(&what),
                expected,
                "{what}"
            );
            // Our close_notify ends the client's stream cleanly.
            let mut out = Vec::new();
            let mut sealer = session.sealer(&mut out).expect("sealer");
            sealer.push(b"bye");
            sealer.close_notify().expect("close");
            drop(sealer);
            assert!(session.closed());
            assert_eq!(client_in(&mut client, &out).expect(&what), b"bye");
            // The client's close_notify is the end of its stream.
            client.send_close_notify();
            let bytes = client_out(&mut client);
            let mut buf = bytes.clone();
            let o = session.open(&mut buf).expect(&what);
            assert!(o.peer_closed, "{what}");
        }
    }
}

#[test]
fn key_updates_are_followed_both_ways() {
    let (files, root) = test_files("keyupdate");
    let server = TlsServer::load(&files).expect("load");
    for suite in SUITES {
        let (mut client, mut session, _) = connect(&server, client_config(&root, true, suite));
        // The client updates its keys and asks for ours.
        client.refresh_traffic_keys().expect("refresh");
        client.writer().write_all(b"after update").expect("write");
        let bytes = client_out(&mut client);
        assert_eq!(
            open_in_steps(&mut session, &bytes, 3).expect(suite),
            b"after update"
        );
        // Our answer (a key update of our own) precedes the next records.
        let mut out = Vec::new();
        session.seal(b"pushed", &mut out).expect("seal");
        assert_eq!(client_in(&mut client, &out).expect(suite), b"pushed");
        // And the client keeps writing under its new key.
        client.writer().write_all(b"more").expect("write");
        let bytes = client_out(&mut client);
        assert_eq!(
            open_in_steps(&mut session, &bytes, 1000).expect(suite),
            b"more"
        );
        // Near the confidentiality limit the server updates on its own (the same path
        // as an update the client asked for, without the client asking).
        session.force_rekey_for_test();
        let mut out = Vec::new();
        session.seal(b"fresh key", &mut out).expect("seal");
        assert_eq!(client_in(&mut client, &out).expect(suite), b"fresh key");
        let mut out = Vec::new();
        session.seal(b"again", &mut out).expect("seal");
        assert_eq!(client_in(&mut client, &out).expect(suite), b"again");
    }
}

#[test]
fn tampered_or_foreign_records_are_refused() {
    let (files, root) = test_files("tamper");
    let server = TlsServer::load(&files).expect("load");
    for tls13 in [true, false] {
        let (mut client, mut session, _) = connect(&server, client_config(&root, tls13, "AES_128"));
        client.writer().write_all(b"data").expect("write");
        let mut bytes = client_out(&mut client);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            session.open(&mut bytes),
            Err(TlsError::Refused {
                alert: super::record::BAD_RECORD_MAC,
                ..
            })
        ));
    }
    // Not TLS at all, and a record longer than TLS allows.
    let (_c, mut session, _) = connect(&server, client_config(&root, true, "AES_128"));
    let mut garbage = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    assert!(session.open(&mut garbage).is_err());
    let mut long = vec![23, 3, 3, 0xff, 0xff];
    assert!(session.open(&mut long).is_err());
}

#[test]
fn a_fatal_alert_from_the_client_is_an_error() {
    let (files, root) = test_files("alert");
    let server = TlsServer::load(&files).expect("load");
    for tls13 in [true, false] {
        let (mut client, mut session, _) = connect(&server, client_config(&root, tls13, "AES_128"));
        // A record the client cannot decrypt makes it send bad_record_mac (20).
        let mut out = Vec::new();
        session.seal(b"push", &mut out).expect("seal");
        let last = out.len() - 1;
        out[last] ^= 1;
        assert!(client_in(&mut client, &out).is_err());
        let mut alert = client_out(&mut client);
        assert!(!alert.is_empty(), "the client sends an alert");
        match session.open(&mut alert) {
            Err(TlsError::Alert(20)) => {}
            other => panic!("tls13={tls13}: {other:?}"),
        }
    }
}

#[test]
fn plain_http_on_the_tls_port_is_named() {
    let (files, _) = test_files("plain");
    let server = TlsServer::load(&files).expect("load");
    let mut accept = server.accept().expect("accept");
    let mut plain = Vec::new();
    let e = accept
        .receive(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", &mut plain)
        .expect_err("refused");
    assert!(matches!(e, TlsError::PlainHttp), "{e}");
    // Garbage that is neither gets rustls's refusal and an alert to send.
    let mut accept = server.accept().expect("accept");
    assert!(accept
        .receive(&[0x80, 1, 2, 3, 4, 5, 6], &mut plain)
        .is_err());
    assert!(!accept.out().is_empty(), "an alert for the client");
}

#[test]
fn bad_files_are_named_and_a_reload_keeps_the_old_certificate() {
    let (files, _) = test_files("files");
    let server = TlsServer::load(&files).expect("load");
    let before = server.certs().leaf();
    // A key that does not belong to the certificate.
    let (other, _) = test_files("files-other");
    let mixed = TlsFiles {
        cert: files.cert.clone(),
        key: other.key.clone(),
    };
    let e = TlsServer::load(&mixed).expect_err("mismatch refused");
    assert!(e.to_string().contains("does not belong"), "{e}");
    let missing = TlsFiles {
        cert: files.cert.with_file_name("nope.pem"),
        key: files.key.clone(),
    };
    let e = TlsServer::load(&missing).expect_err("missing refused");
    assert!(e.to_string().contains("nope.pem"), "{e}");
    std::fs::write(&files.cert, "not pem").expect("write");
    let e = server.reload().expect_err("bad reload refused");
    assert!(e.to_string().contains("cert.pem"), "{e}");
    assert_eq!(server.certs().leaf(), before, "the old certificate stays");
    // A good new pair takes effect.
    std::fs::copy(&other.cert, &files.cert).expect("copy");
    std::fs::copy(&other.key, &files.key).expect("copy");
    server.reload().expect("reload");
    assert_ne!(server.certs().leaf(), before);
}

#[test]
fn an_idle_session_is_small() {
    // What a TLS connection keeps beyond a plain one, in its box.
    assert!(
        std::mem::size_of::<Session>() <= 232,
        "{}",
        std::mem::size_of::<Session>()
    );
}

#[test]
fn an_api_reload_with_one_bad_file_changes_nothing() {
    let (files, _) = test_files("api-all-or-nothing");
    let (ca, _) = test_files("api-all-or-nothing-ca");
    let server = TlsServer::load_api(&files, Some(&ca.cert)).expect("load");
    let before = server.certs().leaf();
    // A good new certificate, but a client CA file that cannot be used: nothing changes.
    let (other, _) = test_files("api-all-or-nothing-new");
    std::fs::copy(&other.cert, &files.cert).expect("copy");
    std::fs::copy(&other.key, &files.key).expect("copy");
    std::fs::write(&ca.cert, "not pem").expect("write");
    let e = server.reload().expect_err("the bad CA file refused");
    let named = e.to_string().contains(&ca.cert.display().to_string());
    assert!(named, "names the CA file: {e}");
    assert_eq!(
        server.certs().leaf(),
        before,
        "the certificate in use stays too"
    );
    // Mended, both take effect.
    std::fs::copy(&other.cert, &ca.cert).expect("copy");
    server.reload().expect("reload");
    assert_ne!(server.certs().leaf(), before);
}

#[test]
fn key_updates_before_the_upgrade_request_are_followed() {
    // A client may update its keys (asking for ours) before its upgrade request reaches
    // the acceptor: rustls follows them there, and the session must start from the keys
    // rustls ended with, not from the first traffic secrets.
    let (files, root) = test_files("early-update");
    let server = TlsServer::load(&files).expect("load");
    for suite in SUITES {
        for updates in [1, 3, 32] {
            let what = format!("{suite}, {updates} updates");
            let (mut client, mut session, _) = connect_with(
                &server,
                client_config(&root, true, suite),
                b"GET /ws HTTP/1.1\r\n\r\n",
                updates,
            );
            client.writer().write_all(b"after").expect("write");
            let bytes = client_out(&mut client);
            assert_eq!(
                open_in_steps(&mut session, &bytes, 5).expect(&what),
                b"after"
            );
            // Both directions go on updating from there.
            client.refresh_traffic_keys().expect("key update");
            client.writer().write_all(b"again").expect("write");
            let bytes = client_out(&mut client);
            assert_eq!(
                open_in_steps(&mut session, &bytes, 5).expect(&what),
                b"again"
            );
            let mut out = Vec::new();
            session.seal(b"pushed", &mut out).expect("seal");
            assert_eq!(client_in(&mut client, &out).expect(&what), b"pushed");
        }
    }
}

#[test]
fn application_data_with_the_last_handshake_flight_does_not_count_as_handshake() {
    // What a client sends before its handshake is over is bounded (16 KiB), but a client
    // may send its upgrade request, and more, right behind its Finished: that is not
    // counted.
    let (files, root) = test_files("long-flight");
    let server = TlsServer::load(&files).expect("load");
    let mut request = b"GET /ws HTTP/1.1\r\n".to_vec();
    while request.len() < 20 * 1024 {
        request
            .extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    request.extend_from_slice(b"\r\n");
    for tls13 in [true, false] {
        connect_with(&server, client_config(&root, tls13, "AES_128"), &request, 0);
    }
}

/// A ClientHello record of `len` bytes that says it is `claimed` bytes long.
fn hello_record(claimed: u32, len: usize) -> Vec<u8> {
    let mut r = vec![22, 3, 1];
    r.extend_from_slice(&(len as u16).to_be_bytes());
    r.push(1);
    r.extend_from_slice(&claimed.to_be_bytes()[1..]);
    r.extend_from_slice(&[3, 3]);
    r.resize(5 + len, b'A');
    r
}

#[test]
fn a_handshake_that_never_ends_is_refused_past_its_allowance() {
    let (files, _) = test_files("allowance");
    let server = TlsServer::load(&files).expect("load");
    let mut plain = Vec::new();
    // A ClientHello that says it is 65,000 bytes long, sent in 4 KiB records: rustls
    // would wait for all of it.
    let mut accept = server.accept().expect("accept");
    let mut sent = 0;
    let refused = loop {
        let rec = hello_record(65_000, 4096);
        sent += rec.len();
        if let Err(e) = accept.receive(&rec, &mut plain) {
            break e;
        }
        assert!(sent < 32 * 1024, "still taken after {sent} bytes");
    };
    assert!(
        (16 * 1024..=16 * 1024 + 4101).contains(&sent),
        "refused after {sent} bytes: {refused}"
    );
    // The start of a record counts too: small records, then one that never ends.
    let mut accept = server.accept().expect("accept");
    accept
        .receive(&hello_record(65_000, 8000), &mut plain)
        .expect("8 KB taken");
    let mut long = vec![22, 3, 3, 0x40, 0x00];
    long.resize(9000, b'E');
    let e = accept.receive(&long, &mut plain).expect_err("past 16 KiB");
    assert!(e.to_string().contains("handshake bytes"), "{e}");
    // A record longer than a handshake record may be is refused from its header.
    let mut accept = server.accept().expect("accept");
    let e = accept
        .receive(&[22, 3, 3, 0x41, 0x01], &mut plain)
        .expect_err("too long");
    assert!(e.to_string().contains("longer than TLS allows"), "{e}");
}

#[test]
fn a_failed_seal_leaves_no_plaintext_in_the_output() {
    let (files, root) = test_files("seal-fails");
    let server = TlsServer::load(&files).expect("load");
    for tls13 in [true, false] {
        let (mut client, mut session, _) = connect(&server, client_config(&root, tls13, "AES_128"));
        let mut out = Vec::new();
        let mut sealer = session.sealer(&mut out).expect("sealer");
        sealer.push(b"sealed first");
        sealer.finish().expect("finish");
        let good = out.len();
        // A push whose record fails to seal, then close_notify whose record fails: the
        // output keeps only what was sealed.
        let mut sealer = session.sealer(&mut out).expect("sealer");
        sealer.push(b"secret push");
        sealer.fail_next_seal_for_test();
        assert!(sealer.finish().is_err());
        assert_eq!(out.len(), good, "tls13={tls13}: the failed record was cut");
        let mut sealer = session.sealer(&mut out).expect("sealer");
        sealer.fail_next_seal_for_test();
        assert!(sealer.close_notify().is_err());
        drop(sealer);
        assert_eq!(out.len(), good, "tls13={tls13}: the failed alert was cut");
        // What is left is whole records the client reads.
        assert_eq!(
            client_in(&mut client, &out).expect("records"),
            b"sealed first"
        );
    }
}
