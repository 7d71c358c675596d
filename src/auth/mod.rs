//! JWT verification and the identity a token grants (docs/protocol.md 1.3).

mod jwks_url;
mod keys;

use std::cell::RefCell;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::JwtConfig;
use crate::topic::TopicPattern;
pub use jwks_url::spawn_refresher;
use keys::DecodeError;
pub use keys::{secrets_from_text, KeySet, SharedKeys};

/// Longest user id.
pub const MAX_USER_BYTES: usize = 128;

/// Why a token was refused; maps onto the 401 error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Neither header nor query parameter carried a token.
    #[error("no token: send Authorization: Bearer <jwt> or ?token=<jwt>")]
    Missing,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Bad signature, algorithm, claims or format.
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl AuthError {
    /// The `error` code of the 401 response.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Expired => "token_expired",
            AuthError::Invalid(_) => "invalid_token",
        }
    }
}

/// Who a verified token says the client is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user id (`sub`).
    pub user: Box<str>,
    /// Topic patterns from the `topics` claim.
    pub topics: Vec<TopicPattern>,
    /// Topic patterns from the `publish` claim: where the client may publish.
    pub publish: Vec<TopicPattern>,
    /// `exp`, seconds since the Unix epoch, when present.
    pub exp: Option<u64>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<serde_json::Value>,
    exp: Option<u64>,
    topics: Option<Vec<String>>,
    publish: Option<Vec<String>>,
}

/// Checks a user id: 1 to 128 bytes without control characters.
pub fn validate_user(user: &str) -> Result<(), &'static str> {
    if user.is_empty() || user.len() > MAX_USER_BYTES {
        Err("user id must be 1 to 128 bytes")
    } else if user.chars().any(char::is_control) {
        Err("user id must not contain control characters")
    } else {
        Ok(())
    }
}

/// Verifies tokens against the configured keys and algorithm. Each thread has its own
/// (acceptors, shards), holding a copy of the shared key set until a reload moves it.
pub struct Verifier {
    keys: Arc<SharedKeys>,
    /// The key set in use, with the reload generation it was taken at.
    current: RefCell<(u64, Arc<KeySet>)>,
    validation: Validation,
}

/// Why the configured key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load JWT key: {0}")]
pub struct KeyError(String);

impl Verifier {
    /// Builds a verifier from the JWT configuration, with keys of its own.
    pub fn new(cfg: &JwtConfig) -> Result<Verifier, KeyError> {
        Ok(Verifier::with_keys(cfg, SharedKeys::load(cfg)?))
    }

    /// A verifier reading `keys`, which it shares (with every verifier of the process, so
    /// that a reload reaches them all).
    pub fn with_keys(cfg: &JwtConfig, keys: Arc<SharedKeys>) -> Verifier {
        let mut validation = Validation::new(cfg.algorithm);
        validation.leeway = cfg.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        if cfg.require_exp {
            validation.set_required_spec_claims(&["exp"]);
        } else {
            validation.required_spec_claims.clear();
        }
        match &cfg.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &cfg.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        // A configured issuer or audience must be present, not only right when present:
        // jsonwebtoken checks their values but lets a token without them through.
        if cfg.issuer.is_some() {
            validation.required_spec_claims.insert("iss".to_string());
        }
        if cfg.audience.is_some() {
            validation.required_spec_claims.insert("aud".to_string());
        }
        let current = RefCell::new((keys.generation(), keys.get()));
        Verifier {
            keys,
            current,
            validation,
        }
    }

