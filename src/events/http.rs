//! Standalone: events POSTed to `events_url` as one JSON array per batch.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rustls::pki_types::CertificateDer;
use ureq::tls::TlsConfig;

use super::{DeliverError, Event, Target};

/// Longest wait for the upstream's answer once the batch is sent: past it, the batch
/// counts as failed (it may have been stored all the same), and goes again halved.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest time to send a batch (an upstream that does not read is unreachable).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time to read the answer's body, once its head came.
const BODY_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest time one POST may take, all of the above.
const POST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of an answer's body read: reading it to its end keeps the connection for
/// the next batch; a larger body costs a new connection.
const ANSWER_BODY_LIMIT: u64 = 64 << 10;
/// Bytes of an answer's body quoted in a log line.
const QUOTED_BODY: usize = 200;

/// POSTs batches to one URL over a kept-alive connection (each answer is read to its
/// end, so the connection serves the next batch).
pub(crate) struct PostTarget {
    agent: ureq::Agent,
    /// `events_ca` read again (`SIGHUP`): the next POST uses a new agent with these roots.
    ca_updates: Option<Receiver<Vec<CertificateDer<'static>>>>,
    url: String,
    /// `Authorization: Bearer <events_key>`, when one is configured.
    authorization: Option<String>,
    /// `events_key_file` read again (`SIGHUP`): the next POST sends this key.
    key_updates: Option<Receiver<String>>,
    body: Vec<u8>,
}

