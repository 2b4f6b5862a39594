//! The admin server's rustls configuration, from PEM files.

use super::{HttpError, TlsFiles};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Loads the certificate chain and key; every error names the file and
/// what is wrong with it.
pub(crate) fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, HttpError> {
    load_server_config(&files.cert, &files.key, None)
        .map(Arc::new)
        .map_err(|(path, problem)| HttpError::Tls { path, problem })
}

/// A rustls server configuration (TLS 1.2 and 1.3) from PEM files; with
/// `client_ca`, clients must present a certificate signed by one of its
/// certificates. An error names the file at fault and what is wrong.
pub(crate) fn load_server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, (PathBuf, String)> {
    let err = |p: &Path, why: String| (p.to_path_buf(), why);
    let cert_pem = std::fs::read(cert).map_err(|e| err(cert, format!("cannot read: {e}")))?;
    let key_pem = std::fs::read(key).map_err(|e| err(key, format!("cannot read: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(cert, format!("bad PEM certificate: {}", pem_problem(&e))))?;
    if chain.is_empty() {
        return Err(err(cert, "no CERTIFICATE block found in PEM file".into()));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let problem = match e {
            pem::Error::NoItemsFound => {
                "no PRIVATE KEY block (PKCS#8, PKCS#1 RSA or SEC1 EC) found in PEM file".into()
            }
            e => format!("bad PEM private key: {}", pem_problem(&e)),
        };
        err(key, problem)
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(cert, format!("TLS setup: {e}")))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| err(ca, format!("cannot read: {e}")))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c =
                    c.map_err(|e| err(ca, format!("bad PEM certificate: {}", pem_problem(&e))))?;
                roots
                    .add(c)
                    .map_err(|e| err(ca, format!("unusable CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(err(ca, "no CERTIFICATE block found in PEM file".into()));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| err(ca, format!("client verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_single_cert(chain, private).map_err(|e| {
        err(
            key,
            format!("unusable key for certificate {}: {e}", cert.display()),
        )
    })?;
    // Stateless session tickets (TLS 1.2 and 1.3): a phone reconnecting
    // after a wake or a network change resumes its session whatever the
    // number of other phones (the default stateful cache holds 256).
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| err(cert, format!("TLS session tickets: {e}")))?;
    Ok(cfg)
}

fn pem_problem(e: &pem::Error) -> String {
    match e {
        pem::Error::NoItemsFound => "nothing found".into(),
        e => format!("{e:?}"),
    }
}
