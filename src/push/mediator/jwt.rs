//! JSON Web Tokens (RFC 7519) signed with the two keys the mediator holds:
//! the APNs provider token (ES256, RFC 7518 §3.4, with the `.p8` key) and
//! the Google OAuth2 assertion (RS256, RFC 7518 §3.3, with the service
//! account's key). Also the PEM → PKCS#8 step both keys go through, with
//! errors that say what is wrong with the file.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
#[cfg(test)]
use ring::signature::KeyPair;
use ring::signature::{
    EcdsaKeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use rustls::pki_types::pem::{PemObject, SectionKind};
use serde_json::{json, Value};
use std::fmt;

/// What is wrong with a key (the caller adds the file name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProblem {
    /// No PEM block at all.
    NotPem,
    /// A PEM block that cannot be decoded.
    BadPem(String),
    /// PEM, but not an unencrypted PKCS#8 `PRIVATE KEY` block.
    NotPkcs8(&'static str),
    /// A PKCS#8 key ring refuses for this algorithm.
    WrongKey(String),
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyProblem::NotPem => {
                f.write_str("not a PEM file: no \"-----BEGIN PRIVATE KEY-----\" block found")
            }
            KeyProblem::BadPem(e) => write!(f, "broken PEM: {e}"),
            KeyProblem::NotPkcs8(what) => write!(
                f,
                "{what}, not an unencrypted PKCS#8 \"PRIVATE KEY\" block \
                 (convert with `openssl pkcs8 -topk8 -nocrypt`)"
            ),
            KeyProblem::WrongKey(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for KeyProblem {}

/// The DER of the first PKCS#8 `PRIVATE KEY` block of a PEM text.
pub(crate) fn pkcs8_from_pem(pem: &[u8]) -> Result<Vec<u8>, KeyProblem> {
    let mut other = None;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        match section {
            Ok((SectionKind::PrivateKey, der)) => return Ok(der),
            Ok((kind, _)) => {
                other.get_or_insert(kind);
            }
            Err(e) => return Err(KeyProblem::BadPem(format!("{e}"))),
        }
    }
    let text = String::from_utf8_lossy(pem);
    Err(match other {
        Some(SectionKind::EcPrivateKey) => KeyProblem::NotPkcs8("a SEC1 \"EC PRIVATE KEY\" block"),
        Some(SectionKind::RsaPrivateKey) => {
            KeyProblem::NotPkcs8("a PKCS#1 \"RSA PRIVATE KEY\" block")
        }
        Some(SectionKind::Certificate) => KeyProblem::NotPkcs8("a certificate"),
        Some(_) => KeyProblem::NotPkcs8("some other PEM block"),
        None if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") => {
            KeyProblem::NotPkcs8("an encrypted private key")
        }
        None if text.contains("-----BEGIN ") => KeyProblem::NotPkcs8("an unknown PEM block"),
        None => KeyProblem::NotPem,
    })
}

/// base64url without padding (RFC 7515 §2).
pub(crate) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `header.claims` of a JWS compact serialisation (RFC 7515 §7.1): the
/// signing input.
fn signing_input(header: &Value, claims: &Value) -> String {
    let mut s = b64url(header.to_string().as_bytes());
    s.push('.');
    s.push_str(&b64url(claims.to_string().as_bytes()));
    s
}

/// Signs APNs provider tokens: ES256 with the P-256 key of a `.p8` file.
///
/// Apple, "Establishing a token-based connection to APNs": the header is
/// `{"alg":"ES256","kid":<key id>}`, the claims `{"iss":<team id>,"iat":<now>}`.
pub(crate) struct Es256Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    key_id: String,
    team_id: String,
}

