//! The keys tokens are verified with: the HMAC secret, or public keys read from a PEM file
//! (one key, or several during a rotation) or a JWKS file (keys named by `kid`). One
//! `SharedKeys` serves every verifier of the process and is replaced whole by a reload
//! (`SIGHUP`), so a signing key can be rotated without dropping a connection.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, TokenData, Validation};
use serde::de::DeserializeOwned;

use super::KeyError;
use crate::config::{JwtConfig, PublicKeys};

/// One verification key, with the `kid` a JWKS gave it.
struct NamedKey {
    kid: Option<String>,
    key: DecodingKey,
}

/// The keys in use at one moment.
pub struct KeySet {
    keys: Vec<NamedKey>,
    /// HMAC: the first secret, the one this server signs with (`--dev`'s demo tokens).
    signing: Option<Arc<str>>,
}

/// Why a token could not be decoded with the key set.
pub(super) enum DecodeError {
    /// What jsonwebtoken said (with the last key tried).
    Jwt(jsonwebtoken::errors::Error),
    /// The token's `kid` names none of the keys.
    UnknownKid(String),
}

impl KeySet {
    /// HMAC secrets: the first, then the others of a rotation.
    fn secrets<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Result<KeySet, KeyError> {
        let mut first = None;
        let keys = secrets
            .into_iter()
            .map(|s| {
                first.get_or_insert(s);
                let key = DecodingKey::from_secret(s.as_bytes())
                    .map_err(|e| KeyError(format!("secret: {e}")))?;
                Ok(NamedKey { kid: None, key })
            })
            .collect::<Result<Vec<_>, KeyError>>()?;
        let Some(first) = first else {
            return Err(KeyError("no secret configured".into()));
        };
        Ok(KeySet {
            keys,
            signing: Some(first.into()),
        })
    }

    /// Every public key of a PEM text, for `alg` (RS256 or ES256).
    fn pem(alg: Algorithm, pem: &[u8]) -> Result<KeySet, KeyError> {
        let text = std::str::from_utf8(pem)
            .map_err(|_| KeyError(format!("{alg:?} public key: not PEM text")))?;
        let mut keys = Vec::new();
        for block in pem_blocks(text) {
            let key = match alg {
                Algorithm::RS256 => DecodingKey::from_rsa_pem(block.as_bytes()),
                _ => DecodingKey::from_ec_pem(block.as_bytes()),
            }
            .map_err(|e| KeyError(format!("{alg:?} public key {}: {e}", keys.len() + 1)))?;
            keys.push(NamedKey { kid: None, key });
        }
        if keys.is_empty() {
            return Err(KeyError(format!("{alg:?} public key: no PEM block")));
        }
        Ok(KeySet {
            keys,
            signing: None,
        })
    }

