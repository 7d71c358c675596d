//! The certificate the TLS listener serves: loaded from PEM files, checked against its
//! key, and swapped in place by a reload so handshakes in flight and open connections
//! are untouched.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::{TlsError, TlsFiles};

/// The certificate in use and where it came from.
#[derive(Debug)]
pub struct CertStore {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Loads and checks the files.
    pub(super) fn load(files: &TlsFiles, provider: &Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let key = read(files, provider)?;
        Ok(CertStore {
            files: files.clone(),
            provider: Arc::clone(provider),
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// Reads the files again, for [`CertStore::install`]; the one in use stays meanwhile.
    pub(super) fn read_again(&self) -> Result<CertifiedKey, TlsError> {
        read(&self.files, &self.provider)
    }

    /// Serves `key` (from `read_again`) in the next handshakes.
    pub(super) fn install(&self, key: CertifiedKey) {
        match self.current.write() {
            Ok(mut cur) => *cur = Arc::new(key),
            // A panic while holding the lock cannot leave the Arc half-written.
            Err(poisoned) => *poisoned.into_inner() = Arc::new(key),
        }
    }

    /// The DER of the leaf certificate in use.
    pub fn leaf(&self) -> Option<Vec<u8>> {
        self.get().cert.first().map(|c| c.as_ref().to_vec())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(cur) => Arc::clone(&cur),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

impl rustls::server::ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// The certificates of a PEM file, at least one; the error is the problem, without the
/// path (callers name the file and the setting).
pub(crate) fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    read_pem_file(path).map(|(_, certs)| certs)
}

/// The roots an outgoing https:// request (ureq) is verified against: `ca` (a CA file's
/// certificates), or the bundled Mozilla roots when it is empty.
pub(crate) fn ureq_roots(ca: &[CertificateDer<'static>]) -> ureq::tls::RootCerts {
    if ca.is_empty() {
        return ureq::tls::RootCerts::WebPki;
    }
    let certs: Vec<ureq::tls::Certificate<'static>> = ca
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    ureq::tls::RootCerts::new_with_certs(&certs)
}

/// Like [`read_pem_certs`], with the file's bytes as read (one read, so both agree).
pub(crate) fn read_pem_file(
    path: &Path,
) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read certificates: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate chain: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok((pem, certs))
}

/// A certificate chain and its private key as read from their PEM files, checked to
/// belong together: a client's identity (`redis_client_cert`) or a server's.
pub struct Identity {
    /// The certificate file as read (redis-rs takes PEM).
    pub cert_pem: Vec<u8>,
    /// The key file as read.
    pub key_pem: Vec<u8>,
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Identity")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Reads `files` once each and checks that the chain belongs to the key.
    pub fn read(files: &TlsFiles, provider: &CryptoProvider) -> Result<Identity, TlsError> {
        Self::read_certified(files, provider).map(|(identity, _)| identity)
    }

    /// Like [`Identity::read`], with the key loaded for signing.
    fn read_certified(
        files: &TlsFiles,
        provider: &CryptoProvider,
    ) -> Result<(Identity, CertifiedKey), TlsError> {
        let cert_path = files.cert.display().to_string();
        let key_path = files.key.display().to_string();
        let file_err = |path: &str, problem: String| TlsError::File {
            path: path.to_string(),
            problem,
        };
        let (cert_pem, chain) =
            read_pem_file(&files.cert).map_err(|problem| file_err(&cert_path, problem))?;
        let key_pem = std::fs::read(&files.key)
            .map_err(|e| file_err(&key_path, format!("cannot read the key: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| file_err(&key_path, format!("not a PEM private key: {e}")))?;
        let signing = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| file_err(&key_path, format!("unsupported private key: {e}")))?;
        let certified = CertifiedKey::new(chain.clone(), signing);
        certified.keys_match().map_err(|e| {
            file_err(
                &cert_path,
                format!("the certificate does not belong to the key in {key_path}: {e}"),
            )
        })?;
        let identity = Identity {
            cert_pem,
            key_pem,
            chain,
            key,
        };
        Ok((identity, certified))
    }
}

/// Reads the chain and the key and checks that they belong together.
fn read(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    Identity::read_certified(files, provider).map(|(_, certified)| certified)
}
