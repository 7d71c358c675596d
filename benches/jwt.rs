//! Token verification at the handshake: `Verifier::verify` for HS256 and RS256.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use throng::auth::Verifier;
use throng::config::{JwtConfig, PublicKeys};

const RS256_PRIVATE: &str = include_str!("../src/testdata/rs256-private.pem");
const RS256_PUBLIC: &str = include_str!("../src/testdata/rs256-public.pem");
const SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef";

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    topics: &'a [&'a str],
}

fn claims() -> Claims<'static> {
    let now = jsonwebtoken::get_current_timestamp();
    Claims {
        sub: "user-123456",
        // Far enough ahead that no run of the suite sees it expire.
        exp: now + 24 * 3600,
        iat: now,
        topics: &["news.*", "user.123456"],
    }
}

fn config(algorithm: Algorithm) -> JwtConfig {
    JwtConfig {
        algorithm,
        secret: (algorithm == Algorithm::HS256).then(|| SECRET.to_string()),
        extra_secrets: Vec::new(),
        secret_file: None,
        public_keys: (algorithm == Algorithm::RS256).then(|| PublicKeys::Pem {
            path: None,
            pem: RS256_PUBLIC.as_bytes().to_vec(),
        }),
        require_exp: true,
        leeway_secs: 30,
        issuer: None,
        audience: None,
    }
}

fn verify(c: &mut Criterion) {
    let hs_key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let rs_key = EncodingKey::from_rsa_pem(RS256_PRIVATE.as_bytes()).unwrap();
    let cases = [
        ("HS256", Algorithm::HS256, hs_key),
        ("RS256", Algorithm::RS256, rs_key),
    ];

    let mut g = c.benchmark_group("jwt_verify");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, alg, key) in cases {
        let token = jsonwebtoken::encode(&Header::new(alg), &claims(), &key).unwrap();
        let verifier = Verifier::new(&config(alg)).unwrap();
        let id = verifier.verify(&token).expect("bench token verifies");
        assert_eq!(&*id.user, "user-123456");
        g.bench_function(name, |b| {
            b.iter(|| verifier.verify(black_box(&token)).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
