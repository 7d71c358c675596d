//! `jwks_url`: the JWKS an identity provider publishes, fetched at startup, again every
//! `jwks_refresh_secs`, on `SIGHUP`, and soon after a token names a `kid` the keys do not
//! have (a key the provider has just started signing with).

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{KeyError, SharedKeys};
use crate::metrics::Metrics;

/// Longest time one fetch may take, connecting included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document taken (a provider's holds a few keys, a few KiB).
const MAX_BYTES: u64 = 1 << 20;
/// Least time between two fetches that unknown `kid`s asked for: tokens with made-up
/// `kid`s cannot make the server hammer the provider.
const MIN_GAP: Duration = Duration::from_secs(5);
/// After a failed fetch, the next one comes this soon (or at the refresh, if sooner).
const RETRY: Duration = Duration::from_secs(30);

/// GETs `url`: the body of a 200 answer, at most `MAX_BYTES`. An https:// URL is verified
/// against the certificates in `ca` (`jwks_ca`, read now: a replaced file counts from
/// the next fetch), else against the bundled Mozilla roots.
pub(super) fn fetch(url: &str, ca: Option<&Path>) -> Result<Vec<u8>, KeyError> {
    let failed = |what: String| KeyError(format!("jwks_url {url}: {what}"));
    let roots = match ca {
        None => Vec::new(),
        Some(path) => crate::tls::read_pem_certs(path)
            .map_err(|problem| KeyError(format!("jwks_ca {}: {problem}", path.display())))?,
    };
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .http_status_as_error(false)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(crate::tls::ureq_roots(&roots))
                .build(),
        )
        .build()
        .new_agent();
    let mut answer = agent.get(url).call().map_err(|e| failed(e.to_string()))?;
    let status = answer.status().as_u16();
    if status != 200 {
        return Err(failed(format!("answered HTTP {status}")));
    }
    let mut body = Vec::new();
    answer
        .body_mut()
        .as_reader()
        .take(MAX_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| failed(format!("reading the answer: {e}")))?;
    if body.len() as u64 > MAX_BYTES {
        return Err(failed(format!(
            "the answer is larger than {MAX_BYTES} bytes"
        )));
    }
    Ok(body)
}

/// Starts the thread that fetches the keys again every `every`, and when a verifier
/// met an unknown `kid`; it ends once `stop` is set (and the thread is unparked).
pub fn spawn_refresher(
    keys: Arc<SharedKeys>,
    every: Duration,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let shared = Arc::clone(&keys);
    let handle = std::thread::Builder::new()
        .name("throng-jwks".into())
        .spawn(move || refresh_loop(&keys, every, &metrics, &stop))?;
    // Before anyone can stop the server: a wake sent before the thread parks is kept.
    shared.set_refresher(handle.thread().clone());
    Ok(handle)
}

fn refresh_loop(keys: &SharedKeys, every: Duration, metrics: &Metrics, stop: &AtomicBool) {
    let mut last_fetch = Instant::now();
    let mut next = last_fetch + every;
    let mut failing = false;
    while !stop.load(Relaxed) {
        let now = Instant::now();
        let asked = keys.refresh_asked();
        let asked_at = last_fetch + MIN_GAP.min(every);
        let signalled = keys.take_fetch_now();
        if now < next && !signalled && !(asked && now >= asked_at) {
            let until = if asked { next.min(asked_at) } else { next };
            std::thread::park_timeout(until.saturating_duration_since(now));
            continue;
        }
        keys.clear_refresh_asked();
        last_fetch = now;
        let before = keys.get().kids();
        match keys.reload() {
            None => return,
            Some(Ok(n)) => {
                metrics.jwt_key_reloads.fetch_add(1, Relaxed);
                let kids = keys.get().kids();
                if failing || kids != before {
                    tracing::info!(keys = n, kids = ?kids, "jwks_url: keys fetched");
                }
                failing = false;
                next = now + every;
            }
            Some(Err(e)) => {
                metrics.jwt_key_reload_errors.fetch_add(1, Relaxed);
                if !failing {
                    tracing::warn!(error = %e, "jwks_url: fetch failed; the keys in use stay");
                }
                failing = true;
                next = now + every.min(RETRY);
            }
        }
    }
}
