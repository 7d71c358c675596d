//! docs/protocol.md 1.3: algorithms, claims, and token expiry while connected (4001).
//! Key pairs in tests/fixtures were generated once with openssl for these tests only.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn sign_pem(alg: Algorithm, private: &str, claims: Value) -> String {
    let pem = std::fs::read(fixture(private)).unwrap();
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => unreachable!(),
    };
    jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap()
}

fn refused(srv: &TestServer, token: &str) -> Resp {
    raw_http(
        srv.ws,
        &upgrade_request(
            srv.ws,
            "/ws",
            &[&format!("Authorization: Bearer {token}")],
            &[],
        ),
    )
}

/// Writes a config file into a fresh temp dir and returns its path.
fn config_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("throng-jwt-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("throng.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn es256_tokens() {
    let key = fixture("es256_public.pem");
    let srv = TestServer::start(&[
        "--jwt-algorithm",
        "ES256",
        "--jwt-public-key",
        key.to_str().unwrap(),
    ]);
    let claims = json!({"sub": "ec-user", "exp": now_secs() + 600});
    let t = sign_pem(Algorithm::ES256, "es256_private.pem", claims.clone());
    let c = Client::connect(srv.ws, &t).expect("ES256 token accepted");
    assert_eq!(c.welcome["user"], "ec-user");
    // An HS256 token (even with the configured secret) is the wrong algorithm.
    refused(&srv, &token("ec-user")).assert_refusal(401, "invalid_token");
    // An RS256 token is the wrong algorithm too.
    let t = sign_pem(Algorithm::RS256, "rs256_private.pem", claims);
    refused(&srv, &t).assert_refusal(401, "invalid_token");
}

#[test]
fn rs256_tokens() {
    let key = fixture("rs256_public.pem");
    let srv = TestServer::start(&[
        "--jwt-algorithm",
        "RS256",
        "--jwt-public-key",
        key.to_str().unwrap(),
    ]);
    let t = sign_pem(
        Algorithm::RS256,
        "rs256_private.pem",
        json!({"sub": "rsa-user", "exp": now_secs() + 600}),
    );
    let c = Client::connect(srv.ws, &t).expect("RS256 token accepted");
    assert_eq!(c.welcome["user"], "rsa-user");
    // Tampered payload: bad signature.
    let mut parts: Vec<String> = t.split('.').map(String::from).collect();
    let other = sign_pem(
        Algorithm::RS256,
        "rs256_private.pem",
        json!({"sub": "admin", "exp": now_secs() + 600}),
    );
    parts[1] = other.split('.').nth(1).unwrap().to_string();
    refused(&srv, &parts.join(".")).assert_refusal(401, "invalid_token");
}

#[test]
fn hs512_server() {
    let srv = TestServer::start(&["--jwt-algorithm", "HS512"]);
    let t = sign(
        Algorithm::HS512,
        SECRET,
        json!({"sub": "h", "exp": now_secs() + 600}),
    );
    assert_eq!(
        Client::connect(srv.ws, &t).expect("HS512").welcome["user"],
        "h"
    );
    refused(&srv, &token("h")).assert_refusal(401, "invalid_token");
}

/// base64url without padding, as JWT parts are written.
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn a_token_with_an_unknown_alg_is_refused_for_its_header() {
    let srv = TestServer::start(&[]);
    let good = token("u1");
    let rest: Vec<&str> = good.split('.').collect();
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"hs256","typ":"JWT"}"#,
        r#"{"alg":"HS256","alg":"HS256"}"#,
    ] {
        let t = format!("{}.{}.{}", b64url(header.as_bytes()), rest[1], rest[2]);
        let r = raw_http(
            srv.ws,
            &upgrade_request(srv.ws, "/ws", &[&format!("Authorization: Bearer {t}")], &[]),
        );
        r.assert_refusal(401, "invalid_token");
        let m = r.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(m.contains("header is not valid"), "{header}: {m}");
        assert!(m.contains("HS256"), "{header}: {m}");
        assert!(!m.contains("wrong type"), "{header}: {m}");
    }
}

#[test]
fn not_yet_valid_token() {
    let srv = TestServer::start(&[]);
    let t = token_with(json!({"sub": "n", "exp": now_secs() + 7200, "nbf": now_secs() + 3600}));
    refused(&srv, &t).assert_refusal(401, "invalid_token");
}

#[test]
fn missing_exp_refused_by_default() {
    let srv = TestServer::start(&[]);
    let t = token_with(json!({"sub": "n"}));
    refused(&srv, &t).assert_refusal(401, "invalid_token");
}

