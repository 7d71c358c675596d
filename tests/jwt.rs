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