    /// The keys of a JWKS document that can verify `alg`: RSA keys for RS256, P-256 keys
    /// for ES256, none marked for encryption or for another `alg`.
    fn jwks(alg: Algorithm, json: &[u8]) -> Result<KeySet, KeyError> {
        let set: JwkSet = serde_json::from_slice(json)
            .map_err(|e| KeyError(format!("not a JWKS document ({{\"keys\": [...]}}): {e}")))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let fits = match (&jwk.algorithm, alg) {
                (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
                (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
                    ec.curve == EllipticCurve::P256
                }
                _ => false,
            };
            let for_signing = !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption));
            let same_alg = jwk.common.key_algorithm.is_none_or(|a| {
                matches!(
                    (a, alg),
                    (KeyAlgorithm::RS256, Algorithm::RS256)
                        | (KeyAlgorithm::ES256, Algorithm::ES256)
                )
            });
            if !(fits && for_signing && same_alg) {
                continue;
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                KeyError(format!(
                    "JWKS key {}: {e}",
                    jwk.common.key_id.as_deref().unwrap_or("without kid")
                ))
            })?;
            keys.push(NamedKey {
                kid: jwk.common.key_id.clone(),
                key,
            });
        }
        if keys.is_empty() {
            return Err(KeyError(format!(
                "the JWKS document has no {alg:?} signing key (of {} keys)",
                set.keys.len()
            )));
        }
        Ok(KeySet {
            keys,
            signing: None,
        })
    }

    /// The keys' `kid`s, in order (`None` for a key without one).
    pub fn kids(&self) -> Vec<Option<String>> {
        self.keys.iter().map(|k| k.kid.clone()).collect()
    }

    /// HMAC: the secret this server signs with (the first of a secret file).
    pub fn signing_secret(&self) -> Option<Arc<str>> {
        self.signing.clone()
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it holds none (never, once built).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies and decodes `token`: with the key its `kid` names, else with each key in
    /// turn until one's signature matches.
    /// `checks` counts the signature checks made (what a verification costs).
    pub(super) fn decode<T: DeserializeOwned>(
        &self,
        token: &str,
        validation: &Validation,
        checks: &mut usize,
    ) -> Result<TokenData<T>, DecodeError> {
        if let [only] = self.keys.as_slice() {
            if only.kid.is_none() {
                // The common case: one key, no header to look at first.
                *checks += 1;
                return jsonwebtoken::decode(token, &only.key, validation)
                    .map_err(DecodeError::Jwt);
            }
        }
        let kid = jsonwebtoken::decode_header(token)
            .map_err(DecodeError::Jwt)?
            .kid;
        let named = kid
            .as_deref()
            .and_then(|kid| self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)));
        if let Some(k) = named {
            *checks += 1;
            return jsonwebtoken::decode(token, &k.key, validation).map_err(DecodeError::Jwt);
        }
        // A `kid` none of the keys has: only keys without one may still fit it.
        let candidates: Vec<&NamedKey> = self
            .keys
            .iter()
            .filter(|k| kid.is_none() || k.kid.is_none())
            .collect();
        let mut last = None;
        for k in candidates {
            *checks += 1;
            match jsonwebtoken::decode(token, &k.key, validation) {
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => last = Some(e),
                done => return done.map_err(DecodeError::Jwt),
            }
        }
        let named_keys = self.keys.iter().any(|k| k.kid.is_some());
        match (kid, last) {
            // Keys go by `kid` here, no key has this one and none without a `kid` fits:
            // a key the provider has just started using, as far as the server can tell
            // (with `jwks_url` that asks for a fetch). PEM keys have no `kid`.
            (Some(kid), _) if named_keys => Err(DecodeError::UnknownKid(kid)),
            (Some(kid), None) => Err(DecodeError::UnknownKid(kid)),
            (_, Some(e)) => Err(DecodeError::Jwt(e)),
            (None, None) => Err(DecodeError::Jwt(ErrorKind::InvalidSignature.into())),
        }
    }
}

/// The PEM blocks of `text`, each from its BEGIN line through its END line.
fn pem_blocks(text: &str) -> Vec<&str> {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(b) = rest.find(BEGIN) {
        let from = &rest[b..];
        let Some(e) = from.find(END) else {
            // An unterminated block: handed on whole, for the parser to refuse.
            out.push(from);
            break;
        };
        let tail = e + END.len();
        let end = from[tail..]
            .find("-----")
            .map_or(from.len(), |i| tail + i + 5);
        out.push(&from[..end]);
        rest = &from[end..];
    }
    out
}

/// The secrets of a secret file: one per line, blank lines and `#` comments skipped,
/// each at least `min_bytes` long.
pub fn secrets_from_text(text: &str, min_bytes: usize) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.len() < min_bytes {
            return Err(format!(
                "the secret on line {} is {} bytes; an HMAC secret needs at least {min_bytes}",
                i + 1,
                line.len()
            ));
        }
        out.push(line.to_string());
    }
    if out.is_empty() {
        return Err("holds no secret (one per line)".into());
    }
    Ok(out)
}

