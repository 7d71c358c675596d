//! TLS on the client listener (`wss://`), and on the push API's (`https://`).
//!
//! On the client listener the handshake runs in the acceptor with rustls (`accept.rs`). Once the upgrade is
//! admitted, the session's keys move to the connection's shard, which protects records
//! itself (`record.rs`): an idle TLS connection keeps keys, traffic secrets and sequence
//! numbers (about 200 bytes), never a TLS library's buffers. The certificate can be
//! replaced while serving (`certs.rs`, `SIGHUP`). The push API's few connections keep
//! their rustls connection for life (`api::tls`).

mod accept;
mod capture;
mod certs;
mod client_ca;
mod counters;
mod record;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) use accept::{looks_like_http, Finished, TlsAccept};
pub(crate) use certs::{read_pem_certs, read_pem_file, ureq_roots};
pub use certs::{CertStore, Identity};
pub use client_ca::ClientCaStore;
pub use counters::{ApiListener, ApiTlsCounters, ClientListener, TlsCounters, TlsListener};
pub(crate) use record::Session;

/// Room for a client's certificate chain in its handshake (push API with a client CA):
/// a few certificates of 1 to 2 KiB each are usual.
const CLIENT_CHAIN_BYTES: usize = 16 * 1024;

/// A TLS problem: a file that cannot be used, or a peer that broke the protocol.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file cannot be read or used.
    #[error("{path}: {problem}")]
    File {
        /// The file as configured.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// rustls refused the handshake or the configuration.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The record layer failed (key derivation, sealing, I/O during the handshake).
    #[error("tls record: {0}")]
    Record(&'static str),
    /// A record from the peer broke the protocol.
    #[error("tls record: {reason}")]
    Refused {
        /// The fatal alert that tells the peer (RFC 8446 section 6.2).
        alert: u8,
        /// What was wrong.
        reason: &'static str,
    },
    /// Plain HTTP arrived on the TLS port.
    #[error("plain HTTP on a TLS port (use wss:// or https://)")]
    PlainHttp,
    /// The peer sent a fatal alert.
    #[error("tls: the client sent alert {0}")]
    Alert(u8),
}

impl TlsError {
    /// The fatal alert to send the peer before closing, if one is due: not after an
    /// alert of its own.
    pub(crate) fn alert(&self) -> Option<u8> {
        match self {
            TlsError::Refused { alert, .. } => Some(*alert),
            TlsError::Record(_) => Some(record::INTERNAL_ERROR),
            _ => None,
        }
    }
}

/// The certificate chain and key files of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1; RSA, ECDSA P-256/P-384 or Ed25519).
    pub key: PathBuf,
}

/// What the acceptor needs to run TLS handshakes, and what `SIGHUP` reloads.
#[derive(Clone, Debug)]
pub struct TlsServer {
    /// The rustls configuration every handshake shares.
    config: Arc<rustls::ServerConfig>,
    /// The certificate in use, replaceable while serving.
    certs: Arc<CertStore>,
    /// The push API with `api_tls_client_ca`: the CA certificates clients must present a
    /// certificate from, replaceable while serving.
    client_ca: Option<Arc<ClientCaStore>>,
}

impl TlsServer {
    /// Loads the files and builds the client listener's configuration: TLS 1.2 and 1.3,
    /// ALPN `http/1.1`, stateless session tickets (one per handshake) and secret
    /// extraction for the shards.
    pub fn load(files: &TlsFiles) -> Result<TlsServer, TlsError> {
        TlsServer::build(files, true, None)
    }

    /// The push API's configuration: the same, without secret extraction (its
    /// connections keep rustls to the end), and with `client_ca` requiring every client
    /// to present a certificate issued by one of that file's CA certificates.
    pub fn load_api(files: &TlsFiles, client_ca: Option<&Path>) -> Result<TlsServer, TlsError> {
        TlsServer::build(files, false, client_ca)
    }

    fn build(
        files: &TlsFiles,
        for_shards: bool,
        client_ca: Option<&Path>,
    ) -> Result<TlsServer, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = Arc::new(CertStore::load(files, &provider)?);
        let client_ca = client_ca
            .map(|path| ClientCaStore::load(path, &provider).map(Arc::new))
            .transpose()?;
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match &client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                Arc::clone(ca) as Arc<dyn rustls::server::danger::ClientCertVerifier>
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_cert_resolver(Arc::clone(&certs) as Arc<dyn rustls::server::ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if client_ca.is_some() {
            // No resumption: a resumed session skips the client certificate, so a client
            // whose CA a reload removed could go on with tickets for hours. Every
            // connection shows its certificate (API connections are few and long).
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        } else {
            config.ticketer = rustls::crypto::ring::Ticketer::new()?;
            // A reconnecting client needs one ticket; each one costs an encryption per
            // handshake.
            config.send_tls13_tickets = 1;
        }
        if for_shards {
            config.enable_secret_extraction = true;
            config.key_log = Arc::new(capture::Capture);
        }
        Ok(TlsServer {
            config: Arc::new(config),
            certs,
            client_ca,
        })
    }

    /// A new server-side handshake.
    pub(crate) fn accept(&self) -> Result<TlsAccept, TlsError> {
        TlsAccept::new(Arc::clone(&self.config))
    }

    /// A new server-side connection that keeps rustls for its whole life (the push API).
    pub(crate) fn connection(&self) -> Result<rustls::ServerConnection, TlsError> {
        Ok(rustls::ServerConnection::new(Arc::clone(&self.config))?)
    }

    /// Bytes a client may send before its handshake is over: a ClientHello's worth, and
    /// with a client CA room for the client's certificate chain too.
    pub(crate) fn handshake_bytes(&self) -> usize {
        match self.client_ca {
            Some(_) => accept::HANDSHAKE_BYTES + CLIENT_CHAIN_BYTES,
            None => accept::HANDSHAKE_BYTES,
        }
    }

    /// Reads the files again and serves the new certificate (and verifies clients against
    /// the new CA file) in the next handshakes. All or nothing: when a file cannot be used
    /// everything in use stays, and its error is returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = self.certs.read_again()?;
        let verifier = self
            .client_ca
            .as_ref()
            .map(|ca| ca.read_again())
            .transpose()?;
        self.certs.install(key);
        if let (Some(ca), Some(v)) = (&self.client_ca, verifier) {
            ca.install(v);
        }
        Ok(())
    }

    /// The certificate store (its files and the certificate in use).
    pub fn certs(&self) -> &CertStore {
        &self.certs
    }
}

#[cfg(test)]
pub(crate) mod tests;