impl PostTarget {
    /// A target for `url` (checked by the configuration), sending `key` as a bearer token
    /// and verifying an `https://` upstream against `ca` (empty: the bundled Mozilla
    /// roots).
    pub(crate) fn new(
        url: &str,
        key: Option<&str>,
        ca: &[CertificateDer<'static>],
        ca_updates: Option<Receiver<Vec<CertificateDer<'static>>>>,
        key_updates: Option<Receiver<String>>,
    ) -> PostTarget {
        PostTarget {
            agent: agent(ca),
            ca_updates,
            url: url.to_string(),
            authorization: key.map(|k| format!("Bearer {k}")),
            key_updates,
            body: Vec::new(),
        }
    }

    /// Takes the newest key `SIGHUP` read, if any came since the last POST.
    fn take_key_update(&mut self) {
        let Some(key) = self
            .key_updates
            .as_ref()
            .and_then(|rx| rx.try_iter().last())
        else {
            return;
        };
        self.authorization = Some(format!("Bearer {key}"));
        tracing::info!(url = %self.url, "events upstream: the reloaded events_key goes from the next POST on");
    }

    /// Takes the newest roots `SIGHUP` read, if any came since the last POST.
    fn take_ca_update(&mut self) {
        let Some(ca) = self.ca_updates.as_ref().and_then(|rx| rx.try_iter().last()) else {
            return;
        };
        self.agent = agent(&ca);
        tracing::info!(certificates = ca.len(), url = %self.url, "events upstream: verified against the reloaded events_ca from now on");
    }
}

/// An agent verifying `https://` against `ca` (empty: the bundled Mozilla roots).
fn agent(ca: &[CertificateDer<'static>]) -> ureq::Agent {
    let roots = crate::tls::ureq_roots(ca);
    ureq::Agent::config_builder()
        .timeout_global(Some(POST_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_send_request(Some(SEND_TIMEOUT))
        .timeout_send_body(Some(SEND_TIMEOUT))
        .timeout_recv_response(Some(ANSWER_TIMEOUT))
        .timeout_recv_body(Some(BODY_TIMEOUT))
        // Statuses are judged here: a 4xx is final, a 5xx is retried.
        .http_status_as_error(false)
        // A redirect is not delivery: ureq would resend a POST as a GET without its body
        // (301, 302, 303). The 3xx comes back here, and refuses the batch.
        .max_redirects(0)
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .build()
        .new_agent()
}

/// Reads `events_ca` again on `SIGHUP` and hands it to the events thread.
pub struct CaReload {
    path: PathBuf,
    tx: Sender<Vec<CertificateDer<'static>>>,
}

impl CaReload {
    /// A reloader for `path` and the receiver its target takes new roots from.
    pub(crate) fn new(path: PathBuf) -> (CaReload, Receiver<Vec<CertificateDer<'static>>>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (CaReload { path, tx }, rx)
    }

    /// Reads the file again: the next POST verifies against what it holds (on a new
    /// connection). A file that cannot be used changes nothing; the error names it.
    pub fn reload(&self) -> Result<usize, String> {
        let ca = read_ca(&self.path)?;
        let n = ca.len();
        self.tx
            .send(ca)
            .map_err(|_| "the events thread has stopped".to_string())?;
        Ok(n)
    }
}

/// Reads `events_key_file` again on `SIGHUP` and hands the key to the events thread.
pub struct KeyReload {
    path: PathBuf,
    tx: Sender<String>,
}

impl KeyReload {
    /// A reloader for `path` and the receiver its target takes new keys from.
    pub(crate) fn new(path: PathBuf) -> (KeyReload, Receiver<String>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (KeyReload { path, tx }, rx)
    }

    /// Reads the file again: the next POST sends its key. A file that cannot be used
    /// changes nothing; the error names it.
    pub fn reload(&self) -> Result<(), String> {
        let key = read_key_file(&self.path)?;
        self.tx
            .send(key)
            .map_err(|_| "the events thread has stopped".to_string())
    }
}

/// The key of an `events_key_file`: its one line that is neither blank nor a comment
/// (first non-blank `#`; the line break is not part of it), checked like `events_key`. Errors name the file
/// and the line, never the key.
pub fn read_key_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut keys = text.lines().enumerate().filter(|(_, l)| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    });
    let Some((i, key)) = keys.next() else {
        return Err(format!(
            "{}: holds no key (one line; lines starting with # are comments)",
            path.display()
        ));
    };
    if let Some((j, _)) = keys.next() {
        return Err(format!(
            "{}: holds a second key on line {} (the upstream is sent one: the first, line {})",
            path.display(),
            j + 1,
            i + 1
        ));
    }
    crate::config::check_events_key(key)
        .map_err(|e| format!("{}: the key on line {}: {e}", path.display(), i + 1))?;
    Ok(key.to_string())
}

/// Reads the CA certificates of `events_ca`: a PEM file holding at least one.
pub(crate) fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    crate::tls::read_pem_certs(path).map_err(|problem| format!("{}: {problem}", path.display()))
}

/// Sorts a request that got no answer: too slow when the upstream took the request and
/// did not take the batch or answer it in time (a smaller batch may go through), else the
/// upstream could not be reached.
fn request_error(url: &str, e: ureq::Error) -> DeliverError {
    use ureq::Timeout;
    let what = format!("POST {url}: {e}");
    match e {
        // A body it reads too slowly (review s21c): resent whole, it would never go.
        ureq::Error::Timeout(
            Timeout::SendBody
            | Timeout::RecvResponse
            | Timeout::RecvBody
            | Timeout::Global
            | Timeout::PerCall,
        ) => DeliverError::TooSlow(what),
        _ => DeliverError::Unreachable(what),
    }
}

/// `: <the first bytes of body>`, printable, for a log line; empty for an empty body.
fn quote(body: &[u8]) -> String {
    if body.is_empty() {
        return String::new();
    }
    let text: String = String::from_utf8_lossy(&body[..body.len().min(QUOTED_BODY)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!(": {}", text.trim())
}

/// Writes `[e1,e2,...]` into `out`.
pub(crate) fn json_array(batch: &[Event], out: &mut Vec<u8>) {
    out.clear();
    out.push(b'[');
    for (i, e) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e.as_str().as_bytes());
    }
    out.push(b']');
}

impl Target for PostTarget {
    fn deliver(&mut self, batch: &[Event], until: Option<Instant>) -> Result<(), DeliverError> {
        self.take_ca_update();
        self.take_key_update();
        json_array(batch, &mut self.body);
        let mut req = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json");
        if let Some(until) = until {
            // At shutdown a try ends with the flush time, not `POST_TIMEOUT` later.
            let left = until.saturating_duration_since(Instant::now());
            req = req
                .config()
                .timeout_global(Some(left.min(POST_TIMEOUT)))
                .build();
        }
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        let resp = req
            .send(&self.body[..])
            .map_err(|e| request_error(&self.url, e))?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned());
        // Read to its end (bounded), so the connection serves the next batch.
        let body = resp
            .into_body()
            .into_with_config()
            .limit(ANSWER_BODY_LIMIT)
            .read_to_vec()
            .unwrap_or_default();
        let said = |what: &str| format!("POST {} answered {status}{what}", self.url);
        match status {
            200..=299 => Ok(()),
            300..=399 => Err(DeliverError::Refused(said(&format!(
                " (a redirect to {}): events_url must be the final address",
                location.as_deref().unwrap_or("nowhere")
            )))),
            // The upstream is busy or behind a gateway that cannot reach it: not this
            // batch's fault.
            429 | 502..=504 => Err(DeliverError::Unreachable(said(&quote(&body)))),
            408 | 500..=599 => Err(DeliverError::Failed(said(&quote(&body)))),
            _ => Err(DeliverError::Refused(said(&quote(&body)))),
        }
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_the_upstream_reads_too_slowly_is_too_slow_not_unreachable() {
        use ureq::Timeout;
        let slow = |t| {
            matches!(
                request_error("u", ureq::Error::Timeout(t)),
                DeliverError::TooSlow(_)
            )
        };
        // Too slow: a smaller batch may go through, so the batch is halved.
        for t in [
            Timeout::SendBody,
            Timeout::RecvResponse,
            Timeout::RecvBody,
            Timeout::Global,
        ] {
            assert!(slow(t), "{t:?}");
        }
        // Not reached: the same batch is sent again once it is.
        for t in [Timeout::Connect, Timeout::Resolve, Timeout::SendRequest] {
            assert!(!slow(t), "{t:?}");
        }
    }
}