#[test]
fn bad_sub_claims() {
    let srv = TestServer::start(&[]);
    for sub in [
        json!(""),
        json!("x".repeat(129)),
        json!("a\nb"),
        json!(1.5),
        json!(["a"]),
    ] {
        let t = token_with(json!({"sub": sub, "exp": now_secs() + 600}));
        let r = refused(&srv, &t);
        assert_eq!(r.status, 401, "sub {sub}: {}", r.text());
        r.assert_refusal(401, "invalid_token");
    }
    // 128 bytes is fine.
    let t = token_with(json!({"sub": "y".repeat(128), "exp": now_secs() + 600}));
    assert!(Client::connect(srv.ws, &t).is_ok());
}

#[test]
fn issuer_and_audience_when_configured() {
    let cfg = config_file(
        "issaud",
        "[jwt]\nsecret = \"test-secret-0123456789abcdef0123456\"\nissuer = \"https://auth.example\"\naudience = \"throng\"\n",
    );
    let srv = TestServer::start(&["--config", cfg.to_str().unwrap()]);
    let exp = now_secs() + 600;
    let good =
        token_with(json!({"sub": "i", "exp": exp, "iss": "https://auth.example", "aud": "throng"}));
    assert!(Client::connect(srv.ws, &good).is_ok(), "matching iss/aud");
    let bad_iss =
        token_with(json!({"sub": "i", "exp": exp, "iss": "https://evil.example", "aud": "throng"}));
    refused(&srv, &bad_iss).assert_refusal(401, "invalid_token");
    let bad_aud =
        token_with(json!({"sub": "i", "exp": exp, "iss": "https://auth.example", "aud": "other"}));
    refused(&srv, &bad_aud).assert_refusal(401, "invalid_token");
}

#[test]
fn token_expiry_while_connected_closes_4001() {
    let cfg = config_file(
        "leeway",
        "[jwt]\nsecret = \"test-secret-0123456789abcdef0123456\"\nleeway_secs = 0\n",
    );
    let srv = TestServer::start(&["--config", cfg.to_str().unwrap()]);
    let exp = now_secs() + 2;
    let t = token_with(json!({"sub": "short", "exp": exp}));
    let mut c = Client::connect(srv.ws, &t).expect("still valid");
    let start = Instant::now();
    let closed = c.expect_close();
    assert_eq!(closed, Closed::Code(Some(4001)));
    assert!(now_secs() >= exp, "closed before exp");
    assert!(start.elapsed() < Duration::from_secs(4));
    // A fresh token is not affected.
    let mut d = srv.connect("long");
    d.expect_silence(Duration::from_millis(200));
}

/// An RS256 token for `sub` signed with the fixture key `private`, `kid` in its header.
fn sign_kid(private: &str, kid: &str, sub: &str) -> String {
    let pem = std::fs::read(fixture(private)).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_string());
    let claims = json!({"sub": sub, "exp": now_secs() + 600});
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