    /// The key set to verify with: this verifier's copy, renewed after a reload.
    fn key_set(&self) -> std::cell::Ref<'_, (u64, Arc<KeySet>)> {
        let generation = self.keys.generation();
        if self.current.borrow().0 != generation {
            // Taken after the generation was read: never older than it says.
            *self.current.borrow_mut() = (generation, self.keys.get());
        }
        self.current.borrow()
    }

    /// HMAC: the secret to sign this server's own tokens with (`--dev`'s demo page), as
    /// of the last reload of a secret file.
    pub fn signing_secret(&self) -> Option<Arc<str>> {
        self.key_set().1.signing_secret()
    }

    /// Verifies `token` and returns the identity it grants.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_counting(token, &mut 0)
    }

    /// `verify`, counting in `checks` the signature checks it made (a token without a
    /// `kid` is tried against every key): what the verification cost.
    pub fn verify_counting(&self, token: &str, checks: &mut usize) -> Result<Identity, AuthError> {
        let data = self
            .key_set()
            .1
            .decode::<Claims>(token, &self.validation, checks)
            .map_err(|e| match e {
                DecodeError::Jwt(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => {
                    AuthError::Expired
                }
                // A header that does not parse (an unknown or lower-case alg, alg twice)
                // fails as a JSON data error, like a claim of the wrong type: tell them
                // apart here, on the error path only.
                DecodeError::Jwt(e)
                    if matches!(e.kind(), ErrorKind::Json(_))
                        && jsonwebtoken::decode_header(token).is_err() =>
                {
                    AuthError::Invalid(header_reason(&self.validation))
                }
                DecodeError::Jwt(e) => AuthError::Invalid(plain_reason(&e)),
                DecodeError::UnknownKid(kid) => {
                    self.keys.kid_unknown();
                    AuthError::Invalid(format!(
                        "the token's kid {kid:?} names none of the configured keys"
                    ))
                }
            })?;
        let claims = data.claims;
        let user: Box<str> = match claims.sub {
            Some(serde_json::Value::String(s)) => s.into(),
            Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string().into(),
            Some(_) => {
                return Err(AuthError::Invalid(
                    "sub must be a string or an integer".into(),
                ))
            }
            None => return Err(AuthError::Invalid("missing claim sub".into())),
        };
        validate_user(&user).map_err(|e| AuthError::Invalid(e.into()))?;
        let topics = patterns("topics", claims.topics)?;
        let publish = patterns("publish", claims.publish)?;
        Ok(Identity {
            user,
            topics,
            publish,
            exp: claims.exp,
        })
    }
}

/// The patterns of a list claim (`topics`, `publish`); none when absent.
fn patterns(claim: &str, list: Option<Vec<String>>) -> Result<Vec<TopicPattern>, AuthError> {
    list.unwrap_or_default()
        .iter()
        .map(|p| {
            TopicPattern::parse(p)
                .map_err(|e| AuthError::Invalid(format!("{claim} claim {p:?}: {e}")))
        })
        .collect()
}

/// Why a token whose header does not parse failed: the algorithms its `alg` may name, and
/// the one this server takes.
fn header_reason(validation: &Validation) -> String {
    let configured = validation
        .algorithms
        .first()
        .map_or_else(String::new, |a| format!("; this server takes {a:?}"));
    format!(
        "the token's header is not valid (alg must be one of HS256, HS384, HS512, RS256, \
         RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA, spelled so and given \
         once{configured})"
    )
}

/// Why a token failed, in words a client developer can act on (not the parser's internals).
fn plain_reason(e: &jsonwebtoken::errors::Error) -> String {
    match e.kind() {
        ErrorKind::InvalidToken => {
            "not a JWT: expected three base64url parts separated by dots".into()
        }
        ErrorKind::Base64(_) => "not a JWT: a part is not valid base64url".into(),
        ErrorKind::Utf8(_) => "the token's header or claims are not UTF-8 text".into(),
        ErrorKind::Json(j) if j.is_data() => "a claim has the wrong type (sub must be a string \
             or an integer, exp and nbf numbers of seconds, topics and publish lists of strings)"
            .into(),
        ErrorKind::Json(_) => "the token's header or claims are not a valid JSON object".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAlgorithm => "the token's alg is not the configured algorithm".into(),
        ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => "the token's alg is not a known algorithm".into(),
        ErrorKind::ImmatureSignature => "token not yet valid (nbf is in the future)".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("missing claim {c}"),
        ErrorKind::InvalidClaimFormat(c) => format!("claim {c} has the wrong format"),
        ErrorKind::InvalidIssuer => "iss (issuer) is not the expected one".into(),
        ErrorKind::InvalidAudience => "aud (audience) is not the expected one".into(),
        ErrorKind::InvalidSubject => "sub is not the expected one".into(),
        _ => "the token cannot be verified with the configured key".into(),
    }
}

#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    topics: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    publish: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// How a minted token is signed and whom it names beyond its subject: the HMAC
/// algorithm (HS256 unless told) and the `iss` and `aud` claims a server may require.
#[derive(Debug, Clone, Copy, Default)]
pub struct MintOptions<'a> {
    /// HS256, HS384 or HS512; `None` is HS256.
    pub algorithm: Option<Algorithm>,
    /// The `iss` claim.
    pub issuer: Option<&'a str>,
    /// The `aud` claim.
    pub audience: Option<&'a str>,
}