impl Es256Signer {
    /// From the `.p8` file's text.
    pub(crate) fn from_pem(
        pem: &[u8],
        key_id: &str,
        team_id: &str,
    ) -> Result<Es256Signer, KeyProblem> {
        let der = pkcs8_from_pem(pem)?;
        let rng = SystemRandom::new();
        // ring wants the public key inside the PKCS#8 structure; Apple's
        // .p8 files carry it.
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng).map_err(
            |e| {
                KeyProblem::WrongKey(format!(
                    "not a P-256 (ES256) PKCS#8 private key with its public key: {e}"
                ))
            },
        )?;
        Ok(Es256Signer {
            key,
            rng,
            key_id: key_id.to_string(),
            team_id: team_id.to_string(),
        })
    }

    /// A provider token issued at `iat` (Unix seconds).
    pub(crate) fn sign(&self, iat: u64) -> String {
        let input = signing_input(
            &json!({"alg": "ES256", "kid": self.key_id}),
            &json!({"iss": self.team_id, "iat": iat}),
        );
        // The FIXED variant yields r‖s (64 bytes), the JWS form (RFC 7518
        // §3.4), not ASN.1 DER.
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .expect("ECDSA signing with a valid key does not fail");
        format!("{input}.{}", b64url(sig.as_ref()))
    }

    /// The uncompressed public point (for tests and logs).
    #[cfg(test)]
    pub(crate) fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }
}

/// Signs Google OAuth2 JWT assertions: RS256 with a service account's key.
pub(crate) struct Rs256Signer {
    key: RsaKeyPair,
    rng: SystemRandom,
}

impl Rs256Signer {
    pub(crate) fn from_pem(pem: &[u8]) -> Result<Rs256Signer, KeyProblem> {
        let der = pkcs8_from_pem(pem)?;
        let key = RsaKeyPair::from_pkcs8(&der).map_err(|e| {
            KeyProblem::WrongKey(format!(
                "not an RSA (RS256) PKCS#8 private key of 2048 bits or more: {e}"
            ))
        })?;
        Ok(Rs256Signer {
            key,
            rng: SystemRandom::new(),
        })
    }

    /// `header.claims.signature` with `alg` RS256 added to `header`.
    pub(crate) fn sign(&self, mut header: Value, claims: &Value) -> String {
        header["alg"] = json!("RS256");
        header["typ"] = json!("JWT");
        let input = signing_input(&header, claims);
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &self.rng, input.as_bytes(), &mut sig)
            .expect("RSA signing with a valid key and a modulus-sized buffer does not fail");
        format!("{input}.{}", b64url(&sig))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

    fn p256_pem() -> String {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem()
    }

    #[test]
    fn es256_token_has_apple_header_and_claims_and_verifies() {
        let signer =
            Es256Signer::from_pem(p256_pem().as_bytes(), "ABC123DEFG", "TEAM123456").unwrap();
        let jwt = signer.sign(1_763_800_000);
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "ES256", "kid": "ABC123DEFG"}));
        assert_eq!(
            claims,
            json!({"iss": "TEAM123456", "iat": 1_763_800_000u64})
        );
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(sig.len(), 64, "JWS ES256 signatures are r||s");
        let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, signer.public_key());
        key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
        // A changed claim no longer verifies.
        let forged = b64url(br#"{"iss":"TEAM123456","iat":1}"#);
        assert!(key
            .verify(format!("{}.{forged}", parts[0]).as_bytes(), &sig)
            .is_err());
    }

    #[test]
    fn key_problems_are_told_apart() {
        assert_eq!(pkcs8_from_pem(b"hello"), Err(KeyProblem::NotPem));
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIA==\n-----END EC PRIVATE KEY-----\n";
        assert!(matches!(
            pkcs8_from_pem(sec1.as_bytes()),
            Err(KeyProblem::NotPkcs8(w)) if w.contains("SEC1")
        ));
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(matches!(
            pkcs8_from_pem(enc.as_bytes()),
            Err(KeyProblem::NotPkcs8(w)) if w.contains("encrypted")
        ));
        let broken = "-----BEGIN PRIVATE KEY-----\nAAAA\n";
        assert!(matches!(
            pkcs8_from_pem(broken.as_bytes()),
            Err(KeyProblem::BadPem(_))
        ));
        // A P-384 key is PKCS#8 but not ES256.
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
            .unwrap()
            .serialize_pem();
        let e = Es256Signer::from_pem(p384.as_bytes(), "k", "t")
            .err()
            .unwrap();
        assert!(e.to_string().contains("P-256"), "{e}");
        // An EC key is not an RSA key.
        let e = Rs256Signer::from_pem(p256_pem().as_bytes()).err().unwrap();
        assert!(e.to_string().contains("RSA"), "{e}");
    }
}