/// A JWKS document of the public halves of the fixture keys `keys` (private PEM, kid).
fn jwks(keys: &[(&str, &str)]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(private, kid)| {
            let pem = std::fs::read(fixture(private)).unwrap();
            let key = EncodingKey::from_rsa_pem(&pem).unwrap();
            let mut jwk =
                jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
            jwk.common.key_id = Some(kid.to_string());
            serde_json::to_value(jwk).unwrap()
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

#[test]
fn a_jwks_rotates_on_sighup_without_dropping_connections() {
    use common::tls::{metric, ServeProc};
    let file = config_file("jwks", "").with_file_name("keys.json");
    std::fs::write(&file, jwks(&[("rs256_private.pem", "old")])).unwrap();
    let path = file.to_str().unwrap();
    let mut p = ServeProc::spawn(&["--jwt-algorithm", "RS256", "--jwt-jwks", path]);
    let (ws, api) = p.listening();
    let old = |sub: &str| sign_kid("rs256_private.pem", "old", sub);
    let new = |sub: &str| sign_kid("rs256b_private.pem", "new", sub);
    let mut first = Client::connect(ws, &old("first")).expect("the old key's token");
    let refused = Client::connect(ws, &new("early")).err();
    assert!(
        refused.is_some_and(|e| e.contains("401")),
        "the new key before the reload"
    );

    // The identity provider rotates: the new key only. Connections stay; new tokens work.
    std::fs::write(&file, jwks(&[("rs256b_private.pem", "new")])).unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || Client::connect(
            ws,
            &new("later")
        )
        .is_ok()),
        "the new key never took; log:\n{}",
        p.seen.join("\n")
    );
    p.find(Duration::from_secs(5), |l| {
        l.contains("JWT keys reloaded").then_some(())
    });
    let e = Client::connect(ws, &old("late")).err();
    assert!(e.is_some_and(|e| e.contains("401")), "the retired key");
    first.send(json!({"type": "ping", "ref": "still here"}));
    assert_eq!(first.recv()["type"], "pong");
    // The shard verifies `refresh` with the same keys.
    first.send(json!({"type": "refresh", "token": new("first"), "ref": "r"}));
    assert_eq!(first.recv()["type"], "refreshed");
    assert_eq!(metric(api, "throng_jwt_key_reloads_total"), 1);

    // A broken file: logged naming it, and the keys in use stay.
    std::fs::write(&file, "{").unwrap();
    p.signal(libc::SIGHUP);
    let line = p.find(Duration::from_secs(10), |l| {
        l.contains("JWT keys not reloaded").then(|| l.to_string())
    });
    assert!(line.contains(path), "the log names the file: {line}");
    assert!(Client::connect(ws, &new("after")).is_ok());
    assert_eq!(metric(api, "throng_jwt_key_reload_errors_total"), 1);

    p.signal(libc::SIGTERM);
    let st = p.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "exit {st:?}; log:\n{}", p.seen.join("\n"));
}

#[test]
fn a_secret_file_rotates_on_sighup() {
    use common::tls::{metric, ServeProc};
    let file = config_file("secrets", "").with_file_name("secrets");
    let (old, new) = (SECRET.to_string(), "n".repeat(40));
    std::fs::write(&file, format!("# signing: old\n{old}\n")).unwrap();
    let path = file.to_str().unwrap();
    let mut p = ServeProc::spawn_without_secret(&["--jwt-secret-file", path]);
    let (ws, api) = p.listening();
    let hs = |secret: &str, sub: &str| {
        sign(
            Algorithm::HS256,
            secret,
            json!({"sub": sub, "exp": now_secs() + 600}),
        )
    };
    let mut first = Client::connect(ws, &hs(&old, "first")).expect("the file's secret");
    assert!(Client::connect(ws, &hs(&new, "early")).is_err());

    // Step one of a rotation: both secrets verify while the issuers move to the new one.
    std::fs::write(&file, format!("{new}\n{old}\n")).unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || Client::connect(
            ws,
            &hs(&new, "later")
        )
        .is_ok()),
        "the new secret never took; log:\n{}",
        p.seen.join("\n")
    );
    assert!(Client::connect(ws, &hs(&old, "still")).is_ok());
    // Step two: the old secret retires; the connection made with it stays.
    std::fs::write(&file, format!("{new}\n")).unwrap();
    p.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || Client::connect(
        ws,
        &hs(&old, "late")
    )
    .is_err()));
    first.send(json!({"type": "ping", "ref": "still here"}));
    assert_eq!(first.recv()["type"], "pong");
    assert_eq!(metric(api, "throng_jwt_key_reloads_total"), 2);

    // A short secret: logged by line, and the secret in use stays.
    std::fs::write(&file, "short\n").unwrap();
    p.signal(libc::SIGHUP);
    let line = p.find(Duration::from_secs(10), |l| {
        l.contains("JWT keys not reloaded").then(|| l.to_string())
    });
    assert!(line.contains(path) && line.contains("line 1"), "{line}");
    assert!(Client::connect(ws, &hs(&new, "after")).is_ok());

    p.signal(libc::SIGTERM);
    let st = p.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "exit {st:?}; log:\n{}", p.seen.join("\n"));
}

/// A tiny HTTP server for a JWKS document: each GET answers the current `body`, and
/// `requests` counts them. Its thread lives as long as the test process.
struct JwksServer {
    addr: std::net::SocketAddr,
    body: std::sync::Arc<std::sync::Mutex<String>>,
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
    https: bool,
}

impl JwksServer {
    fn start(body: String) -> JwksServer {
        JwksServer::start_with(body, None)
    }

    /// Over https:// with `pair`'s certificate (a private identity provider).
    fn start_tls(body: String, pair: &common::tls::CertPair) -> JwksServer {
        JwksServer::start_with(body, Some(pair.server_config()))
    }

