//! Client certificates on the push API (`api_tls_client_ca`): the CA certificates a
//! client's certificate must chain to, read from a PEM file and replaceable while
//! serving (`SIGHUP`), like the server's own certificate (`certs.rs`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use super::TlsError;

/// The verifier built from the CA file in use, and where it came from.
#[derive(Debug)]
pub struct ClientCaStore {
    path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl ClientCaStore {
    /// Reads the file and builds the verifier.
    pub(super) fn load(path: &Path, provider: &Arc<CryptoProvider>) -> Result<Self, TlsError> {
        Ok(ClientCaStore {
            current: RwLock::new(build(path, provider)?),
            path: path.to_path_buf(),
            provider: Arc::clone(provider),
        })
    }

    /// Reads the file again, for [`ClientCaStore::install`]; the CA certificates in use
    /// stay meanwhile.
    pub(super) fn read_again(&self) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        build(&self.path, &self.provider)
    }

    /// Verifies clients with `verifier` (from `read_again`) in the next handshakes.
    pub(super) fn install(&self, verifier: Arc<dyn ClientCertVerifier>) {
        match self.current.write() {
            Ok(mut cur) => *cur = verifier,
            // A panic while holding the lock cannot leave the Arc half-written.
            Err(poisoned) => *poisoned.into_inner() = verifier,
        }
    }

    fn get(&self) -> Arc<dyn ClientCertVerifier> {
        match self.current.read() {
            Ok(cur) => Arc::clone(&cur),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

/// A verifier that requires a certificate chaining to the file's CA certificates.
fn build(
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let file_err = |problem: String| TlsError::File {
        path: path.display().to_string(),
        problem,
    };
    let mut roots = RootCertStore::empty();
    for cert in super::read_pem_certs(path).map_err(file_err)? {
        roots
            .add(cert)
            .map_err(|e| file_err(format!("not a usable CA certificate: {e}")))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| file_err(format!("cannot verify clients with it: {e}")))
}

impl ClientCertVerifier for ClientCaStore {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The names would have to outlive a reload; without hints a client sends the one
        // certificate it has, which is what API clients do.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.get()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}