/// Where the keys come from: a reload reads the file again.
enum Source {
    /// The secret, or key bytes given without a file: nothing to reload.
    Fixed,
    /// A file of HMAC secrets.
    SecretFile(PathBuf),
    /// A PEM file of public keys.
    Pem(PathBuf),
    /// A JWKS file.
    Jwks(PathBuf),
    /// A JWKS URL (`jwks_url`), verified against `jwks_ca` when set.
    JwksUrl(String, Option<PathBuf>),
}

/// The key set every verifier of the process reads, replaceable while serving.
pub struct SharedKeys {
    algorithm: Algorithm,
    source: Source,
    current: RwLock<Arc<KeySet>>,
    /// Bumped by each reload: a verifier keeps its copy of the set until this moves, so
    /// a verification reads one shared word and takes no lock.
    generation: AtomicU64,
    /// `jwks_url`: a verifier met a `kid` none of the keys has.
    refresh_asked: AtomicBool,
    /// `jwks_url`: `SIGHUP` asked for a fetch now (no `MIN_GAP`).
    fetch_now: AtomicBool,
    /// `jwks_url`: the thread that fetches the keys again (`jwks_url::spawn_refresher`).
    refresher: OnceLock<std::thread::Thread>,
}

impl SharedKeys {
    /// The keys the configuration names, as read at startup.
    pub fn load(cfg: &JwtConfig) -> Result<Arc<SharedKeys>, KeyError> {
        let alg = cfg.algorithm;
        let (set, source) = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let all = cfg
                    .secret
                    .iter()
                    .chain(&cfg.extra_secrets)
                    .map(String::as_str);
                let source = cfg
                    .secret_file
                    .clone()
                    .map_or(Source::Fixed, Source::SecretFile);
                (KeySet::secrets(all)?, source)
            }
            Algorithm::RS256 | Algorithm::ES256 => match &cfg.public_keys {
                Some(PublicKeys::Pem { path, pem }) => (
                    KeySet::pem(alg, pem)?,
                    path.clone().map_or(Source::Fixed, Source::Pem),
                ),
                Some(PublicKeys::Jwks { path, json }) => {
                    (KeySet::jwks(alg, json)?, Source::Jwks(path.clone()))
                }
                Some(PublicKeys::JwksUrl { url, ca, .. }) => {
                    let json = super::jwks_url::fetch(url, ca.as_deref())?;
                    let set = KeySet::jwks(alg, &json)
                        .map_err(|e| KeyError(format!("jwks_url {url}: {}", e.0)))?;
                    (set, Source::JwksUrl(url.clone(), ca.clone()))
                }
                None => return Err(KeyError("no public key configured".into())),
            },
            other => return Err(KeyError(format!("unsupported algorithm {other:?}"))),
        };
        Ok(Arc::new(SharedKeys {
            algorithm: alg,
            source,
            current: RwLock::new(Arc::new(set)),
            generation: AtomicU64::new(0),
            refresh_asked: AtomicBool::new(false),
            fetch_now: AtomicBool::new(false),
            refresher: OnceLock::new(),
        }))
    }

    /// Reads the key file again; verifications after it use the new keys. `None` when the
    /// keys come from no file (the secret); on error the keys in use stay. Else how many
    /// keys it holds. With `jwks_url` only the refresher thread calls it (one fetch at a
    /// time, the newest answer last): `SIGHUP` asks it with [`SharedKeys::fetch_soon`].
    pub fn reload(&self) -> Option<Result<usize, KeyError>> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|e| KeyError(format!("cannot read {}: {e}", path.display())))
        };
        let named = |path: &Path, e: KeyError| KeyError(format!("{}: {}", path.display(), e.0));
        let set = match &self.source {
            Source::Fixed => return None,
            Source::SecretFile(path) => std::fs::read_to_string(path)
                .map_err(|e| KeyError(format!("cannot read {}: {e}", path.display())))
                .and_then(|text| {
                    let secrets = secrets_from_text(&text, crate::config::MIN_SECRET_BYTES)
                        .map_err(|e| KeyError(format!("{}: {e}", path.display())))?;
                    KeySet::secrets(secrets.iter().map(String::as_str))
                }),
            Source::Pem(path) => read(path)
                .and_then(|pem| KeySet::pem(self.algorithm, &pem))
                .map_err(|e| named(path, e)),
            Source::Jwks(path) => read(path)
                .and_then(|json| KeySet::jwks(self.algorithm, &json))
                .map_err(|e| named(path, e)),
            Source::JwksUrl(url, ca) => {
                super::jwks_url::fetch(url, ca.as_deref()).and_then(|json| {
                    KeySet::jwks(self.algorithm, &json)
                        .map_err(|e| KeyError(format!("jwks_url {url}: {}", e.0)))
                })
            }
        };
        Some(set.map(|set| {
            let n = set.len();
            let set = Arc::new(set);
            match self.current.write() {
                Ok(mut cur) => *cur = set,
                // A panic while holding the lock cannot leave the Arc half-written.
                Err(poisoned) => *poisoned.into_inner() = set,
            }
            self.generation.fetch_add(1, Ordering::Release);
            n
        }))
    }

    /// Whether the keys come from a URL, which a refresher thread fetches again.
    pub fn from_url(&self) -> bool {
        matches!(self.source, Source::JwksUrl(..))
    }

    /// A verifier met a `kid` none of the keys has: with `jwks_url`, the refresher
    /// fetches the keys soon (at most once per `jwks_url::MIN_GAP`).
    pub(super) fn kid_unknown(&self) {
        if self.from_url() && !self.refresh_asked.swap(true, Ordering::Relaxed) {
            if let Some(t) = self.refresher.get() {
                t.unpark();
            }
        }
    }

    /// `jwks_url`, on `SIGHUP`: the refresher fetches the keys at once, off the caller's
    /// thread (it logs and counts the outcome).
    pub fn fetch_soon(&self) {
        self.fetch_now.store(true, Ordering::Relaxed);
        self.wake_refresher();
    }

    /// Takes the `fetch_soon` request, if any.
    pub(super) fn take_fetch_now(&self) -> bool {
        self.fetch_now.swap(false, Ordering::Relaxed)
    }

    pub(super) fn set_refresher(&self, thread: std::thread::Thread) {
        let _ = self.refresher.set(thread);
    }

    pub(super) fn refresh_asked(&self) -> bool {
        self.refresh_asked.load(Ordering::Relaxed)
    }

    pub(super) fn clear_refresh_asked(&self) {
        self.refresh_asked.store(false, Ordering::Relaxed);
    }

    /// Wakes the refresher (to see that the server stops).
    pub fn wake_refresher(&self) {
        if let Some(t) = self.refresher.get() {
            t.unpark();
        }
    }

    /// How many reloads have taken effect (verifiers compare it with their copy's).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The keys in use now.
    pub fn get(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(cur) => Arc::clone(&cur),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_cut_at_their_end_lines() {
        let two = "junk\n-----BEGIN PUBLIC KEY-----\nAAA\n-----END PUBLIC KEY-----\n\
                   -----BEGIN PUBLIC KEY-----\nBBB\n-----END PUBLIC KEY-----";
        let blocks = pem_blocks(two);
        assert_eq!(blocks.len(), 2);
        assert!(blocks[0].ends_with("-----END PUBLIC KEY-----") && blocks[0].contains("AAA"));
        assert!(blocks[1].contains("BBB") && !blocks[1].contains("AAA"));
        assert!(pem_blocks("no pem here").is_empty());
        assert_eq!(pem_blocks("-----BEGIN X-----\nCCC").len(), 1);
    }
}