    fn start_with(body: String, tls: Option<std::sync::Arc<rustls::ServerConfig>>) -> JwksServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let body = std::sync::Arc::new(std::sync::Mutex::new(body));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (b, r, https) = (body.clone(), requests.clone(), tls.is_some());
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                match &tls {
                    None => answer(s, &b, &r),
                    Some(cfg) => {
                        let Ok(conn) = rustls::ServerConnection::new(cfg.clone()) else {
                            continue;
                        };
                        answer(rustls::StreamOwned::new(conn, s), &b, &r);
                    }
                }
            }
        });
        JwksServer {
            addr,
            body,
            requests,
            https,
        }
    }

    fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!(
            "{scheme}://127.0.0.1:{}/.well-known/jwks.json",
            self.addr.port()
        )
    }

    fn serve(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Reads one request head from `s` and answers `body` (a TLS handshake the client
/// refused ends it early, uncounted).
fn answer(
    mut s: impl std::io::Read + std::io::Write,
    body: &std::sync::Mutex<String>,
    requests: &std::sync::atomic::AtomicU64,
) {
    if !read_head(&mut s).ends_with(b"\r\n\r\n") {
        return;
    }
    requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let body = body.lock().unwrap().clone();
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.flush();
}

/// RS256 keys from the JWKS at `url`, fetched again every `refresh` seconds.
fn jwks_url_flags<'a>(url: &'a str, refresh: &'a str) -> [&'a str; 6] {
    [
        "--jwt-algorithm",
        "RS256",
        "--jwt-jwks-url",
        url,
        "--jwt-jwks-refresh-secs",
        refresh,
    ]
}

#[test]
fn a_jwks_url_is_fetched_again_when_a_token_names_a_new_kid() {
    let idp = JwksServer::start(jwks(&[("rs256_private.pem", "old")]));
    let url = idp.url();
    let srv = TestServer::start(&jwks_url_flags(&url, "3600"));
    assert_eq!(idp.requests(), 1, "fetched once at start");
    let old = Client::connect(srv.ws, &sign_kid("rs256_private.pem", "old", "a"));
    assert!(old.is_ok(), "{:?}", old.err());
    // The provider starts signing with a new key: its first token asks for a fetch.
    idp.serve(jwks(&[
        ("rs256_private.pem", "old"),
        ("rs256b_private.pem", "new"),
    ]));
    let new = sign_kid("rs256b_private.pem", "new", "b");
    assert!(
        wait_until(Duration::from_secs(15), || Client::connect(srv.ws, &new)
            .is_ok()),
        "the new kid never verified; {} fetches",
        idp.requests()
    );
    assert_eq!(idp.requests(), 2, "one fetch for the unknown kid");
    assert!(srv.counter("jwt_key_reloads") >= 1);
    // Made-up kids do not make it fetch again within the gap.
    for _ in 0..20 {
        let made_up = sign_kid("rs256b_private.pem", "made-up", "c");
        refused(&srv, &made_up).assert_refusal(401, "invalid_token");
    }
    assert_eq!(idp.requests(), 2);
}

#[test]
fn a_jwks_url_is_fetched_again_every_refresh() {
    let idp = JwksServer::start(jwks(&[("rs256_private.pem", "old")]));
    let url = idp.url();
    let srv = TestServer::start(&jwks_url_flags(&url, "1"));
    let old = sign_kid("rs256_private.pem", "old", "a");
    assert!(Client::connect(srv.ws, &old).is_ok());
    // The old key retired: within a refresh its tokens stop verifying.
    idp.serve(jwks(&[("rs256b_private.pem", "new")]));
    assert!(
        wait_until(Duration::from_secs(10), || Client::connect(srv.ws, &old)
            .is_err()),
        "the retired key still verifies"
    );
    assert!(Client::connect(srv.ws, &sign_kid("rs256b_private.pem", "new", "b")).is_ok());
    assert!(idp.requests() >= 2);
}

#[test]
fn sighup_has_the_refresher_fetch_the_jwks_url_at_once() {
    use common::tls::{metric, ServeProc};
    let idp = JwksServer::start(jwks(&[("rs256_private.pem", "old")]));
    let url = idp.url();
    let mut p = ServeProc::spawn(&jwks_url_flags(&url, "3600"));
    let (ws, api) = p.listening();
    assert_eq!(idp.requests(), 1, "fetched once at start");
    // The provider replaced its key outright (no token names the new kid yet).
    idp.serve(jwks(&[("rs256b_private.pem", "new")]));
    p.signal(libc::SIGHUP);
    p.find(Duration::from_secs(5), |l| {
        l.contains("fetching the JWT keys from jwks_url")
            .then_some(())
    });
    let new = sign_kid("rs256b_private.pem", "new", "b");
    assert!(
        wait_until(Duration::from_secs(10), || Client::connect(ws, &new)
            .is_ok()),
        "the fetched key never verified; {} fetches",
        idp.requests()
    );
    assert_eq!(idp.requests(), 2);
    // A signal is not held to the gap between fetches that unknown kids ask for.
    p.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || idp.requests() == 3));
    assert!(wait_until(Duration::from_secs(5), || metric(
        api,
        "throng_jwt_key_reloads_total"
    ) == 2));
    p.signal(libc::SIGTERM);
    let st = p.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "exit {st:?}; log:\n{}", p.seen.join("\n"));
}

