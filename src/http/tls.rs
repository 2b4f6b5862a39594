//! The admin server's rustls configuration, from PEM files.

use super::{HttpError, TlsFiles};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::path::Path;
use std::sync::Arc;

/// Loads the certificate chain and key; every error names the file and
/// what is wrong with it.
pub(crate) fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, HttpError> {
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            tls_err(
                &files.cert,
                format!("bad PEM certificate: {}", pem_problem(&e)),
            )
        })?;
    if chain.is_empty() {
        return Err(tls_err(
            &files.cert,
            "no CERTIFICATE block found in PEM file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let problem = match e {
            pem::Error::NoItemsFound => {
                "no PRIVATE KEY block (PKCS#8, PKCS#1 RSA or SEC1 EC) found in PEM file".into()
            }
            e => format!("bad PEM private key: {}", pem_problem(&e)),
        };
        tls_err(&files.key, problem)
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&files.cert, format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            tls_err(
                &files.key,
                format!("unusable key for certificate {}: {e}", files.cert.display()),
            )
        })?;
    Ok(Arc::new(cfg))
}

fn read(path: &Path) -> Result<Vec<u8>, HttpError> {
    std::fs::read(path).map_err(|e| tls_err(path, format!("cannot read: {e}")))
}

fn tls_err(path: &Path, problem: String) -> HttpError {
    HttpError::Tls {
        path: path.to_path_buf(),
        problem,
    }
}

fn pem_problem(e: &pem::Error) -> String {
    match e {
        pem::Error::NoItemsFound => "nothing found".into(),
        e => format!("{e:?}"),
    }
}
