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
mod counters;
mod record;

use std::path::PathBuf;
use std::sync::Arc;

pub(crate) use accept::{looks_like_http, Finished, TlsAccept};
pub use certs::CertStore;
pub(crate) use certs::{read_pem_certs, read_pem_file};
pub use counters::{ApiListener, ApiTlsCounters, ClientListener, TlsCounters, TlsListener};
pub(crate) use record::Session;

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
    /// A record after the handshake broke the protocol.
    #[error("tls record: {0}")]
    Record(&'static str),
    /// Plain HTTP arrived on the TLS port.
    #[error("plain HTTP on a TLS port (use wss:// or https://)")]
    PlainHttp,
    /// The peer sent a fatal alert.
    #[error("tls: the client sent alert {0}")]
    Alert(u8),
}

/// The certificate chain and key files of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1; RSA or ECDSA P-256/P-384).
    pub key: PathBuf,
}

/// What the acceptor needs to run TLS handshakes, and what `SIGHUP` reloads.
#[derive(Clone, Debug)]
pub struct TlsServer {
    /// The rustls configuration every handshake shares.
    config: Arc<rustls::ServerConfig>,
    /// The certificate in use, replaceable while serving.
    certs: Arc<CertStore>,
}

impl TlsServer {
    /// Loads the files and builds the client listener's configuration: TLS 1.2 and 1.3,
    /// ALPN `http/1.1`, stateless session tickets (one per handshake) and secret
    /// extraction for the shards.
    pub fn load(files: &TlsFiles) -> Result<TlsServer, TlsError> {
        TlsServer::build(files, true)
    }

    /// The push API's configuration: the same, without secret extraction (its
    /// connections keep rustls to the end).
    pub fn load_api(files: &TlsFiles) -> Result<TlsServer, TlsError> {
        TlsServer::build(files, false)
    }

    fn build(files: &TlsFiles, for_shards: bool) -> Result<TlsServer, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = Arc::new(CertStore::load(files, &provider)?);
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&certs) as Arc<dyn rustls::server::ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        // A reconnecting client needs one ticket; each one costs an encryption per handshake.
        config.send_tls13_tickets = 1;
        if for_shards {
            config.enable_secret_extraction = true;
            config.key_log = Arc::new(capture::Capture);
        }
        Ok(TlsServer {
            config: Arc::new(config),
            certs,
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

    /// Reads the files again and serves the new certificate to the next handshakes;
    /// on error the one in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.certs.reload()
    }

    /// The certificate store (its files and the certificate in use).
    pub fn certs(&self) -> &CertStore {
        &self.certs
    }
}

#[cfg(test)]
pub(crate) mod tests;