#[test]
fn a_jwks_url_of_a_private_ca_is_trusted_through_jwks_ca_read_at_every_fetch() {
    use common::tls::{serve_refused, CertPair, TlsDir};
    let dir = TlsDir::new("jwks-ca");
    let idp = JwksServer::start_tls(jwks(&[("rs256_private.pem", "k1")]), &dir.pair);
    let url = idp.url();
    // Against the bundled roots the provider's certificate is unknown: no start.
    let (status, stderr) = serve_refused(&["--jwt-algorithm", "RS256", "--jwt-jwks-url", &url]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    // With its CA, the keys are fetched and tokens verify.
    let ca = dir.path("idp-ca.pem");
    std::fs::write(&ca, &dir.pair.cert_pem).unwrap();
    let mut flags = jwks_url_flags(&url, "1").to_vec();
    flags.extend(["--jwt-jwks-ca", ca.as_str()]);
    let srv = TestServer::start(&flags);
    let ok = Client::connect(srv.ws, &sign_kid("rs256_private.pem", "k1", "a"));
    assert!(ok.is_ok(), "{:?}", ok.err());
    // The file is read at each fetch: another CA in it fails the next fetch (the keys in
    // use stay), the right one again makes them succeed.
    std::fs::write(&ca, CertPair::generate().cert_pem).unwrap();
    let errors = srv.counter("jwt_key_reload_errors");
    srv.wait_stats("a fetch refused", |s| {
        s["counters"]["jwt_key_reload_errors"].as_u64() > Some(errors)
    });
    let still = Client::connect(srv.ws, &sign_kid("rs256_private.pem", "k1", "b"));
    assert!(still.is_ok(), "{:?}", still.err());
    std::fs::write(&ca, &dir.pair.cert_pem).unwrap();
    let reloads = srv.counter("jwt_key_reloads");
    srv.wait_stats("a fetch through the CA again", |s| {
        s["counters"]["jwt_key_reloads"].as_u64() > Some(reloads)
    });
}

#[test]
fn bad_jwks_ca_settings_are_refused_by_name() {
    let dir = common::tls::TlsDir::new("jwks-ca-bad");
    let empty = dir.path("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    let cert = dir.cert_path();
    let https = "https://127.0.0.1:1/jwks.json";
    let http = "http://127.0.0.1:1/jwks.json";
    let rs = "--jwt-algorithm";
    for (args, needle) in [
        (vec![rs, "RS256", "--jwt-jwks-ca", cert], "none is set"),
        (
            vec![rs, "RS256", "--jwt-jwks-url", http, "--jwt-jwks-ca", cert],
            "this one is http://",
        ),
        (
            vec![
                rs,
                "RS256",
                "--jwt-jwks-url",
                https,
                "--jwt-jwks-ca",
                &empty,
            ],
            "holds no PEM certificate",
        ),
    ] {
        let err = throng::config::Config::from_args(args.clone())
            .err()
            .unwrap_or_else(|| panic!("{args:?} accepted"))
            .to_string();
        assert!(
            err.contains("jwks_ca") && err.contains(needle),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn an_unreachable_or_empty_jwks_url_at_start_exits_2_naming_it() {
    use common::tls::serve_refused;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/jwks.json", l.local_addr().unwrap())
    };
    let idp = JwksServer::start("{\"keys\": []}".into());
    for (url, says) in [
        (closed.as_str(), "jwks_url"),
        (idp.url().as_str(), "no RS256 signing key"),
    ] {
        let (status, stderr) = serve_refused(&["--jwt-algorithm", "RS256", "--jwt-jwks-url", url]);
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(url) && stderr.contains(says), "{stderr}");
    }
}