impl<'a> MintOptions<'a> {
    /// What a server with `jwt` accepts (`--dev` tokens): its HMAC algorithm, issuer and
    /// audience.
    pub fn accepted_by(jwt: &'a JwtConfig) -> MintOptions<'a> {
        let hmac = matches!(
            jwt.algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        );
        MintOptions {
            algorithm: hmac.then_some(jwt.algorithm),
            issuer: jwt.issuer.as_deref(),
            audience: jwt.audience.as_deref(),
        }
    }
}

/// Signs an HS256 token for `sub`, valid for `ttl_secs`, for operators and tests.
pub fn mint_hs256(
    secret: &str,
    sub: &str,
    ttl_secs: u64,
    topics: Option<&[String]>,
    publish: Option<&[String]>,
) -> Result<String, jsonwebtoken::errors::Error> {
    mint(
        secret,
        sub,
        ttl_secs,
        topics,
        publish,
        MintOptions::default(),
    )
}

/// Signs an HMAC token for `sub`, valid for `ttl_secs`, as `options` say.
pub fn mint(
    secret: &str,
    sub: &str,
    ttl_secs: u64,
    topics: Option<&[String]>,
    publish: Option<&[String]>,
    options: MintOptions<'_>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = MintClaims {
        sub,
        // Saturating: a lifetime past the clock's range is as good as never, not expired.
        exp: now.saturating_add(ttl_secs),
        iat: now,
        topics,
        publish,
        iss: options.issuer,
        aud: options.audience,
    };
    jsonwebtoken::encode(
        &Header::new(options.algorithm.unwrap_or(Algorithm::HS256)),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes())?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PublicKeys;

    fn cfg(alg: Algorithm) -> JwtConfig {
        JwtConfig {
            algorithm: alg,
            secret: Some("s3cret".into()),
            extra_secrets: Vec::new(),
            secret_file: None,
            public_keys: None,
            require_exp: true,
            leeway_secs: 0,
            issuer: None,
            audience: None,
        }
    }

