//! The one TLS client configuration a process shares: what it trusts (`--ca` or
//! `--insecure`), ALPN `http/1.1`, and the session store resumed handshakes draw their
//! tickets from (`--tls-resume`). One `Arc<ClientConfig>` for every connection of the
//! process, so a reconnect finds the tickets an earlier connection got.

use super::tickets::TicketStore;
use super::TlsConn;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{self, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the client trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The certificates of this PEM file (the server's own, or the CA that issued it);
    /// the certificate must also name the URL's host.
    Ca(PathBuf),
    /// Any certificate: the handshake's signatures are still verified, the chain and the
    /// name are not.
    Insecure,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A `wss://` or `https://` URL with neither `--ca` nor `--insecure`.
    #[error(
        "wss:// and https:// need --ca FILE (PEM certificates to trust: the server's own or \
         its CA's) or --insecure (accept any certificate; test servers only)"
    )]
    NoTrust,
    /// The `--ca` (or `--redis-ca`) file could not be read or is not PEM.
    #[error("{flag} {path}: {source}")]
    CaFile {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: String,
        /// What was wrong with it.
        source: rustls::pki_types::pem::Error,
    },
    /// The file holds no certificate.
    #[error("{flag} {path}: no CERTIFICATE in the file")]
    CaEmpty {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: String,
    },
    /// A certificate of the file is not usable as a trust anchor.
    #[error("{flag} {path}: {source}")]
    CaCert {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: String,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// `--client-cert` or `--client-key` could not be used.
    #[error("{flag} {path}: {problem}")]
    ClientFile {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: String,
        /// What was wrong with it.
        problem: String,
    },
    /// The URL's host is no DNS name or IP address a certificate could name.
    #[error("{0:?} is not a DNS name or IP address a TLS certificate can name")]
    ServerName(String),
    /// rustls refused the configuration or the session.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// A client certificate chain and its key (`--client-cert`, `--client-key`), shown to a
/// server that asks for one (the push API with `--api-tls-client-ca`).
#[derive(Debug)]
pub struct ClientIdentity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ClientIdentity {
    /// Reads the PEM certificate chain (leaf first) and its PEM key.
    pub fn load(cert: &Path, key: &Path) -> Result<ClientIdentity, TlsError> {
        Self::load_for(["--client-cert", "--client-key"], cert, key)
    }

    /// Like [`ClientIdentity::load`], naming the files by `flags` in errors.
    pub fn load_for(
        flags: [&'static str; 2],
        cert: &Path,
        key: &Path,
    ) -> Result<ClientIdentity, TlsError> {
        let [cert_flag, key_flag] = flags;
        let err = |flag, path: &Path, problem: String| TlsError::ClientFile {
            flag,
            path: path.display().to_string(),
            problem,
        };
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| err(cert_flag, cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(err(cert_flag, cert, "no CERTIFICATE in the file".into()));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| err(key_flag, key, format!("not a PEM private key: {e}")))?;
        Ok(ClientIdentity { certs, key })
    }
}

/// How many sessions a process keeps for resumption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tickets {
    /// Server names (the URLs' hosts, about).
    pub names: usize,
    /// TLS 1.3 tickets per name: the connections of the process (each ticket is used
    /// once, and every handshake under way may want one).
    pub depth: usize,
}

/// The TLS client side of one process: its shared configuration.
#[derive(Debug, Clone)]
pub struct TlsDial {
    config: Arc<ClientConfig>,
}

impl TlsDial {
    /// The configuration for `trust`; with `resume`, an in-memory session store of that
    /// size, else none (every handshake full); with `identity`, that client certificate
    /// for servers that ask for one.
    pub fn new(
        trust: &Trust,
        resume: Option<Tickets>,
        identity: Option<&ClientIdentity>,
    ) -> Result<TlsDial, TlsError> {
        let provider = Arc::new(crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match trust {
            Trust::Ca(path) => builder.with_root_certificates(load_roots(path)?),
            Trust::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                    provider.signature_verification_algorithms,
                ))),
        };
        let mut config = match identity {
            Some(id) => builder.with_client_auth_cert(id.certs.clone(), id.key.clone_key())?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = match resume {
            Some(t) => Resumption::store(Arc::new(TicketStore::new(t.names, t.depth))),
            None => Resumption::disabled(),
        };
        Ok(TlsDial {
            config: Arc::new(config),
        })
    }

    /// The shared rustls configuration (for a blocking `rustls::StreamOwned`).
    pub fn config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// A new session to `host` (the URL's host: SNI and the name the certificate must
    /// carry), its ClientHello queued.
    pub fn connect(&self, host: &str) -> Result<Box<TlsConn>, TlsError> {
        let conn = ClientConnection::new(self.config.clone(), server_name(host)?)?;
        Ok(TlsConn::new(conn))
    }
}

/// The TLS server name of a URL's host: an IP address, or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string()).map_err(|_| TlsError::ServerName(host.to_string()))
}

/// The certificates of a PEM file, as trust anchors.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    load_roots_for("--ca", path)
}

/// [`load_roots`] for the file `flag` names, which its errors say.
pub fn load_roots_for(flag: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let name = || path.display().to_string();
    let file_err = |source| TlsError::CaFile {
        flag,
        path: name(),
        source,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(file_err)? {
        roots
            .add(cert.map_err(file_err)?)
            .map_err(|source| TlsError::CaCert {
                flag,
                path: name(),
                source,
            })?;
    }
    if roots.is_empty() {
        return Err(TlsError::CaEmpty { flag, path: name() });
    }
    Ok(roots)
}

/// `--insecure`: accepts any certificate for any name, but still checks that the server
/// signed the handshake with the key of the certificate it sent (with the provider's
/// algorithms), so the handshake costs what a verified one does, less the chain.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
