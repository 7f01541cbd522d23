//! TLS for TCP listeners, as dockerd's `--tlsverify`: the server's certificate and key, and
//! only clients whose certificate the given CA signed.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The files of `--tlscacert`, `--tlscert` and `--tlskey`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// TLS set-up errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    Pem { path: PathBuf, why: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |why: String| TlsError::Pem {
        path: path.clone(),
        why,
    };
    let all: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if all.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(all)
}

/// An acceptor that demands a client certificate signed by the CA.
pub fn acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    // ring rather than aws-lc-rs: it builds without cmake and nasm. Its lack of
    // post-quantum key exchange (the deprecation's reason) does not matter to docker
    // clients, which offer X25519.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&files.ca)? {
        roots.add(c).map_err(|e| TlsError::Pem {
            path: files.ca.clone(),
            why: e.to_string(),
        })?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsError::Config(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Pem {
        path: files.key.clone(),
        why: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&files.cert)?, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