    fn sign(alg: Algorithm, secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn later() -> u64 {
        jsonwebtoken::get_current_timestamp() + 600
    }

    #[test]
    fn good_token_with_topics() {
        let v = Verifier::new(&cfg(Algorithm::HS256)).unwrap();
        let t = sign(
            Algorithm::HS256,
            "s3cret",
            serde_json::json!({"sub":"alice","exp":later(),"topics":["room:*","news"]}),
        );
        let id = v.verify(&t).unwrap();
        assert_eq!(&*id.user, "alice");
        assert_eq!(id.topics.len(), 2);
        assert!(crate::topic::allowed(&id.topics, "room:7"));
    }

    #[test]
    fn integer_sub() {
        let v = Verifier::new(&cfg(Algorithm::HS256)).unwrap();
        let t = sign(
            Algorithm::HS256,
            "s3cret",
            serde_json::json!({"sub":42,"exp":later()}),
        );
        assert_eq!(&*v.verify(&t).unwrap().user, "42");
    }

    #[test]
    fn refusals() {
        let v = Verifier::new(&cfg(Algorithm::HS256)).unwrap();
        let bad_sig = sign(
            Algorithm::HS256,
            "other",
            serde_json::json!({"sub":"a","exp":later()}),
        );
        assert!(matches!(v.verify(&bad_sig), Err(AuthError::Invalid(_))));
        let wrong_alg = sign(
            Algorithm::HS384,
            "s3cret",
            serde_json::json!({"sub":"a","exp":later()}),
        );
        assert!(matches!(v.verify(&wrong_alg), Err(AuthError::Invalid(_))));
        let expired = sign(
            Algorithm::HS256,
            "s3cret",
            serde_json::json!({"sub":"a","exp":1000}),
        );
        assert_eq!(v.verify(&expired).unwrap_err(), AuthError::Expired);
        let no_exp = sign(Algorithm::HS256, "s3cret", serde_json::json!({"sub":"a"}));
        assert!(matches!(v.verify(&no_exp), Err(AuthError::Invalid(_))));
        let no_sub = sign(
            Algorithm::HS256,
            "s3cret",
            serde_json::json!({"exp":later()}),
        );
        assert!(matches!(v.verify(&no_sub), Err(AuthError::Invalid(_))));
        let long_sub = sign(
            Algorithm::HS256,
            "s3cret",
            serde_json::json!({"sub":"x".repeat(129),"exp":later()}),
        );
        assert!(matches!(v.verify(&long_sub), Err(AuthError::Invalid(_))));
        let bad_topic = sign(
            Algorithm::HS256,
            "s3cret",
            serde_json::json!({"sub":"a","exp":later(),"topics":["a b"]}),
        );
        assert!(matches!(v.verify(&bad_topic), Err(AuthError::Invalid(_))));
        assert!(matches!(v.verify("garbage"), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn refusals_are_in_plain_words() {
        let v = Verifier::new(&cfg(Algorithm::HS256)).unwrap();
        let reason = |t: &str| match v.verify(t) {
            Err(AuthError::Invalid(m)) => m,
            other => panic!("{t:?}: {other:?}"),
        };
        assert!(reason("garbage").starts_with("not a JWT: expected three"));
        assert!(
            reason("a.b.c").starts_with("not a JWT"),
            "{}",
            reason("a.b.c")
        );
        let wrong_type = sign(
            Algorithm::HS256,
            "s3cret",
            serde_json::json!({"sub":"a","exp":later(),"topics":"room:*"}),
        );
        assert!(reason(&wrong_type).starts_with("a claim has the wrong type"));
        let wrong_alg = sign(
            Algorithm::HS512,
            "s3cret",
            serde_json::json!({"sub":"a","exp":later()}),
        );
        assert_eq!(
            reason(&wrong_alg),
            "the token's alg is not the configured algorithm"
        );
        let early = sign(
            Algorithm::HS256,
            "s3cret",
            serde_json::json!({"sub":"a","exp":later(),"nbf":later()}),
        );
        assert_eq!(reason(&early), "token not yet valid (nbf is in the future)");
        // Claims nested 1,000 deep, validly signed.
        struct Nest(u32);
        impl serde::Serialize for Nest {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                if self.0 == 0 {
                    return s.serialize_u8(1);
                }
                let mut seq = s.serialize_seq(Some(1))?;
                seq.serialize_element(&Nest(self.0 - 1))?;
                seq.end()
            }
        }
        #[derive(serde::Serialize)]
        struct Deep {
            sub: Nest,
            exp: u64,
        }
        let deep = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Deep {
                sub: Nest(1000),
                exp: later(),
            },
            &EncodingKey::from_secret(b"s3cret").unwrap(),
        )
        .unwrap();
        // Deep claims are refused by the JSON parser's depth limit, never a stack overflow.
        assert!(
            reason(&deep).starts_with("the token's header or claims"),
            "{}",
            reason(&deep)
        );
        for m in [reason("garbage"), reason(&wrong_type), reason(&wrong_alg)] {
            assert!(!m.contains("Error") && !m.contains("line 1"), "{m}");
        }
    }

    #[test]
    fn configured_issuer_and_audience_are_required() {
        let mut c = cfg(Algorithm::HS256);
        c.issuer = Some("https://auth.example".into());
        c.audience = Some("throng".into());
        let v = Verifier::new(&c).unwrap();
        let good = sign(
            Algorithm::HS256,
            "s3cret",
            serde_json::json!({"sub":"a","exp":later(),"iss":"https://auth.example","aud":"throng"}),
        );
        assert!(v.verify(&good).is_ok());
        for claims in [
            serde_json::json!({"sub":"a","exp":later(),"aud":"throng"}),
            serde_json::json!({"sub":"a","exp":later(),"iss":"https://auth.example"}),
        ] {
            let t = sign(Algorithm::HS256, "s3cret", claims.clone());
            match v.verify(&t) {
                Err(AuthError::Invalid(m)) => assert!(m.starts_with("missing claim"), "{m}"),
                other => panic!("{claims}: {other:?}"),
            }
        }
        // Without configuration they stay optional.
        let plain = Verifier::new(&cfg(Algorithm::HS256)).unwrap();
        let t = sign(
            Algorithm::HS256,
            "s3cret",
            serde_json::json!({"sub":"a","exp":later()}),
        );
        assert!(plain.verify(&t).is_ok());
    }

    #[test]
    fn exp_optional_when_configured() {
        let mut c = cfg(Algorithm::HS256);
        c.require_exp = false;
        let v = Verifier::new(&c).unwrap();
        let t = sign(Algorithm::HS256, "s3cret", serde_json::json!({"sub":"a"}));
        assert!(v.verify(&t).is_ok());
    }

    fn asymmetric(alg: Algorithm, public: &str, private: &str) {
        let c = JwtConfig {
            algorithm: alg,
            secret: None,
            extra_secrets: Vec::new(),
            secret_file: None,
            public_keys: Some(PublicKeys::Pem {
                path: None,
                pem: public.as_bytes().to_vec(),
            }),
            require_exp: true,
            leeway_secs: 0,
            issuer: None,
            audience: None,
        };
        let v = Verifier::new(&c).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
            _ => EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
        };
        let claims = serde_json::json!({"sub":"carol","exp":later()});
        let t = jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap();
        assert_eq!(&*v.verify(&t).unwrap().user, "carol");
        // An HS256 token signed with the public key text must not pass (alg confusion).
        let forged = sign(Algorithm::HS256, public, claims);
        assert!(matches!(v.verify(&forged), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn rs256_and_es256() {
        asymmetric(
            Algorithm::RS256,
            include_str!("../testdata/rs256-public.pem"),
            include_str!("../testdata/rs256-private.pem"),
        );
        asymmetric(
            Algorithm::ES256,
            include_str!("../testdata/es256-public.pem"),
            include_str!("../testdata/es256-private.pem"),
        );
    }

    #[test]
    fn bad_public_key_is_an_error() {
        let c = JwtConfig {
            algorithm: Algorithm::RS256,
            secret: None,
            extra_secrets: Vec::new(),
            secret_file: None,
            public_keys: Some(PublicKeys::Pem {
                path: None,
                pem: b"not a key".to_vec(),
            }),
            require_exp: true,
            leeway_secs: 0,
            issuer: None,
            audience: None,
        };
        assert!(Verifier::new(&c).is_err());
    }

    const RS_A_PUBLIC: &str = include_str!("../testdata/rs256-public.pem");
    const RS_A_PRIVATE: &str = include_str!("../testdata/rs256-private.pem");
    const RS_B_PUBLIC: &str = include_str!("../testdata/rs256b-public.pem");
    const RS_B_PRIVATE: &str = include_str!("../testdata/rs256b-private.pem");

    /// An RS256 token for `sub` signed with `private`, with `kid` in its header.
    fn rs256(private: &str, kid: Option<&str>, sub: &str) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_string);
        let key = EncodingKey::from_rsa_pem(private.as_bytes()).unwrap();
        jsonwebtoken::encode(
            &header,
            &serde_json::json!({"sub": sub, "exp": later()}),
            &key,
        )
        .unwrap()
    }

    /// A JWKS document of the public halves of `keys` (private PEM, kid).
    fn jwks(keys: &[(&str, &str)], extra: &[serde_json::Value]) -> Vec<u8> {
        let mut out: Vec<serde_json::Value> = keys
            .iter()
            .map(|(private, kid)| {
                let key = EncodingKey::from_rsa_pem(private.as_bytes()).unwrap();
                let mut jwk =
                    jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
                jwk.common.key_id = Some(kid.to_string());
                serde_json::to_value(jwk).unwrap()
            })
            .collect();
        out.extend(extra.iter().cloned());
        serde_json::to_vec(&serde_json::json!({ "keys": out })).unwrap()
    }

    fn rs_config(keys: PublicKeys) -> JwtConfig {
        JwtConfig {
            algorithm: Algorithm::RS256,
            secret: None,
            extra_secrets: Vec::new(),
            secret_file: None,
            public_keys: Some(keys),
            require_exp: true,
            leeway_secs: 0,
            issuer: None,
            audience: None,
        }
    }

    #[test]
    fn a_pem_file_with_two_keys_takes_tokens_of_either() {
        let pem = format!("{RS_A_PUBLIC}\n{RS_B_PUBLIC}").into_bytes();
        let v = Verifier::new(&rs_config(PublicKeys::Pem { path: None, pem })).unwrap();
        assert_eq!(
            &*v.verify(&rs256(RS_A_PRIVATE, None, "old")).unwrap().user,
            "old"
        );
        assert_eq!(
            &*v.verify(&rs256(RS_B_PRIVATE, None, "new")).unwrap().user,
            "new"
        );
        // A kid means nothing to PEM keys: every key is still tried.
        assert!(v.verify(&rs256(RS_B_PRIVATE, Some("x"), "new")).is_ok());
        let only_a = Verifier::new(&rs_config(PublicKeys::Pem {
            path: None,
            pem: RS_A_PUBLIC.as_bytes().to_vec(),
        }))
        .unwrap();
        let e = only_a
            .verify(&rs256(RS_B_PRIVATE, None, "new"))
            .unwrap_err();
        assert_eq!(e, AuthError::Invalid("bad signature".into()));
    }

    #[test]
    fn a_verification_counts_its_signature_checks() {
        let pem = format!("{RS_A_PUBLIC}\n{RS_B_PUBLIC}").into_bytes();
        let v = Verifier::new(&rs_config(PublicKeys::Pem { path: None, pem })).unwrap();
        let checks = |token: &str| {
            let mut n = 0;
            let _ = v.verify_counting(token, &mut n);
            n
        };
        // PEM keys have no kid: tried in turn until one fits.
        assert_eq!(checks(&rs256(RS_A_PRIVATE, None, "a")), 1);
        assert_eq!(checks(&rs256(RS_B_PRIVATE, None, "b")), 2);
        // A header that does not parse is refused before any check.
        assert_eq!(checks("not.a.token"), 0);
    }

    #[test]
    fn a_jwks_picks_the_key_by_kid_and_skips_keys_for_other_uses() {
        let json = jwks(
            &[(RS_A_PRIVATE, "a"), (RS_B_PRIVATE, "b")],
            &[
                serde_json::json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}),
                serde_json::json!({"kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"}),
            ],
        );
        let keys = PublicKeys::Jwks {
            path: "unused.json".into(),
            json,
        };
        let v = Verifier::new(&rs_config(keys)).unwrap();
        assert_eq!(v.keys.get().len(), 2, "the oct and enc keys are skipped");
        assert!(v.verify(&rs256(RS_A_PRIVATE, Some("a"), "u")).is_ok());
        assert!(v.verify(&rs256(RS_B_PRIVATE, Some("b"), "u")).is_ok());
        // The kid picks the key: B's token under A's kid fails.
        let e = v.verify(&rs256(RS_B_PRIVATE, Some("a"), "u")).unwrap_err();
        assert_eq!(e, AuthError::Invalid("bad signature".into()));
        let e = v.verify(&rs256(RS_B_PRIVATE, Some("c"), "u")).unwrap_err();
        assert!(e.to_string().contains("kid \"c\" names none"), "{e}");
        // Without a kid each key is tried.
        assert!(v.verify(&rs256(RS_B_PRIVATE, None, "u")).is_ok());
    }

