//! A throwaway CA and a server certificate for 127.0.0.1, as PEM files, for
//! the TLS end-to-end tests (rustls clients, stunnel, Kamailio's TLS).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub struct Certs {
    /// The server's certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signed it (PEM, and DER for a rustls root store).
    pub ca: PathBuf,
    pub ca_der: Vec<u8>,
}

/// A new CA and a certificate it signs for the IP address 127.0.0.1,
/// written into `dir` (created).
pub fn make_certs(dir: &Path) -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct subjects: OpenSSL (stunnel, Kamailio) takes a leaf whose
    // issuer is its own subject for a self-signed certificate.
    ca.distinguished_name
        .push(DnType::CommonName, "sipis test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    // An IP address SAN: rustls's IP server names and stunnel's checkIP.
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "sipis");
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let certs = Certs {
        cert: dir.join("sip.crt"),
        key: dir.join("sip.key"),
        ca: dir.join("ca.pem"),
        ca_der: ca_cert.der().to_vec(),
    };
    std::fs::write(&certs.cert, cert.pem()).unwrap();
    std::fs::write(&certs.key, key.serialize_pem()).unwrap();
    std::fs::write(&certs.ca, ca_cert.pem()).unwrap();
    certs
}