    #[test]
    fn a_kid_no_key_has_is_unknown_even_beside_keys_without_a_kid() {
        let key = EncodingKey::from_rsa_pem(RS_A_PRIVATE.as_bytes()).unwrap();
        let unnamed = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
        let json = jwks(
            &[(RS_A_PRIVATE, "a")],
            &[serde_json::to_value(unnamed).unwrap()],
        );
        let keys = PublicKeys::Jwks {
            path: "k.json".into(),
            json,
        };
        let v = Verifier::new(&rs_config(keys)).unwrap();
        // The key without a kid is tried and does not fit: the kid is what is unknown
        // (with jwks_url, what makes the server fetch the keys again).
        let e = v.verify(&rs256(RS_B_PRIVATE, Some("b"), "u")).unwrap_err();
        assert!(e.to_string().contains("kid \"b\" names none"), "{e}");
        assert!(v.verify(&rs256(RS_A_PRIVATE, Some("z"), "u")).is_ok());
    }

    #[test]
    fn a_jwks_without_a_usable_key_or_not_a_jwks_is_an_error() {
        for (json, says) in [
            (b"{\"keys\": []}".to_vec(), "no RS256 signing key"),
            (b"[1, 2]".to_vec(), "not a JWKS document"),
            (
                jwks(&[], &[serde_json::json!({"kty": "oct", "k": "c2VjcmV0"})]),
                "no RS256 signing key (of 1 keys)",
            ),
        ] {
            let keys = PublicKeys::Jwks {
                path: "k.json".into(),
                json,
            };
            let e = Verifier::new(&rs_config(keys)).err().expect("refused");
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn a_reload_swaps_the_keys_for_every_verifier_and_a_bad_file_keeps_them() {
        let dir = std::env::temp_dir().join(format!("throng-jwt-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys.json");
        std::fs::write(&file, jwks(&[(RS_A_PRIVATE, "a")], &[])).unwrap();
        let rs = rs_config(PublicKeys::Jwks {
            path: file.clone(),
            json: std::fs::read(&file).unwrap(),
        });
        let keys = SharedKeys::load(&rs).unwrap();
        let (one, two) = (
            Verifier::with_keys(&rs, Arc::clone(&keys)),
            Verifier::with_keys(&rs, Arc::clone(&keys)),
        );
        let b = rs256(RS_B_PRIVATE, Some("b"), "u");
        assert!(one.verify(&b).is_err());
        std::fs::write(
            &file,
            jwks(&[(RS_A_PRIVATE, "a"), (RS_B_PRIVATE, "b")], &[]),
        )
        .unwrap();
        assert_eq!(keys.reload().map(|r| r.ok()), Some(Some(2)));
        assert!(one.verify(&b).is_ok() && two.verify(&b).is_ok());
        std::fs::write(&file, "not json").unwrap();
        let e = keys.reload().expect("a file to reload").unwrap_err();
        assert!(e.to_string().contains("keys.json"), "names the file: {e}");
        assert!(two.verify(&b).is_ok(), "the keys in use stay");
        // A secret has nothing to reload.
        assert!(SharedKeys::load(&cfg(Algorithm::HS256))
            .unwrap()
            .reload()
            .is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_secret_file_accepts_each_secret_and_a_reload_rotates_them() {
        let dir = std::env::temp_dir().join(format!("throng-jwt-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secrets");
        let (old, new, next) = ("o".repeat(32), "n".repeat(32), "x".repeat(40));
        std::fs::write(&file, format!("# rotation\n{new}\n\n{old}\n")).unwrap();
        let secrets = secrets_from_text(&std::fs::read_to_string(&file).unwrap(), 32).unwrap();
        assert_eq!(secrets, vec![new.clone(), old.clone()]);
        let c = JwtConfig {
            secret: Some(new.clone()),
            extra_secrets: vec![old.clone()],
            secret_file: Some(file.clone()),
            ..cfg(Algorithm::HS256)
        };
        let keys = SharedKeys::load(&c).unwrap();
        let v = Verifier::with_keys(&c, Arc::clone(&keys));
        let token = |secret: &str| mint_hs256(secret, "u", 60, None, None).unwrap();
        assert!(v.verify(&token(&old)).is_ok() && v.verify(&token(&new)).is_ok());
        let e = v.verify(&token(&next)).unwrap_err();
        assert_eq!(e, AuthError::Invalid("bad signature".into()));
        // The old secret retires, the next one comes in.
        std::fs::write(&file, format!("{next}\n{new}\n")).unwrap();
        assert_eq!(keys.reload().map(|r| r.ok()), Some(Some(2)));
        assert!(v.verify(&token(&next)).is_ok() && v.verify(&token(&new)).is_ok());
        assert!(v.verify(&token(&old)).is_err());
        // The server's own tokens (--dev) are signed with the file's first line.
        assert_eq!(v.signing_secret().as_deref(), Some(next.as_str()));
        // A short secret is refused by line, and the secrets in use stay.
        std::fs::write(&file, format!("{next}\ntoo-short\n")).unwrap();
        let e = keys.reload().expect("a file to reload").unwrap_err();
        assert!(e.to_string().contains("line 2 is 9 bytes"), "{e}");
        std::fs::write(&file, "# nothing\n").unwrap();
        let e = keys.reload().expect("a file to reload").unwrap_err();
        assert!(e.to_string().contains("holds no secret"), "{e}");
        assert!(v.verify(&token(&next)).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn minted_token_verifies() {
        let v = Verifier::new(&cfg(Algorithm::HS256)).unwrap();
        let topics = vec!["room:*".to_string()];
        let t = mint_hs256("s3cret", "bob", 60, Some(&topics), Some(&topics)).unwrap();
        let id = v.verify(&t).unwrap();
        assert_eq!(&*id.user, "bob");
        assert_eq!(id.topics.len(), 1);
        assert!(crate::topic::allowed(&id.publish, "room:1"));
    }

    #[test]
    fn bad_publish_claim_is_named() {
        let v = Verifier::new(&cfg(Algorithm::HS256)).unwrap();
        let t = mint_hs256("s3cret", "bob", 60, None, Some(&["a b".to_string()])).unwrap();
        let e = v.verify(&t).unwrap_err().to_string();
        assert!(e.contains("publish claim"), "{e}");
    }
}
