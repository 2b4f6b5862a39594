//! SIP digest authentication, both sides (RFC 2617, RFC 7616, RFC 8760, RFC 3261 §22).
//!
//! Sans-IO: no sockets, no clock reads, no randomness source. Time comes in as an explicit
//! `now: Instant`; randomness comes in as seeds/keys chosen by the caller at construction.
//!
//! * **Inputs** are already-parsed header parameters: [`Challenge::from_params`] for
//!   `WWW-Authenticate` / `Proxy-Authenticate`, [`Credentials::from_params`] for
//!   `Authorization` / `Proxy-Authorization`. Values must be *unquoted and unescaped*.
//! * **Client side** ([`DigestClient`], [`write_authorization`], [`pick`]): answers a challenge
//!   by appending an `Authorization` header *value* to a `String`.
//! * **Server side** ([`NonceVerifier`], [`write_challenge`]): stateless, self-validating
//!   nonces (HMAC-SHA-256), expiry, and replay protection with a bounded nonce-count table.
//!
//! Algorithms: `MD5`, `MD5-sess`, `SHA-256`, `SHA-256-sess`, `SHA-512-256`, `SHA-512-256-sess`.
//! Quality of protection: `qop=auth`, and the legacy RFC 2069 mode without `qop`.
//! `auth-int` and `userhash` are not implemented.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest as _, Sha256, Sha512_256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a challenge or credentials could not be used. Every variant is specific and `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestError {
    /// A required parameter (named) is absent.
    MissingParam(&'static str),
    /// A known parameter (named) appears more than once.
    DuplicateParam(&'static str),
    /// The `algorithm` token is not one this module implements.
    UnknownAlgorithm,
    /// The challenge offers `qop=auth-int` only; this module implements `auth` only.
    AuthIntOnly,
    /// The `qop` value is neither `auth` nor `auth-int` (or empty).
    UnsupportedQop,
    /// The verifier is configured to require `qop=auth`, and the client sent none.
    QopRequired,
    /// A `-sess` algorithm needs a `cnonce`, which only exists with `qop`.
    SessRequiresQop,
    /// `nc` is not 8 hex digits, or is zero.
    BadNonceCount,
    /// The client has used this nonce 2^32-1 times already.
    NonceCountExhausted,
    /// `response` is not hex of the algorithm's digest length.
    BadResponseFormat,
    /// A stored HA1 is not hex of the algorithm's digest length (or was made with another hash).
    BadHa1,
    /// The client answered with an algorithm the verifier does not allow.
    AlgorithmNotAllowed,
    /// A value (parameter named) holds a control character and cannot be put in a header.
    InvalidChar(&'static str),
    /// [`DigestClient::reauthorize`] was called before any challenge was answered.
    NoChallenge,
}

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingParam(p) => write!(f, "digest: missing parameter `{p}`"),
            Self::DuplicateParam(p) => write!(f, "digest: duplicate parameter `{p}`"),
            Self::UnknownAlgorithm => f.write_str("digest: unknown algorithm"),
            Self::AuthIntOnly => f.write_str("digest: only qop=auth-int offered (unsupported)"),
            Self::UnsupportedQop => f.write_str("digest: unsupported qop"),
            Self::QopRequired => f.write_str("digest: qop=auth required"),
            Self::SessRequiresQop => f.write_str("digest: -sess algorithm without qop"),
            Self::BadNonceCount => f.write_str("digest: nc is not 8 hex digits or is zero"),
            Self::NonceCountExhausted => f.write_str("digest: nonce count exhausted"),
            Self::BadResponseFormat => f.write_str("digest: malformed response value"),
            Self::BadHa1 => f.write_str("digest: stored HA1 does not fit the algorithm"),
            Self::AlgorithmNotAllowed => f.write_str("digest: algorithm not allowed"),
            Self::InvalidChar(p) => write!(f, "digest: control character in `{p}`"),
            Self::NoChallenge => f.write_str("digest: no challenge to answer"),
        }
    }
}

impl std::error::Error for DigestError {}

// ---------------------------------------------------------------------------------------------
// Algorithms and hashing
// ---------------------------------------------------------------------------------------------

/// Digest algorithm (RFC 7616 §6.1, RFC 8760 §2.1). A missing `algorithm` parameter means MD5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5` (RFC 2617): weak, still what most phones and providers speak.
    Md5,
    /// `MD5-sess`.
    Md5Sess,
    /// `SHA-256` (RFC 7616, RFC 8760).
    Sha256,
    /// `SHA-256-sess`.
    Sha256Sess,
    /// `SHA-512-256` (SHA-512/256).
    Sha512_256,
    /// `SHA-512-256-sess`.
    Sha512_256Sess,
}

impl Algorithm {
    /// All algorithms, strongest hash first.
    pub const ALL: [Algorithm; 6] = [
        Self::Sha512_256,
        Self::Sha512_256Sess,
        Self::Sha256,
        Self::Sha256Sess,
        Self::Md5,
        Self::Md5Sess,
    ];

    /// Maps an `algorithm` token (case-insensitive).
    pub fn from_token(token: &str) -> Result<Self, DigestError> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(token.trim()))
            .ok_or(DigestError::UnknownAlgorithm)
    }

    /// The token as written in headers.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Md5Sess => "MD5-sess",
            Self::Sha256 => "SHA-256",
            Self::Sha256Sess => "SHA-256-sess",
            Self::Sha512_256 => "SHA-512-256",
            Self::Sha512_256Sess => "SHA-512-256-sess",
        }
    }

    /// Whether this is a `-sess` variant (HA1 is re-keyed with nonce and cnonce).
    pub const fn is_sess(self) -> bool {
        matches!(
            self,
            Self::Md5Sess | Self::Sha256Sess | Self::Sha512_256Sess
        )
    }

    /// Length in hex characters of HA1 and of `response` for this algorithm.
    pub const fn hex_len(self) -> usize {
        match self.hash() {
            HashKind::Md5 => 32,
            HashKind::Sha256 | HashKind::Sha512_256 => 64,
        }
    }

    const fn hash(self) -> HashKind {
        match self {
            Self::Md5 | Self::Md5Sess => HashKind::Md5,
            Self::Sha256 | Self::Sha256Sess => HashKind::Sha256,
            Self::Sha512_256 | Self::Sha512_256Sess => HashKind::Sha512_256,
        }
    }

    const fn strength(self) -> u8 {
        match self.hash() {
            HashKind::Md5 => 1,
            HashKind::Sha256 => 2,
            HashKind::Sha512_256 => 3,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HashKind {
    Md5,
    Sha256,
    Sha512_256,
}

/// Lowercase hex of at most 32 bytes, on the stack.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Hex {
    buf: [u8; 64],
    len: u8,
}

impl Hex {
    const EMPTY: Hex = Hex {
        buf: [0; 64],
        len: 0,
    };

    fn encode(bytes: &[u8]) -> Hex {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = Hex::EMPTY;
        for (i, b) in bytes.iter().take(32).enumerate() {
            out.buf[2 * i] = DIGITS[usize::from(b >> 4)];
            out.buf[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
        }
        out.len = (bytes.len().min(32) * 2) as u8;
        out
    }

    /// Accepts hex of exactly `len` digits (either case), stores it lowercase.
    fn parse(s: &str, len: usize) -> Option<Hex> {
        let b = s.as_bytes();
        if b.len() != len || len > 64 || !b.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut out = Hex::EMPTY;
        for (dst, src) in out.buf.iter_mut().zip(b) {
            *dst = src.to_ascii_lowercase();
        }
        out.len = len as u8;
        Some(out)
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(self.bytes()).unwrap_or("")
    }
}

impl fmt::Debug for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// H(p1 ":" p2 ":" ... ) as lowercase hex.
fn h(kind: HashKind, parts: &[&[u8]]) -> Hex {
    fn run<D: sha2::Digest>(mut d: D, parts: &[&[u8]]) -> Hex {
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                d.update(b":");
            }
            d.update(p);
        }
        Hex::encode(&d.finalize())
    }
    match kind {
        HashKind::Md5 => run(Md5::new(), parts),
        HashKind::Sha256 => run(Sha256::new(), parts),
        HashKind::Sha512_256 => run(Sha512_256::new(), parts),
    }
}

/// HA1 = H(username ":" realm ":" password), the value operators store instead of passwords.
///
/// Always the *base* HA1: for `-sess` algorithms the session key is derived per request.
/// MD5 and SHA-256 HA1s differ, so a store that offers both algorithms keeps one per hash.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ha1 {
    hash: HashKind,
    hex: Hex,
}

impl Ha1 {
    /// Computes HA1 from the clear password for `algorithm`'s hash.
    pub fn from_password(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> Ha1 {
        let kind = algorithm.hash();
        Ha1 {
            hash: kind,
            hex: h(
                kind,
                &[username.as_bytes(), realm.as_bytes(), password.as_bytes()],
            ),
        }
    }

    /// Wraps a stored HA1 hex string (either case) made with `algorithm`'s hash.
    pub fn from_hex(algorithm: Algorithm, hex: &str) -> Result<Ha1, DigestError> {
        Hex::parse(hex, algorithm.hex_len())
            .map(|hex| Ha1 {
                hash: algorithm.hash(),
                hex,
            })
            .ok_or(DigestError::BadHa1)
    }

    /// The lowercase hex, e.g. for storing.
    pub fn as_str(&self) -> &str {
        self.hex.as_str()
    }
}

impl fmt::Debug for Ha1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ha1(<redacted>)")
    }
}

/// The `qop` mode used for one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QopMode {
    /// No `qop`: RFC 2069 compatibility, `response = KD(HA1, nonce ":" HA2)`; no nc, no cnonce.
    Legacy,
    /// `qop=auth`.
    Auth,
}

/// The request digest. `qop` is `(nc as sent, cnonce)` for `qop=auth`, `None` for legacy.
fn expected_response(
    ha1: &Ha1,
    algorithm: Algorithm,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(&str, &str)>,
) -> Result<Hex, DigestError> {
    let kind = algorithm.hash();
    if ha1.hash != kind {
        return Err(DigestError::BadHa1);
    }
    let ha1 = if algorithm.is_sess() {
        let (_, cnonce) = qop.ok_or(DigestError::SessRequiresQop)?;
        h(
            kind,
            &[ha1.hex.bytes(), nonce.as_bytes(), cnonce.as_bytes()],
        )
    } else {
        ha1.hex
    };
    let ha2 = h(kind, &[method.as_bytes(), uri.as_bytes()]);
    Ok(match qop {
        Some((nc, cnonce)) => h(
            kind,
            &[
                ha1.bytes(),
                nonce.as_bytes(),
                nc.as_bytes(),
                cnonce.as_bytes(),
                b"auth",
                ha2.bytes(),
            ],
        ),
        None => h(kind, &[ha1.bytes(), nonce.as_bytes(), ha2.bytes()]),
    })
}

// ---------------------------------------------------------------------------------------------
// Parsed header parameters
// ---------------------------------------------------------------------------------------------

fn set_once<'a>(
    slot: &mut Option<&'a str>,
    value: &'a str,
    name: &'static str,
) -> Result<(), DigestError> {
    if slot.is_some() {
        return Err(DigestError::DuplicateParam(name));
    }
    *slot = Some(value);
    Ok(())
}

/// A `Digest` challenge (`WWW-Authenticate` / `Proxy-Authenticate` parameters), borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Challenge<'a> {
    /// `realm`.
    pub realm: &'a str,
    /// `nonce`.
    pub nonce: &'a str,
    /// `opaque`, echoed back verbatim.
    pub opaque: Option<&'a str>,
    /// Raw `algorithm` token; see [`Challenge::algorithm`].
    pub algorithm: Option<&'a str>,
    /// Raw `qop` list as in the header, e.g. `"auth,auth-int"`; see [`Challenge::qop_mode`].
    pub qop: Option<&'a str>,
    /// `stale=true`: the previous credentials were right, only the nonce was outdated.
    pub stale: bool,
    /// `domain`, unparsed.
    pub domain: Option<&'a str>,
}

impl<'a> Challenge<'a> {
    /// Builds a challenge from `(name, unquoted value)` pairs. Names are case-insensitive,
    /// unknown parameters are ignored, a known one given twice is an error.
    pub fn from_params<'n, I>(params: I) -> Result<Self, DigestError>
    where
        I: IntoIterator<Item = (&'n str, &'a str)>,
    {
        let (mut realm, mut nonce) = (None, None);
        let mut c = Challenge::default();
        let mut stale_seen = false;
        for (name, value) in params {
            let is = |n: &str| name.eq_ignore_ascii_case(n);
            if is("realm") {
                set_once(&mut realm, value, "realm")?;
            } else if is("nonce") {
                set_once(&mut nonce, value, "nonce")?;
            } else if is("opaque") {
                set_once(&mut c.opaque, value, "opaque")?;
            } else if is("algorithm") {
                set_once(&mut c.algorithm, value, "algorithm")?;
            } else if is("qop") {
                set_once(&mut c.qop, value, "qop")?;
            } else if is("domain") {
                set_once(&mut c.domain, value, "domain")?;
            } else if is("stale") {
                if stale_seen {
                    return Err(DigestError::DuplicateParam("stale"));
                }
                stale_seen = true;
                c.stale = value.trim().eq_ignore_ascii_case("true");
            }
        }
        c.realm = realm.ok_or(DigestError::MissingParam("realm"))?;
        c.nonce = nonce.ok_or(DigestError::MissingParam("nonce"))?;
        Ok(c)
    }

    /// The algorithm; absent means MD5.
    pub fn algorithm(&self) -> Result<Algorithm, DigestError> {
        self.algorithm
            .map_or(Ok(Algorithm::Md5), Algorithm::from_token)
    }

    /// The qop the client will use: `auth` if offered, legacy if no `qop` at all.
    /// Only `auth-int` offered gives [`DigestError::AuthIntOnly`].
    pub fn qop_mode(&self) -> Result<QopMode, DigestError> {
        let Some(list) = self.qop else {
            return Ok(QopMode::Legacy);
        };
        let mut int = false;
        for token in list.split(',').map(str::trim) {
            if token.eq_ignore_ascii_case("auth") {
                return Ok(QopMode::Auth);
            }
            int |= token.eq_ignore_ascii_case("auth-int");
        }
        Err(if int {
            DigestError::AuthIntOnly
        } else {
            DigestError::UnsupportedQop
        })
    }

    /// Whether this module can answer the challenge, and with what.
    pub fn usable(&self) -> Result<(Algorithm, QopMode), DigestError> {
        let alg = self.algorithm()?;
        let qop = self.qop_mode()?;
        if alg.is_sess() && qop == QopMode::Legacy {
            return Err(DigestError::SessRequiresQop);
        }
        Ok((alg, qop))
    }
}

/// `Authorization` / `Proxy-Authorization` `Digest` parameters, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Credentials<'a> {
    /// `username`.
    pub username: &'a str,
    /// `realm`.
    pub realm: &'a str,
    /// `nonce`.
    pub nonce: &'a str,
    /// `uri` (digest-uri), as the client hashed it.
    pub uri: &'a str,
    /// `response` (hex request digest).
    pub response: &'a str,
    /// Raw `algorithm` token; absent means MD5.
    pub algorithm: Option<&'a str>,
    /// `cnonce`.
    pub cnonce: Option<&'a str>,
    /// `opaque`.
    pub opaque: Option<&'a str>,
    /// `qop` (a single token).
    pub qop: Option<&'a str>,
    /// `nc`, raw 8 hex digits.
    pub nc: Option<&'a str>,
}

impl<'a> Credentials<'a> {
    /// Builds credentials from `(name, unquoted value)` pairs. Names are case-insensitive,
    /// unknown parameters are ignored, a known one given twice is an error; `username`,
    /// `realm`, `nonce`, `uri` and `response` are required.
    pub fn from_params<'n, I>(params: I) -> Result<Self, DigestError>
    where
        I: IntoIterator<Item = (&'n str, &'a str)>,
    {
        let mut req: [Option<&'a str>; 5] = [None; 5];
        const REQ: [&str; 5] = ["username", "realm", "nonce", "uri", "response"];
        let mut c = Credentials::default();
        for (name, value) in params {
            if let Some(i) = REQ.iter().position(|n| name.eq_ignore_ascii_case(n)) {
                set_once(&mut req[i], value, REQ[i])?;
                continue;
            }
            let (slot, n) = if name.eq_ignore_ascii_case("algorithm") {
                (&mut c.algorithm, "algorithm")
            } else if name.eq_ignore_ascii_case("cnonce") {
                (&mut c.cnonce, "cnonce")
            } else if name.eq_ignore_ascii_case("opaque") {
                (&mut c.opaque, "opaque")
            } else if name.eq_ignore_ascii_case("qop") {
                (&mut c.qop, "qop")
            } else if name.eq_ignore_ascii_case("nc") {
                (&mut c.nc, "nc")
            } else {
                continue;
            };
            set_once(slot, value, n)?;
        }
        let [username, realm, nonce, uri, response] = req;
        c.username = username.ok_or(DigestError::MissingParam("username"))?;
        c.realm = realm.ok_or(DigestError::MissingParam("realm"))?;
        c.nonce = nonce.ok_or(DigestError::MissingParam("nonce"))?;
        c.uri = uri.ok_or(DigestError::MissingParam("uri"))?;
        c.response = response.ok_or(DigestError::MissingParam("response"))?;
        Ok(c)
    }

    /// The algorithm; absent means MD5.
    pub fn algorithm(&self) -> Result<Algorithm, DigestError> {
        self.algorithm
            .map_or(Ok(Algorithm::Md5), Algorithm::from_token)
    }
}

/// Parses `nc`: exactly 8 hex digits, non-zero.
fn parse_nc(nc: &str) -> Result<u32, DigestError> {
    if nc.len() != 8 || !nc.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DigestError::BadNonceCount);
    }
    match u32::from_str_radix(nc, 16) {
        Ok(0) | Err(_) => Err(DigestError::BadNonceCount),
        Ok(n) => Ok(n),
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering helpers
// ---------------------------------------------------------------------------------------------

/// Rejects CTLs (other than HTAB) so no value can break a header line.
fn check_text(value: &str, name: &'static str) -> Result<(), DigestError> {
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(DigestError::InvalidChar(name));
    }
    Ok(())
}

/// Appends `"value"` with `"` and `\` backslash-escaped (RFC 3261 §25.1 quoted-pair).
fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    let mut rest = value;
    while let Some(i) = rest.find(['"', '\\']) {
        out.push_str(&rest[..i]);
        out.push('\\');
        out.push_str(&rest[i..i + 1]);
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
    out.push('"');
}

// ---------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------

/// The account's secret: clear password, or the stored HA1 hex for the challenge's hash.
#[derive(Clone, Copy)]
pub enum Secret<'a> {
    /// Clear password; HA1 is computed for whatever algorithm the challenge asks.
    Password(&'a str),
    /// HA1 hex made with the challenge algorithm's hash and realm; a mismatch gives
    /// [`DigestError::BadHa1`] (for length) or a wrong response (for realm).
    Ha1(&'a str),
}

impl fmt::Debug for Secret<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Password(_) => f.write_str("Password(<redacted>)"),
            Self::Ha1(_) => f.write_str("Ha1(<redacted>)"),
        }
    }
}

/// Who answers a challenge.
#[derive(Debug, Clone, Copy)]
pub struct Account<'a> {
    /// Digest `username` (the auth user, not necessarily the AOR user part).
    pub username: &'a str,
    /// Password or stored HA1.
    pub secret: Secret<'a>,
}

/// Appends the `Authorization` header value answering `challenge` to `out`, with the given
/// `cnonce` and nonce-count `nc` (ignored in legacy no-qop mode). On error `out` is unchanged.
///
/// Renders `Digest username="…", realm="…", nonce="…", uri="…", response="…", algorithm=…`
/// then, with qop, `, cnonce="…", qop=auth, nc=0000000N`, then `, opaque="…"` if challenged.
/// `algorithm`, `qop` and `nc` are tokens; the rest are quoted strings with `"`/`\` escaped.
pub fn write_authorization(
    challenge: &Challenge<'_>,
    account: &Account<'_>,
    method: &str,
    uri: &str,
    cnonce: &str,
    nc: u32,
    out: &mut String,
) -> Result<(), DigestError> {
    let (alg, qop) = challenge.usable()?;
    check_text(account.username, "username")?;
    check_text(challenge.realm, "realm")?;
    check_text(challenge.nonce, "nonce")?;
    check_text(uri, "uri")?;
    check_text(method, "method")?;
    if let Some(o) = challenge.opaque {
        check_text(o, "opaque")?;
    }
    let mut nc_buf = [0u8; 8];
    let qop_parts = match qop {
        QopMode::Legacy => None,
        QopMode::Auth => {
            if nc == 0 {
                return Err(DigestError::BadNonceCount);
            }
            if cnonce.is_empty() {
                return Err(DigestError::MissingParam("cnonce"));
            }
            check_text(cnonce, "cnonce")?;
            let hex = Hex::encode(&nc.to_be_bytes());
            nc_buf.copy_from_slice(hex.bytes());
            Some((std::str::from_utf8(&nc_buf).unwrap_or("00000000"), cnonce))
        }
    };
    let ha1 = match account.secret {
        Secret::Password(p) => Ha1::from_password(alg, account.username, challenge.realm, p),
        Secret::Ha1(hex) => Ha1::from_hex(alg, hex)?,
    };
    let response = expected_response(&ha1, alg, method, uri, challenge.nonce, qop_parts)?;

    out.push_str("Digest username=");
    push_quoted(out, account.username);
    out.push_str(", realm=");
    push_quoted(out, challenge.realm);
    out.push_str(", nonce=");
    push_quoted(out, challenge.nonce);
    out.push_str(", uri=");
    push_quoted(out, uri);
    out.push_str(", response=\"");
    out.push_str(response.as_str());
    out.push_str("\", algorithm=");
    out.push_str(alg.as_str());
    if let Some((nc, cnonce)) = qop_parts {
        out.push_str(", cnonce=");
        push_quoted(out, cnonce);
        out.push_str(", qop=auth, nc=");
        out.push_str(nc);
    }
    if let Some(o) = challenge.opaque {
        out.push_str(", opaque=");
        push_quoted(out, o);
    }
    Ok(())
}

/// Chooses the challenge to answer among several (e.g. one `WWW-Authenticate` per algorithm):
/// the strongest hash this module supports (SHA-512-256 > SHA-256 > MD5), then `qop=auth`
/// over legacy, then the topmost. Unusable challenges (unknown algorithm, `auth-int` only)
/// are skipped. RFC 8760 §2.4 says "topmost supported unless local policy dictates
/// otherwise"; servers list the preferred first, so both agree with a compliant server.
/// The caller filters by realm first if several realms challenge at once.
pub fn pick<'c, 'a>(challenges: &'c [Challenge<'a>]) -> Option<&'c Challenge<'a>> {
    let mut best: Option<(&Challenge<'a>, (u8, u8))> = None;
    for c in challenges {
        let Ok((alg, qop)) = c.usable() else { continue };
        let rank = (alg.strength(), u8::from(qop == QopMode::Auth));
        if best.is_none_or(|(_, r)| rank > r) {
            best = Some((c, rank));
        }
    }
    best.map(|(c, _)| c)
}

/// Upper bound on credentialed sends of one request before [`DigestClient::should_retry`]
/// gives up.
pub const MAX_AUTH_ATTEMPTS: u32 = 3;

#[derive(Debug)]
struct Cached {
    realm: String,
    nonce: String,
    opaque: Option<String>,
    algorithm: Algorithm,
    qop: QopMode,
    nc: u32,
    cnonce: Hex,
}

/// Client-side digest state for one account towards one challenger (realm): remembers the
/// last nonce, its nonce-count and cnonce, so refreshes can reuse the nonce (nc 1, 2, 3, …)
/// and a new nonce starts again at nc=1 with a new cnonce.
///
/// The cnonce is `hex(HMAC-SHA-256(seed, counter))[..32]`: unpredictable if the seed is
/// random, deterministic in tests. One cnonce is kept per nonce, so `-sess` servers that
/// compute the session key once and those that recompute it per request both agree.
///
/// Retry rule, applied by [`DigestClient::should_retry`] to a 401/407 received for a request
/// that carried credentials:
/// * `stale=true` with a new nonce: credentials were right, retry at once — never count it as
///   an authentication failure;
/// * a new nonce after our answer to a *reused* nonce (nc > 1): the server may have forgotten
///   it (restart) without saying `stale`; retry once;
/// * otherwise (same nonce re-challenged, or fresh nonce rejected): credentials are wrong.
///
/// and never more than [`MAX_AUTH_ATTEMPTS`] credentialed sends of one request.
pub struct DigestClient {
    seed: [u8; 32],
    counter: u64,
    /// Boxed: a registration holds one client per account, most of the
    /// time between refreshes; the inline size matters at a million accounts.
    cached: Option<Box<Cached>>,
}

impl DigestClient {
    /// `cnonce_seed`: 32 random bytes from the caller.
    pub fn new(cnonce_seed: [u8; 32]) -> Self {
        DigestClient {
            seed: cnonce_seed,
            counter: 0,
            cached: None,
        }
    }

    fn cnonce(&self, counter: u64) -> Hex {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.seed).unwrap_or_else(|_| unreachable_hmac());
        mac.update(b"sipis-cnonce");
        mac.update(&counter.to_be_bytes());
        Hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// Answers `challenge`, appending the header value to `out` (unchanged on error).
    /// Same realm and nonce as last time: nc+1, same cnonce. New nonce: nc=1, new cnonce.
    pub fn authorize(
        &mut self,
        challenge: &Challenge<'_>,
        account: &Account<'_>,
        method: &str,
        uri: &str,
        out: &mut String,
    ) -> Result<(), DigestError> {
        let (algorithm, qop) = challenge.usable()?;
        let reuse = self
            .cached
            .as_ref()
            .filter(|c| c.nonce == challenge.nonce && c.realm == challenge.realm);
        let (nc, cnonce, fresh) = match reuse {
            Some(c) => (
                c.nc.checked_add(1)
                    .ok_or(DigestError::NonceCountExhausted)?,
                c.cnonce,
                false,
            ),
            None => (1, self.cnonce(self.counter), true),
        };
        write_authorization(challenge, account, method, uri, cnonce.as_str(), nc, out)?;
        if fresh {
            self.counter = self.counter.wrapping_add(1);
        }
        let c = self.cached.get_or_insert_with(|| {
            Box::new(Cached {
                realm: String::new(),
                nonce: String::new(),
                opaque: None,
                algorithm,
                qop,
                nc,
                cnonce,
            })
        });
        if fresh {
            c.realm.clear();
            c.realm.push_str(challenge.realm);
            c.nonce.clear();
            c.nonce.push_str(challenge.nonce);
        }
        match (&mut c.opaque, challenge.opaque) {
            (Some(o), Some(new)) if o == new => {}
            (slot, new) => *slot = new.map(str::to_owned),
        }
        c.algorithm = algorithm;
        c.qop = qop;
        c.nc = nc;
        c.cnonce = cnonce;
        Ok(())
    }

    /// Answers the last challenge again (preemptive credentials for a refresh) with nc+1.
    /// [`DigestError::NoChallenge`] if nothing was answered yet.
    pub fn reauthorize(
        &mut self,
        account: &Account<'_>,
        method: &str,
        uri: &str,
        out: &mut String,
    ) -> Result<(), DigestError> {
        let c = self.cached.as_ref().ok_or(DigestError::NoChallenge)?;
        let nc =
            c.nc.checked_add(1)
                .ok_or(DigestError::NonceCountExhausted)?;
        let challenge = Challenge {
            realm: &c.realm,
            nonce: &c.nonce,
            opaque: c.opaque.as_deref(),
            algorithm: Some(c.algorithm.as_str()),
            qop: (c.qop == QopMode::Auth).then_some("auth"),
            stale: false,
            domain: None,
        };
        write_authorization(&challenge, account, method, uri, c.cnonce.as_str(), nc, out)?;
        if let Some(c) = self.cached.as_mut() {
            c.nc = nc;
        }
        Ok(())
    }

    /// The nonce-count used in the last answer (0 if none).
    pub fn nonce_count(&self) -> u32 {
        self.cached.as_ref().map_or(0, |c| c.nc)
    }

    /// The nonce of the last answer, if any.
    pub fn nonce(&self) -> Option<&str> {
        self.cached.as_ref().map(|c| c.nonce.as_str())
    }

    /// Forgets the cached nonce (e.g. after the account's password changed).
    pub fn clear(&mut self) {
        self.cached = None;
    }

    /// Whether to answer `challenge` (a 401/407 to a request), given that this request was
    /// already sent `attempts` times *with* credentials. `false` after credentials were sent
    /// means: the credentials are wrong, mark the account failed. See the type docs.
    pub fn should_retry(&self, challenge: &Challenge<'_>, attempts: u32) -> bool {
        if attempts == 0 {
            return true;
        }
        if attempts >= MAX_AUTH_ATTEMPTS {
            return false;
        }
        let Some(c) = &self.cached else {
            return challenge.stale;
        };
        if c.realm != challenge.realm {
            return true; // another challenger (e.g. a proxy after the registrar)
        }
        if c.nonce == challenge.nonce {
            return false;
        }
        challenge.stale || c.nc > 1
    }
}

impl fmt::Debug for DigestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestClient")
            .field("cached", &self.cached)
            .finish_non_exhaustive()
    }
}

#[cold]
fn unreachable_hmac() -> HmacSha256 {
    // HMAC accepts keys of any length; this path cannot be taken. Fall back to an all-zero
    // key rather than panicking.
    <HmacSha256 as Mac>::new(&Default::default())
}

// ---------------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------------

/// A server nonce: 64 lowercase hex characters, see [`NonceVerifier`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce(Hex);

impl Nonce {
    /// The nonce as put in the challenge.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({})", self.as_str())
    }
}

/// Appends a challenge header value to `out` (unchanged on error):
/// `Digest realm="…", nonce="…", algorithm=…, qop="auth"` and `, stale=true` if `stale`.
/// For several algorithms, render one value per algorithm with the same nonce, preferred
/// (strongest) first (RFC 8760 §2.4).
pub fn write_challenge(
    out: &mut String,
    realm: &str,
    nonce: &Nonce,
    algorithm: Algorithm,
    stale: bool,
) -> Result<(), DigestError> {
    check_text(realm, "realm")?;
    out.push_str("Digest realm=");
    push_quoted(out, realm);
    out.push_str(", nonce=\"");
    out.push_str(nonce.as_str());
    out.push_str("\", algorithm=");
    out.push_str(algorithm.as_str());
    out.push_str(", qop=\"auth\"");
    if stale {
        out.push_str(", stale=true");
    }
    Ok(())
}

/// [`NonceVerifier`] settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierConfig {
    /// How long a nonce is accepted after issue; older ones get [`Verdict::Stale`].
    pub lifetime: Duration,
    /// Most nonces whose nonce-count is tracked; when full the oldest is dropped and becomes
    /// stale (never replayable).
    pub max_tracked: usize,
    /// Accept RFC 2069 clients that send no `qop` (each nonce then works only once).
    pub allow_legacy: bool,
    /// Algorithms a client may answer with, preferred first (the order to offer them in).
    pub algorithms: Vec<Algorithm>,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        VerifierConfig {
            lifetime: Duration::from_secs(300),
            max_tracked: 65_536,
            allow_legacy: true,
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        }
    }
}

/// Outcome of [`NonceVerifier::verify`]; [`Verdict::reply`] says what to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Credentials valid, nonce fresh and not replayed: the request is authenticated.
    Ok,
    /// Digest correct but the nonce expired, was issued before this verifier's time base,
    /// or fell out of the replay table: re-challenge with `stale=true`.
    Stale,
    /// Digest does not match the stored HA1 (wrong password): 403.
    BadResponse,
    /// The lookup knows no usable HA1 for this user: answered exactly like `BadResponse`.
    UnknownUser,
    /// The nonce was not issued by this verifier for this realm (bad MAC, bad encoding, or
    /// an issue counter it never reached): fresh challenge.
    Forged,
    /// Correct digest but `nc` not above the highest seen for this nonce, or a legacy
    /// (no-qop) nonce used a second time: re-challenge with `stale=true`.
    Replay,
    /// The credentials' realm is not the one being verified: fresh challenge.
    WrongRealm,
    /// Unusable or disallowed parameters (or, for `BadHa1`, an unusable stored HA1).
    Malformed(DigestError),
}

/// What to send after a [`Verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Go on with the request.
    Accept,
    /// 401 with `WWW-Authenticate` (407 with `Proxy-Authenticate` for a proxy) carrying a
    /// new nonce; `stale` tells whether to set `stale=true`.
    Challenge {
        /// Set `stale=true` in the new challenge.
        stale: bool,
    },
    /// 403 Forbidden: the credentials are wrong; a new challenge would only invite guessing.
    Forbidden,
}

impl Reply {
    /// The SIP status to send, `None` for [`Reply::Accept`].
    pub fn status(self, proxy: bool) -> Option<u16> {
        match self {
            Reply::Accept => None,
            Reply::Challenge { .. } => Some(if proxy { 407 } else { 401 }),
            Reply::Forbidden => Some(403),
        }
    }
}

impl Verdict {
    /// Maps the outcome to the reply to send.
    pub fn reply(self) -> Reply {
        match self {
            Verdict::Ok => Reply::Accept,
            Verdict::Stale | Verdict::Replay => Reply::Challenge { stale: true },
            Verdict::BadResponse | Verdict::UnknownUser => Reply::Forbidden,
            Verdict::Forged | Verdict::WrongRealm | Verdict::Malformed(_) => {
                Reply::Challenge { stale: false }
            }
        }
    }
}

/// Marks a nonce used once by a legacy (no-qop) client.
const LEGACY_USED: u32 = u32::MAX;
const NONCE_BYTES: usize = 32;
const MAC_BYTES: usize = 16;

/// Server side: issues and checks nonces, verifies digest responses.
///
/// **Nonce** = hex( issued_ms ‖ counter ‖ MAC ) — 8 + 8 + 16 bytes, 64 hex chars — where
/// `issued_ms` is milliseconds since the verifier's `base` instant, `counter` counts issued
/// nonces, and MAC is HMAC-SHA-256(key, "sipis-digest-nonce-v1" ‖ issued_ms ‖ counter ‖ realm)
/// cut to 128 bits. Authenticity and age are checked without per-nonce state.
///
/// **Replay**: for each nonce that authenticated successfully, the highest `nc` is kept in a
/// table ordered by counter (= issue order). A request must bring a higher `nc`. The table
/// is bounded by [`VerifierConfig::max_tracked`]; when full the oldest entry is dropped and
/// every nonce at or below its counter that is not in the table is answered `Stale` — so an
/// eviction costs a client one round trip, never a replay window. Expired entries are purged
/// first. **Legacy no-qop clients** (no `nc`) get each nonce once: a second use is `Replay`
/// (they re-register through a `stale=true` challenge). Concurrent requests over one nonce
/// that arrive out of order can hit `Replay` too and recover the same way.
///
/// **Key**: 32 random bytes, fresh for each process start. With a key kept across restarts,
/// nonces from the previous run whose counter this run has reached again could be accepted
/// once within their lifetime.
///
/// The `uri` in the credentials is hashed as sent; comparing it with the Request-URI
/// (RFC 2617 §3.2.2.5) is left to the caller.
pub struct NonceVerifier {
    key: [u8; 32],
    base: Instant,
    config: VerifierConfig,
    next_counter: u64,
    /// counter → (issued_ms, highest nc accepted or [`LEGACY_USED`] after a legacy use).
    seen: BTreeMap<u64, (u64, u32)>,
    /// Nonces with a counter below this and no table entry are stale.
    low_water: u64,
}

impl fmt::Debug for NonceVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceVerifier")
            .field("config", &self.config)
            .field("next_counter", &self.next_counter)
            .field("tracked", &self.seen.len())
            .field("low_water", &self.low_water)
            .finish_non_exhaustive()
    }
}

impl NonceVerifier {
    /// `key`: 32 random bytes (see type docs); `base`: any instant not after the first `now`.
    pub fn new(key: [u8; 32], base: Instant, config: VerifierConfig) -> Self {
        NonceVerifier {
            key,
            base,
            config,
            next_counter: 0,
            seen: BTreeMap::new(),
            low_water: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// How many nonces currently have a tracked nonce-count.
    pub fn tracked(&self) -> usize {
        self.seen.len()
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    fn mac(&self, issued: u64, counter: u64, realm: &str) -> [u8; MAC_BYTES] {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable_hmac());
        mac.update(b"sipis-digest-nonce-v1");
        mac.update(&issued.to_be_bytes());
        mac.update(&counter.to_be_bytes());
        mac.update(realm.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&full[..MAC_BYTES]);
        out
    }

    /// Issues a new nonce for `realm`.
    pub fn issue(&mut self, realm: &str, now: Instant) -> Nonce {
        let issued = self.millis(now);
        let counter = self.next_counter;
        self.next_counter = self.next_counter.wrapping_add(1);
        let mut raw = [0u8; NONCE_BYTES];
        raw[..8].copy_from_slice(&issued.to_be_bytes());
        raw[8..16].copy_from_slice(&counter.to_be_bytes());
        raw[16..].copy_from_slice(&self.mac(issued, counter, realm));
        Nonce(Hex::encode(&raw))
    }

    /// Issues a nonce and appends one challenge value per configured algorithm (preferred
    /// first) to `out`, each as its own header value. On error nothing is appended.
    pub fn challenge(
        &mut self,
        realm: &str,
        stale: bool,
        now: Instant,
        out: &mut Vec<String>,
    ) -> Result<(), DigestError> {
        check_text(realm, "realm")?;
        let nonce = self.issue(realm, now);
        for &alg in &self.config.algorithms {
            let mut v = String::with_capacity(160 + realm.len());
            write_challenge(&mut v, realm, &nonce, alg, stale)?;
            out.push(v);
        }
        Ok(())
    }

    /// Decodes a nonce and checks its MAC: `Some((issued_ms, counter))` if authentic.
    fn open(&self, nonce: &str, realm: &str) -> Option<(u64, u64)> {
        let b = nonce.as_bytes();
        if b.len() != 2 * NONCE_BYTES {
            return None;
        }
        let mut raw = [0u8; NONCE_BYTES];
        for (dst, pair) in raw.iter_mut().zip(b.chunks_exact(2)) {
            // Canonical lowercase only, so one nonce has one spelling.
            let d = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            *dst = (d(pair[0])? << 4) | d(pair[1])?;
        }
        let mut word = [0u8; 8];
        word.copy_from_slice(&raw[..8]);
        let issued = u64::from_be_bytes(word);
        word.copy_from_slice(&raw[8..16]);
        let counter = u64::from_be_bytes(word);
        let ok = self.mac(issued, counter, realm).ct_eq(&raw[16..]);
        (bool::from(ok) && counter < self.next_counter).then_some((issued, counter))
    }

    /// Verifies `creds` for a request with `method`, in `realm`. `lookup(username, algorithm)`
    /// returns the user's HA1 for that algorithm's hash, `None` if unknown.
    ///
    /// Order: realm, parameters, nonce authenticity, user, digest (constant time), age,
    /// replay — so `Stale`/`Replay` are only said to clients that proved the password, and
    /// only successful requests update the nonce-count table.
    pub fn verify<F>(
        &mut self,
        creds: &Credentials<'_>,
        method: &str,
        realm: &str,
        now: Instant,
        lookup: F,
    ) -> Verdict
    where
        F: FnOnce(&str, Algorithm) -> Option<Ha1>,
    {
        if creds.realm != realm {
            return Verdict::WrongRealm;
        }
        let alg = match creds.algorithm() {
            Ok(a) => a,
            Err(e) => return Verdict::Malformed(e),
        };
        if !self.config.algorithms.contains(&alg) {
            return Verdict::Malformed(DigestError::AlgorithmNotAllowed);
        }
        let (nc, qop) = match creds.qop {
            Some(q) if q.trim().eq_ignore_ascii_case("auth") => {
                let nc_raw = match creds.nc {
                    Some(n) => n,
                    None => return Verdict::Malformed(DigestError::MissingParam("nc")),
                };
                let nc = match parse_nc(nc_raw) {
                    Ok(n) => n,
                    Err(e) => return Verdict::Malformed(e),
                };
                let cnonce = match creds.cnonce {
                    Some(c) if !c.is_empty() => c,
                    _ => return Verdict::Malformed(DigestError::MissingParam("cnonce")),
                };
                (nc, Some((nc_raw, cnonce)))
            }
            Some(q) if q.trim().eq_ignore_ascii_case("auth-int") => {
                return Verdict::Malformed(DigestError::AuthIntOnly)
            }
            Some(_) => return Verdict::Malformed(DigestError::UnsupportedQop),
            None if !self.config.allow_legacy => {
                return Verdict::Malformed(DigestError::QopRequired)
            }
            None if alg.is_sess() => return Verdict::Malformed(DigestError::SessRequiresQop),
            None => (0, None),
        };
        let Some(given) = Hex::parse(creds.response, alg.hex_len()) else {
            return Verdict::Malformed(DigestError::BadResponseFormat);
        };
        let Some((issued, counter)) = self.open(creds.nonce, realm) else {
            return Verdict::Forged;
        };
        let Some(ha1) = lookup(creds.username, alg) else {
            return Verdict::UnknownUser;
        };
        let expected = match expected_response(&ha1, alg, method, creds.uri, creds.nonce, qop) {
            Ok(x) => x,
            Err(e) => return Verdict::Malformed(e),
        };
        if !bool::from(expected.bytes().ct_eq(given.bytes())) {
            return Verdict::BadResponse;
        }
        let now_ms = self.millis(now);
        let lifetime = u64::try_from(self.config.lifetime.as_millis()).unwrap_or(u64::MAX);
        match now_ms.checked_sub(issued) {
            Some(age) if age <= lifetime => {}
            _ => return Verdict::Stale,
        }
        match self.seen.get_mut(&counter) {
            Some((_, max)) => {
                if qop.is_none() || *max == LEGACY_USED || nc <= *max {
                    return Verdict::Replay;
                }
                *max = nc;
            }
            None if counter < self.low_water => return Verdict::Stale,
            None => {
                let nc = if qop.is_none() { LEGACY_USED } else { nc };
                self.seen.insert(counter, (issued, nc));
                self.purge(now_ms, lifetime);
            }
        }
        Verdict::Ok
    }

    /// Drops expired entries, then the oldest ones beyond `max_tracked`.
    fn purge(&mut self, now_ms: u64, lifetime_ms: u64) {
        let cutoff = now_ms.saturating_sub(lifetime_ms);
        while let Some((&counter, &(issued, _))) = self.seen.first_key_value() {
            let expired = issued < cutoff;
            if !expired && self.seen.len() <= self.config.max_tracked.max(1) {
                break;
            }
            self.seen.pop_first();
            self.low_water = self.low_water.max(counter.saturating_add(1));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor a simulated clock
mod tests {
    use super::*;

    /// Splits a header value rendered by this module into (name, unescaped value) pairs —
    /// a stand-in for the real parser, enough for values this module writes.
    fn params(value: &str) -> Vec<(String, String)> {
        let rest = value.strip_prefix("Digest ").expect("scheme");
        let mut out = Vec::new();
        let mut it = rest.chars().peekable();
        loop {
            while it.peek() == Some(&' ') || it.peek() == Some(&',') {
                it.next();
            }
            let name: String = it.by_ref().take_while(|&c| c != '=').collect();
            if name.is_empty() {
                break;
            }
            let mut v = String::new();
            if it.peek() == Some(&'"') {
                it.next();
                while let Some(c) = it.next() {
                    match c {
                        '\\' => v.extend(it.next()),
                        '"' => break,
                        c => v.push(c),
                    }
                }
            } else {
                while let Some(&c) = it.peek() {
                    if c == ',' {
                        break;
                    }
                    v.push(c);
                    it.next();
                }
            }
            out.push((name, v));
        }
        out
    }

    fn pairs(p: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
        p.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    fn get<'p>(p: &'p [(String, String)], name: &str) -> Option<&'p str> {
        p.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    const KEY: [u8; 32] = [7; 32];
    const REALM: &str = "sipis.example";
    const URI: &str = "sip:sipis.example";

    fn account(pass: &str) -> Account<'_> {
        Account {
            username: "alice",
            secret: Secret::Password(pass),
        }
    }

    struct Rig {
        base: Instant,
        server: NonceVerifier,
        client: DigestClient,
    }

    impl Rig {
        fn new(config: VerifierConfig) -> Rig {
            let base = Instant::now();
            Rig {
                base,
                server: NonceVerifier::new(KEY, base, config),
                client: DigestClient::new([9; 32]),
            }
        }

        fn at(&self, secs: u64) -> Instant {
            self.base + Duration::from_secs(secs)
        }

        /// Server challenge (first configured algorithm) rendered and re-parsed.
        fn challenge(&mut self, secs: u64) -> Vec<(String, String)> {
            let mut v = Vec::new();
            let now = self.at(secs);
            self.server.challenge(REALM, false, now, &mut v).unwrap();
            params(&v[0])
        }

        fn answer(&mut self, ch: &[(String, String)], pass: &str) -> Vec<(String, String)> {
            let ch = Challenge::from_params(pairs(ch)).unwrap();
            let mut out = String::new();
            self.client
                .authorize(&ch, &account(pass), "REGISTER", URI, &mut out)
                .unwrap();
            params(&out)
        }

        fn reanswer(&mut self, pass: &str) -> Vec<(String, String)> {
            let mut out = String::new();
            self.client
                .reauthorize(&account(pass), "REGISTER", URI, &mut out)
                .unwrap();
            params(&out)
        }

        fn verify(&mut self, auth: &[(String, String)], secs: u64) -> Verdict {
            let creds = Credentials::from_params(pairs(auth)).unwrap();
            let now = self.at(secs);
            self.server
                .verify(&creds, "REGISTER", REALM, now, |user, alg| {
                    (user == "alice").then(|| Ha1::from_password(alg, user, REALM, "secret"))
                })
        }
    }

    // --- RFC vectors -------------------------------------------------------------------------

    fn response_of(rendered: &str) -> String {
        get(&params(rendered), "response").unwrap().to_owned()
    }

    #[test]
    fn rfc2617_section_3_5_md5_qop_auth_example() {
        let ch = Challenge {
            realm: "testrealm@host.com",
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            opaque: Some("5ccc069c403ebaf9f0171e9517f40e41"),
            qop: Some("auth,auth-int"),
            ..Challenge::default()
        };
        let acct = Account {
            username: "Mufasa",
            secret: Secret::Password("Circle Of Life"),
        };
        let mut out = String::new();
        write_authorization(
            &ch,
            &acct,
            "GET",
            "/dir/index.html",
            "0a4f113b",
            1,
            &mut out,
        )
        .unwrap();
        assert_eq!(response_of(&out), "6629fae49393a05397450978507c4ef1");
        assert_eq!(
            out,
            "Digest username=\"Mufasa\", realm=\"testrealm@host.com\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"/dir/index.html\", \
             response=\"6629fae49393a05397450978507c4ef1\", algorithm=MD5, \
             cnonce=\"0a4f113b\", qop=auth, nc=00000001, \
             opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""
        );
    }

    // RFC 7616 §3.9.1 (password "Circle of Life", lowercase "of", erratum 4495).
    fn rfc7616(alg: &str) -> String {
        let ch = Challenge {
            realm: "http-auth@example.org",
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            opaque: Some("FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"),
            algorithm: Some(alg),
            qop: Some("auth, auth-int"),
            ..Challenge::default()
        };
        let acct = Account {
            username: "Mufasa",
            secret: Secret::Password("Circle of Life"),
        };
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let mut out = String::new();
        write_authorization(&ch, &acct, "GET", "/dir/index.html", cnonce, 1, &mut out).unwrap();
        response_of(&out)
    }

    #[test]
    fn rfc7616_section_3_9_1_md5_example() {
        assert_eq!(rfc7616("MD5"), "8ca523f5e9506fed4657c9700eebdbec");
    }

    #[test]
    fn rfc7616_section_3_9_1_sha256_example() {
        assert_eq!(
            rfc7616("SHA-256"),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    // Independent vectors, from Python 3.11 hashlib:
    //   python3 -c 'import hashlib
    //   def h(a,*p): return hashlib.new(a, ":".join(p).encode()).hexdigest()
    //   a="md5"; n="dcd98b7102dd2f0e8b11d0f600bfb0c093"; c="0a4f113b"
    //   s=h(a, h(a,"Mufasa","testrealm@host.com","Circle Of Life"), n, c)
    //   print(h(a, s, n, "00000001", c, "auth", h(a,"GET","/dir/index.html")))'
    //   -> 8e3825c57e897f5a0dec6c2d4e5059d0   (MD5-sess, RFC 2617 inputs)
    // Same with a="sha256" and the RFC 7616 §3.9.1 inputs
    //   -> 2fd51b3a77ad75bad6afad6003e818d767133c46d9e2749e7f5232ae1ea3efd7 (SHA-256-sess)
    // a="sha512_256", not -sess, RFC 7616 §3.9.1 inputs
    //   -> 430d05014cecc49cab6fbe03176d41a1da86cbfe24a16580e22aaad928d960d0 (SHA-512-256)
    // a="md5", no qop: h(a, h(a,"alice","atlanta.com","secret"), "abc123",
    //   h(a,"REGISTER","sip:atlanta.com")) -> 73911d626f4c576c44172b876078273b (RFC 2069)
    #[test]
    fn md5_sess_matches_independent_vector() {
        let ch = Challenge {
            realm: "testrealm@host.com",
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            algorithm: Some("md5-SESS"),
            qop: Some("auth"),
            ..Challenge::default()
        };
        let acct = Account {
            username: "Mufasa",
            secret: Secret::Password("Circle Of Life"),
        };
        let mut out = String::new();
        write_authorization(
            &ch,
            &acct,
            "GET",
            "/dir/index.html",
            "0a4f113b",
            1,
            &mut out,
        )
        .unwrap();
        assert_eq!(response_of(&out), "8e3825c57e897f5a0dec6c2d4e5059d0");
        assert!(out.contains("algorithm=MD5-sess"));
    }

    #[test]
    fn sha256_sess_matches_independent_vector() {
        assert_eq!(
            rfc7616("SHA-256-sess"),
            "2fd51b3a77ad75bad6afad6003e818d767133c46d9e2749e7f5232ae1ea3efd7"
        );
    }

    #[test]
    fn sha512_256_matches_independent_vector() {
        assert_eq!(
            rfc7616("SHA-512-256"),
            "430d05014cecc49cab6fbe03176d41a1da86cbfe24a16580e22aaad928d960d0"
        );
    }

    #[test]
    fn legacy_no_qop_matches_rfc2069_formula() {
        let ch = Challenge {
            realm: "atlanta.com",
            nonce: "abc123",
            ..Challenge::default()
        };
        let mut out = String::new();
        write_authorization(
            &ch,
            &Account {
                username: "alice",
                secret: Secret::Password("secret"),
            },
            "REGISTER",
            "sip:atlanta.com",
            "ignored",
            7,
            &mut out,
        )
        .unwrap();
        let p = params(&out);
        assert_eq!(
            get(&p, "response"),
            Some("73911d626f4c576c44172b876078273b")
        );
        assert_eq!(get(&p, "qop"), None);
        assert_eq!(get(&p, "nc"), None);
        assert_eq!(get(&p, "cnonce"), None);
    }

    #[test]
    fn stored_ha1_gives_same_response_as_password() {
        let ha1 = Ha1::from_password(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        assert_eq!(ha1.as_str(), "939e7578ed9e3c518a452acee763bce9");
        let upper = ha1.as_str().to_ascii_uppercase();
        let ch = Challenge {
            realm: "testrealm@host.com",
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            qop: Some("auth"),
            ..Challenge::default()
        };
        let acct = Account {
            username: "Mufasa",
            secret: Secret::Ha1(&upper),
        };
        let mut out = String::new();
        write_authorization(
            &ch,
            &acct,
            "GET",
            "/dir/index.html",
            "0a4f113b",
            1,
            &mut out,
        )
        .unwrap();
        assert_eq!(response_of(&out), "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn stored_ha1_of_wrong_hash_is_rejected() {
        let md5 = Ha1::from_password(Algorithm::Md5, "a", "r", "p");
        let ch = Challenge {
            realm: "r",
            nonce: "n",
            algorithm: Some("SHA-256"),
            qop: Some("auth"),
            ..Challenge::default()
        };
        let acct = Account {
            username: "a",
            secret: Secret::Ha1(md5.as_str()),
        };
        let mut out = String::from("kept");
        let err = write_authorization(&ch, &acct, "REGISTER", "sip:r", "c", 1, &mut out);
        assert_eq!(err, Err(DigestError::BadHa1));
        assert_eq!(out, "kept");
        assert_eq!(
            Ha1::from_hex(Algorithm::Md5, "xyz"),
            Err(DigestError::BadHa1)
        );
    }

    // --- Parsing -------------------------------------------------------------------------------

    #[test]
    fn challenge_from_params_ignores_unknown_and_maps_fields() {
        let ch = Challenge::from_params([
            ("REALM", "r"),
            ("Nonce", "n"),
            ("charset", "UTF-8"),
            ("userhash", "true"),
            ("stale", "TRUE"),
            ("qop", "auth-int, auth"),
            ("algorithm", "sha-256"),
            ("opaque", "o"),
            ("domain", "sip:r"),
        ])
        .unwrap();
        assert_eq!(
            (ch.realm, ch.nonce, ch.opaque, ch.domain),
            ("r", "n", Some("o"), Some("sip:r"))
        );
        assert!(ch.stale);
        assert_eq!(ch.usable(), Ok((Algorithm::Sha256, QopMode::Auth)));
    }

    #[test]
    fn challenge_without_realm_or_nonce_is_an_error() {
        assert_eq!(
            Challenge::from_params([("nonce", "n")]),
            Err(DigestError::MissingParam("realm"))
        );
        assert_eq!(
            Challenge::from_params([("realm", "r")]),
            Err(DigestError::MissingParam("nonce"))
        );
        assert_eq!(
            Challenge::from_params([("realm", "r"), ("nonce", "n"), ("nonce", "m")]),
            Err(DigestError::DuplicateParam("nonce"))
        );
    }

    #[test]
    fn credentials_from_params_requires_core_fields() {
        let full = [
            ("username", "u"),
            ("realm", "r"),
            ("nonce", "n"),
            ("uri", "sip:r"),
            ("response", "00"),
            ("qop", "auth"),
            ("nc", "00000001"),
            ("cnonce", "c"),
            ("algorithm", "MD5"),
            ("opaque", "o"),
            ("foo", "bar"),
        ];
        let c = Credentials::from_params(full).unwrap();
        assert_eq!(
            (c.username, c.uri, c.nc, c.cnonce),
            ("u", "sip:r", Some("00000001"), Some("c"))
        );
        for (i, name) in ["username", "realm", "nonce", "uri", "response"]
            .iter()
            .enumerate()
        {
            let partial = full
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| *p);
            assert_eq!(
                Credentials::from_params(partial),
                Err(DigestError::MissingParam(name))
            );
        }
        let dup = full.iter().copied().chain([("NC", "00000002")]);
        assert_eq!(
            Credentials::from_params(dup),
            Err(DigestError::DuplicateParam("nc"))
        );
    }

    #[test]
    fn unknown_algorithm_and_auth_int_only_are_specific_errors() {
        let mut ch = Challenge {
            realm: "r",
            nonce: "n",
            algorithm: Some("SHA-1"),
            ..Challenge::default()
        };
        let mut out = String::new();
        let acct = account("p");
        assert_eq!(
            write_authorization(&ch, &acct, "REGISTER", URI, "c", 1, &mut out),
            Err(DigestError::UnknownAlgorithm)
        );
        ch.algorithm = None;
        ch.qop = Some("auth-int");
        assert_eq!(
            write_authorization(&ch, &acct, "REGISTER", URI, "c", 1, &mut out),
            Err(DigestError::AuthIntOnly)
        );
        ch.qop = Some("x-token");
        assert_eq!(ch.qop_mode(), Err(DigestError::UnsupportedQop));
        ch.qop = None;
        ch.algorithm = Some("MD5-sess");
        assert_eq!(ch.usable(), Err(DigestError::SessRequiresQop));
        assert!(out.is_empty());
    }

    // --- Client --------------------------------------------------------------------------------

    #[test]
    fn pick_prefers_sha256_and_skips_unusable() {
        let base = Challenge {
            realm: "r",
            nonce: "n",
            qop: Some("auth"),
            ..Challenge::default()
        };
        let md5 = Challenge {
            algorithm: Some("MD5"),
            ..base
        };
        let sha = Challenge {
            algorithm: Some("SHA-256"),
            ..base
        };
        let weird = Challenge {
            algorithm: Some("SHA3-512"),
            ..base
        };
        let int_only = Challenge {
            algorithm: Some("SHA-512-256"),
            qop: Some("auth-int"),
            ..base
        };
        let list = [md5, weird, int_only, sha];
        assert_eq!(pick(&list).and_then(|c| c.algorithm), Some("SHA-256"));
        assert_eq!(pick(&[md5, weird]).and_then(|c| c.algorithm), Some("MD5"));
        assert!(pick(&[weird, int_only]).is_none());
        assert!(pick(&[]).is_none());
        // qop=auth beats legacy for the same hash; first wins a tie.
        let legacy = Challenge { qop: None, ..md5 };
        assert_eq!(pick(&[legacy, md5]).map(|c| c.qop), Some(Some("auth")));
        let md5b = Challenge { nonce: "m", ..md5 };
        assert_eq!(pick(&[md5, md5b]).map(|c| c.nonce), Some("n"));
    }

    #[test]
    fn nonce_count_increments_with_same_nonce_and_resets_on_new_nonce() {
        let mut client = DigestClient::new([1; 32]);
        let acct = account("p");
        let mut ch = Challenge {
            realm: "r",
            nonce: "n1",
            qop: Some("auth"),
            ..Challenge::default()
        };
        let nc_and_cnonce = |client: &mut DigestClient, ch: &Challenge<'_>| {
            let mut out = String::new();
            client
                .authorize(ch, &acct, "REGISTER", URI, &mut out)
                .unwrap();
            let p = params(&out);
            (
                get(&p, "nc").unwrap().to_owned(),
                get(&p, "cnonce").unwrap().to_owned(),
            )
        };
        let (nc1, c1) = nc_and_cnonce(&mut client, &ch);
        let (nc2, c2) = nc_and_cnonce(&mut client, &ch);
        assert_eq!((nc1.as_str(), nc2.as_str()), ("00000001", "00000002"));
        assert_eq!(c1, c2, "one cnonce per nonce");
        let mut out = String::new();
        client
            .reauthorize(&acct, "REGISTER", URI, &mut out)
            .unwrap();
        assert_eq!(get(&params(&out), "nc"), Some("00000003"));
        assert_eq!(client.nonce_count(), 3);
        ch.nonce = "n2";
        let (nc3, c3) = nc_and_cnonce(&mut client, &ch);
        assert_eq!(nc3, "00000001");
        assert_ne!(c3, c1);
        assert_eq!(client.nonce(), Some("n2"));
        assert_eq!(c1.len(), 32);
    }

    #[test]
    fn reauthorize_without_challenge_is_an_error() {
        let mut client = DigestClient::new([1; 32]);
        let mut out = String::new();
        assert_eq!(
            client.reauthorize(&account("p"), "REGISTER", URI, &mut out),
            Err(DigestError::NoChallenge)
        );
    }

    #[test]
    fn client_retries_on_stale_but_not_on_rejected_credentials() {
        let mut client = DigestClient::new([1; 32]);
        let acct = account("p");
        let ch1 = Challenge {
            realm: "r",
            nonce: "n1",
            qop: Some("auth"),
            ..Challenge::default()
        };
        // First 401: always answer.
        assert!(client.should_retry(&ch1, 0));
        let mut out = String::new();
        client
            .authorize(&ch1, &acct, "REGISTER", URI, &mut out)
            .unwrap();
        // Re-challenged with the very nonce we answered: wrong credentials.
        assert!(!client.should_retry(&ch1, 1));
        // New nonce, not stale, after a fresh (nc=1) answer: wrong credentials.
        let ch2 = Challenge { nonce: "n2", ..ch1 };
        assert!(!client.should_retry(&ch2, 1));
        // New nonce with stale=true: credentials were right, retry.
        let ch2_stale = Challenge { stale: true, ..ch2 };
        assert!(client.should_retry(&ch2_stale, 1));
        // Stale with the same nonce is a broken server: stop.
        let ch1_stale = Challenge { stale: true, ..ch1 };
        assert!(!client.should_retry(&ch1_stale, 1));
        // Reused nonce (refresh, nc=2) rejected with a new nonce: server forgot it, retry.
        client
            .reauthorize(&acct, "REGISTER", URI, &mut out)
            .unwrap();
        assert!(client.should_retry(&ch2, 1));
        // Bounded.
        assert!(!client.should_retry(&ch2_stale, MAX_AUTH_ATTEMPTS));
    }

    #[test]
    fn rendering_escapes_quotes_and_backslashes() {
        let ch = Challenge {
            realm: r#"a "quoted" \realm"#,
            nonce: "n",
            opaque: Some(r#"o"\"#),
            qop: Some("auth"),
            ..Challenge::default()
        };
        let acct = Account {
            username: r#"bob"x"#,
            secret: Secret::Password("p"),
        };
        let mut out = String::new();
        write_authorization(&ch, &acct, "REGISTER", URI, "c", 1, &mut out).unwrap();
        assert!(out.starts_with(r#"Digest username="bob\"x", realm="a \"quoted\" \\realm""#));
        assert!(out.ends_with(r#", opaque="o\"\\""#));
        let p = params(&out);
        assert_eq!(get(&p, "realm"), Some(ch.realm));
        assert_eq!(get(&p, "username"), Some(acct.username));

        let mut chal = String::new();
        let nonce = NonceVerifier::new(KEY, Instant::now(), VerifierConfig::default())
            .issue(ch.realm, Instant::now());
        write_challenge(&mut chal, ch.realm, &nonce, Algorithm::Sha256, true).unwrap();
        assert!(chal.starts_with(r#"Digest realm="a \"quoted\" \\realm", nonce=""#));
        assert!(chal.ends_with(r#"algorithm=SHA-256, qop="auth", stale=true"#));
    }

    #[test]
    fn control_characters_never_reach_a_header() {
        let ch = Challenge {
            realm: "r\r\nVia: evil",
            nonce: "n",
            ..Challenge::default()
        };
        let mut out = String::new();
        assert_eq!(
            write_authorization(&ch, &account("p"), "REGISTER", URI, "c", 1, &mut out),
            Err(DigestError::InvalidChar("realm"))
        );
        let nonce = Nonce(Hex::encode(&[0; 32]));
        assert_eq!(
            write_challenge(&mut out, "a\nb", &nonce, Algorithm::Md5, false),
            Err(DigestError::InvalidChar("realm"))
        );
        assert!(out.is_empty());
    }

    // --- Server --------------------------------------------------------------------------------

    #[test]
    fn round_trip_sha256_and_md5_verify_ok() {
        for alg in [
            Algorithm::Sha256,
            Algorithm::Md5,
            Algorithm::Sha256Sess,
            Algorithm::Sha512_256,
        ] {
            let mut rig = Rig::new(VerifierConfig {
                algorithms: vec![alg],
                ..VerifierConfig::default()
            });
            let ch = rig.challenge(0);
            assert_eq!(get(&ch, "algorithm"), Some(alg.as_str()));
            let auth = rig.answer(&ch, "secret");
            assert_eq!(rig.verify(&auth, 1), Verdict::Ok, "{alg}");
            assert_eq!(Verdict::Ok.reply().status(false), None);
        }
    }

    #[test]
    fn server_offers_every_configured_algorithm_and_client_picks_sha256() {
        let mut rig = Rig::new(VerifierConfig::default());
        let mut values = Vec::new();
        let now = rig.at(0);
        rig.server
            .challenge(REALM, false, now, &mut values)
            .unwrap();
        assert_eq!(values.len(), 2);
        let parsed: Vec<_> = values.iter().map(|v| params(v)).collect();
        let chs: Vec<Challenge<'_>> = parsed
            .iter()
            .map(|p| Challenge::from_params(pairs(p)).unwrap())
            .collect();
        let chosen = pick(&chs).unwrap();
        assert_eq!(chosen.algorithm, Some("SHA-256"));
        let mut out = String::new();
        rig.client
            .authorize(chosen, &account("secret"), "REGISTER", URI, &mut out)
            .unwrap();
        assert_eq!(rig.verify(&params(&out), 1), Verdict::Ok);
    }

    #[test]
    fn wrong_password_is_bad_response_and_forbidden() {
        let mut rig = Rig::new(VerifierConfig::default());
        let ch = rig.challenge(0);
        let auth = rig.answer(&ch, "guess");
        let v = rig.verify(&auth, 1);
        assert_eq!(v, Verdict::BadResponse);
        assert_eq!(v.reply(), Reply::Forbidden);
        assert_eq!(v.reply().status(false), Some(403));
        // A failed attempt does not consume the nonce-count.
        let mut rig2 = Rig::new(VerifierConfig::default());
        let ch = rig2.challenge(0);
        let bad = rig2.answer(&ch, "guess");
        assert_eq!(rig2.verify(&bad, 1), Verdict::BadResponse);
        let good = rig2.reanswer("secret");
        assert_eq!(rig2.verify(&good, 1), Verdict::Ok);
    }

    #[test]
    fn unknown_user_is_answered_like_bad_response() {
        let mut rig = Rig::new(VerifierConfig::default());
        let ch = rig.challenge(0);
        let mut auth = rig.answer(&ch, "secret");
        for (n, v) in auth.iter_mut() {
            if n == "username" {
                *v = "mallory".into();
            }
        }
        let v = rig.verify(&auth, 1);
        assert_eq!(v, Verdict::UnknownUser);
        assert_eq!(v.reply(), Verdict::BadResponse.reply());
    }

    #[test]
    fn same_nonce_count_replayed_is_rejected() {
        let mut rig = Rig::new(VerifierConfig::default());
        let ch = rig.challenge(0);
        let auth = rig.answer(&ch, "secret");
        assert_eq!(rig.verify(&auth, 1), Verdict::Ok);
        let v = rig.verify(&auth, 2);
        assert_eq!(v, Verdict::Replay);
        assert_eq!(v.reply(), Reply::Challenge { stale: true });
    }

    #[test]
    fn increasing_nonce_counts_are_accepted_and_lower_ones_rejected() {
        let mut rig = Rig::new(VerifierConfig::default());
        let ch = rig.challenge(0);
        let a1 = rig.answer(&ch, "secret");
        let a2 = rig.reanswer("secret");
        let a3 = rig.answer(&ch, "secret"); // same nonce through authorize: nc=3
        assert_eq!(get(&a3, "nc"), Some("00000003"));
        assert_eq!(rig.verify(&a1, 1), Verdict::Ok);
        assert_eq!(rig.verify(&a3, 2), Verdict::Ok);
        assert_eq!(
            rig.verify(&a2, 3),
            Verdict::Replay,
            "lower nc after a higher one"
        );
        let a4 = rig.reanswer("secret");
        assert_eq!(rig.verify(&a4, 4), Verdict::Ok);
        assert_eq!(rig.server.tracked(), 1);
    }

    #[test]
    fn expired_nonce_is_stale_only_with_the_right_password() {
        let mut rig = Rig::new(VerifierConfig {
            lifetime: Duration::from_secs(60),
            ..VerifierConfig::default()
        });
        let ch = rig.challenge(0);
        let auth = rig.answer(&ch, "secret");
        let v = rig.verify(&auth, 61);
        assert_eq!(v, Verdict::Stale);
        assert_eq!(v.reply(), Reply::Challenge { stale: true });
        assert_eq!(v.reply().status(true), Some(407));
        let mut rig = Rig::new(VerifierConfig {
            lifetime: Duration::from_secs(60),
            ..VerifierConfig::default()
        });
        let ch = rig.challenge(0);
        let bad = rig.answer(&ch, "guess");
        assert_eq!(rig.verify(&bad, 61), Verdict::BadResponse);
        // Within the lifetime it still works.
        let ok = rig.answer(&ch, "secret");
        assert_eq!(rig.verify(&ok, 60), Verdict::Ok);
    }

    #[test]
    fn stale_round_trip_client_retries_and_succeeds() {
        let mut rig = Rig::new(VerifierConfig {
            lifetime: Duration::from_secs(60),
            ..VerifierConfig::default()
        });
        let ch = rig.challenge(0);
        let auth = rig.answer(&ch, "secret");
        assert_eq!(rig.verify(&auth, 1), Verdict::Ok);
        // Refresh an hour later with the cached nonce.
        let refresh = rig.reanswer("secret");
        assert_eq!(rig.verify(&refresh, 3600), Verdict::Stale);
        let mut values = Vec::new();
        let now = rig.at(3600);
        rig.server.challenge(REALM, true, now, &mut values).unwrap();
        let p = params(&values[0]);
        let ch2 = Challenge::from_params(pairs(&p)).unwrap();
        assert!(ch2.stale);
        assert!(rig.client.should_retry(&ch2, 1));
        let again = rig.answer(&p, "secret");
        assert_eq!(get(&again, "nc"), Some("00000001"));
        assert_eq!(rig.verify(&again, 3601), Verdict::Ok);
    }

    #[test]
    fn tampered_nonce_is_forged() {
        let mut rig = Rig::new(VerifierConfig::default());
        let ch = rig.challenge(0);
        let nonce = get(&ch, "nonce").unwrap().to_owned();
        // Move the issue time forward by one ms, keep the MAC.
        let mut bytes = nonce.into_bytes();
        bytes[15] = if bytes[15] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(bytes).unwrap();
        let ch_t: Vec<_> = ch
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    if n == "nonce" {
                        tampered.clone()
                    } else {
                        v.clone()
                    },
                )
            })
            .collect();
        let auth = rig.answer(&ch_t, "secret");
        let v = rig.verify(&auth, 1);
        assert_eq!(v, Verdict::Forged);
        assert_eq!(v.reply(), Reply::Challenge { stale: false });
        for junk in ["", "zz", "ÿ", &"0".repeat(64), &"A".repeat(64)] {
            let ch_j: Vec<_> = ch
                .iter()
                .map(|(n, v)| {
                    (
                        n.clone(),
                        if n == "nonce" {
                            junk.to_owned()
                        } else {
                            v.clone()
                        },
                    )
                })
                .collect();
            let auth = rig.answer(&ch_j, "secret");
            assert_eq!(rig.verify(&auth, 1), Verdict::Forged, "{junk:?}");
        }
    }

    #[test]
    fn nonce_from_another_key_or_realm_is_forged() {
        let base = Instant::now();
        let mut other = NonceVerifier::new([8; 32], base, VerifierConfig::default());
        let mut rig = Rig::new(VerifierConfig::default());
        rig.server.issue(REALM, base); // make counter 0 "issued" here too
        let foreign = other.issue(REALM, base);
        let other_realm = rig.server.issue("other.example", base);
        for nonce in [foreign, other_realm] {
            let ch = vec![
                ("realm".to_owned(), REALM.to_owned()),
                ("nonce".to_owned(), nonce.as_str().to_owned()),
                ("qop".to_owned(), "auth".to_owned()),
                ("algorithm".to_owned(), "SHA-256".to_owned()),
            ];
            let auth = rig.answer(&ch, "secret");
            assert_eq!(rig.verify(&auth, 0), Verdict::Forged);
        }
    }

    #[test]
    fn credentials_for_another_realm_are_wrong_realm() {
        let mut rig = Rig::new(VerifierConfig::default());
        let ch = rig.challenge(0);
        let mut auth = rig.answer(&ch, "secret");
        for (n, v) in auth.iter_mut() {
            if n == "realm" {
                *v = "elsewhere".into();
            }
        }
        assert_eq!(rig.verify(&auth, 1), Verdict::WrongRealm);
    }

    #[test]
    fn legacy_client_gets_each_nonce_once() {
        let mut rig = Rig::new(VerifierConfig {
            algorithms: vec![Algorithm::Md5],
            ..VerifierConfig::default()
        });
        let mut ch = rig.challenge(0);
        ch.retain(|(n, _)| n != "qop"); // an RFC 2069 client ignores qop
        let auth = rig.answer(&ch, "secret");
        assert_eq!(get(&auth, "nc"), None);
        assert_eq!(rig.verify(&auth, 1), Verdict::Ok);
        assert_eq!(rig.verify(&auth, 2), Verdict::Replay);
        let mut strict = Rig::new(VerifierConfig {
            algorithms: vec![Algorithm::Md5],
            allow_legacy: false,
            ..VerifierConfig::default()
        });
        let mut ch = strict.challenge(0);
        ch.retain(|(n, _)| n != "qop");
        let auth = strict.answer(&ch, "secret");
        assert_eq!(
            strict.verify(&auth, 1),
            Verdict::Malformed(DigestError::QopRequired)
        );
    }

    #[test]
    fn algorithm_not_offered_is_refused() {
        let mut rig = Rig::new(VerifierConfig {
            algorithms: vec![Algorithm::Sha256],
            ..VerifierConfig::default()
        });
        let mut ch = rig.challenge(0);
        for (n, v) in ch.iter_mut() {
            if n == "algorithm" {
                *v = "MD5".into(); // downgrade attempt
            }
        }
        let auth = rig.answer(&ch, "secret");
        assert_eq!(
            rig.verify(&auth, 1),
            Verdict::Malformed(DigestError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn malformed_credentials_are_reported_specifically() {
        let mut rig = Rig::new(VerifierConfig::default());
        let ch = rig.challenge(0);
        let auth = rig.answer(&ch, "secret");
        let with = |name: &str, value: Option<&str>| -> Vec<(String, String)> {
            let mut a: Vec<_> = auth.iter().filter(|(n, _)| n != name).cloned().collect();
            if let Some(v) = value {
                a.push((name.to_owned(), v.to_owned()));
            }
            a
        };
        let cases = [
            (with("nc", None), DigestError::MissingParam("nc")),
            (with("nc", Some("00000000")), DigestError::BadNonceCount),
            (with("nc", Some("1")), DigestError::BadNonceCount),
            (with("nc", Some("0000000g")), DigestError::BadNonceCount),
            (with("cnonce", None), DigestError::MissingParam("cnonce")),
            (with("qop", Some("auth-int")), DigestError::AuthIntOnly),
            (with("qop", Some("bogus")), DigestError::UnsupportedQop),
            (
                with("algorithm", Some("SHA-1")),
                DigestError::UnknownAlgorithm,
            ),
            (
                with("response", Some("abc")),
                DigestError::BadResponseFormat,
            ),
            (
                with("response", Some(&"x".repeat(64))),
                DigestError::BadResponseFormat,
            ),
        ];
        for (a, e) in cases {
            assert_eq!(rig.verify(&a, 1), Verdict::Malformed(e), "{e}");
            assert_eq!(
                Verdict::Malformed(e).reply(),
                Reply::Challenge { stale: false }
            );
        }
        // Uppercase hex in the response is the same digest.
        let upper = with(
            "response",
            Some(&get(&auth, "response").unwrap().to_ascii_uppercase()),
        );
        assert_eq!(rig.verify(&upper, 1), Verdict::Ok);
    }

    #[test]
    fn evicted_nonce_becomes_stale_never_replayable() {
        let mut rig = Rig::new(VerifierConfig {
            max_tracked: 2,
            ..VerifierConfig::default()
        });
        let mut clients: Vec<DigestClient> = (0..3).map(|i| DigestClient::new([i; 32])).collect();
        let mut first = Vec::new();
        for (i, client) in clients.iter_mut().enumerate() {
            std::mem::swap(&mut rig.client, client);
            let ch = rig.challenge(i as u64);
            let a = rig.answer(&ch, "secret");
            assert_eq!(rig.verify(&a, i as u64), Verdict::Ok);
            first.push(a);
            std::mem::swap(&mut rig.client, client);
        }
        assert_eq!(rig.server.tracked(), 2);
        // The first nonce was evicted: its old request is not replayable, and even a fresh
        // nc on it only earns a stale re-challenge.
        assert_eq!(rig.verify(&first[0], 5), Verdict::Stale);
        std::mem::swap(&mut rig.client, &mut clients[0]);
        let next = rig.reanswer("secret");
        assert_eq!(rig.verify(&next, 5), Verdict::Stale);
        std::mem::swap(&mut rig.client, &mut clients[0]);
        // The tracked ones still follow nc rules.
        assert_eq!(rig.verify(&first[2], 5), Verdict::Replay);
    }

    #[test]
    fn expired_entries_are_purged_from_the_replay_table() {
        let mut rig = Rig::new(VerifierConfig {
            lifetime: Duration::from_secs(10),
            ..VerifierConfig::default()
        });
        for t in [0, 1, 2] {
            let ch = rig.challenge(t);
            let a = rig.answer(&ch, "secret");
            assert_eq!(rig.verify(&a, t), Verdict::Ok);
        }
        assert_eq!(rig.server.tracked(), 3);
        let ch = rig.challenge(100);
        let a = rig.answer(&ch, "secret");
        assert_eq!(rig.verify(&a, 100), Verdict::Ok);
        assert_eq!(rig.server.tracked(), 1);
    }

    #[test]
    fn nonce_never_issued_by_this_instance_is_forged() {
        // Same key, same realm, but this verifier never reached counter 0.
        let base = Instant::now();
        let mut old = NonceVerifier::new(KEY, base, VerifierConfig::default());
        let n = old.issue(REALM, base);
        let mut rig = Rig::new(VerifierConfig::default());
        let ch = vec![
            ("realm".to_owned(), REALM.to_owned()),
            ("nonce".to_owned(), n.as_str().to_owned()),
            ("qop".to_owned(), "auth".to_owned()),
        ];
        let a = rig.answer(&ch, "secret");
        assert_eq!(rig.verify(&a, 0), Verdict::Forged);
    }

    #[test]
    fn errors_display_something_specific() {
        let all = [
            DigestError::MissingParam("realm"),
            DigestError::DuplicateParam("nonce"),
            DigestError::UnknownAlgorithm,
            DigestError::AuthIntOnly,
            DigestError::UnsupportedQop,
            DigestError::QopRequired,
            DigestError::SessRequiresQop,
            DigestError::BadNonceCount,
            DigestError::NonceCountExhausted,
            DigestError::BadResponseFormat,
            DigestError::BadHa1,
            DigestError::AlgorithmNotAllowed,
            DigestError::InvalidChar("uri"),
            DigestError::NoChallenge,
        ];
        let texts: Vec<String> = all.iter().map(|e| e.to_string()).collect();
        for (i, t) in texts.iter().enumerate() {
            assert!(t.starts_with("digest: "));
            assert!(!texts[..i].contains(t), "{t}");
        }
        assert!(texts[0].contains("realm"));
    }

    #[test]
    fn secrets_are_not_printed_by_debug() {
        let s = format!(
            "{:?} {:?} {:?}",
            account("hunter2"),
            Ha1::from_password(Algorithm::Md5, "a", "r", "p"),
            NonceVerifier::new(KEY, Instant::now(), VerifierConfig::default())
        );
        assert!(!s.contains("hunter2"));
        assert!(!s.contains(&Ha1::from_password(Algorithm::Md5, "a", "r", "p").as_str()[..8]));
        assert!(!s.contains("7, 7, 7"));
    }

    /// xorshift64*: deterministic junk.
    struct Junk(u64);

    impl Junk {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn pick<'s>(&mut self, from: &[&'s str]) -> &'s str {
            from[(self.next() % from.len() as u64) as usize]
        }
    }

    #[test]
    fn junk_params_never_panic() {
        let names = [
            "realm",
            "nonce",
            "opaque",
            "algorithm",
            "qop",
            "stale",
            "domain",
            "username",
            "uri",
            "response",
            "cnonce",
            "nc",
            "REALM",
            "x",
            "",
        ];
        let mut rig = Rig::new(VerifierConfig {
            max_tracked: 4,
            ..VerifierConfig::default()
        });
        let real = rig.server.issue(REALM, rig.at(0));
        let real = real.as_str().to_owned();
        let ha1_md5 = Ha1::from_password(Algorithm::Md5, "alice", REALM, "secret");
        let values = [
            "",
            " ",
            "\"",
            "\\",
            "\r\n",
            "é",
            "ÿÿÿÿ",
            "auth",
            "auth-int",
            ",,,",
            "auth,",
            "MD5",
            "md5-sess",
            "SHA-256",
            "SHA-256-sess",
            "SHA-512-256",
            "sha-1",
            "true",
            "00000001",
            "ffffffff",
            "00000000",
            "0000000",
            "alice",
            REALM,
            URI,
            &real,
            &real[..63],
            ha1_md5.as_str(),
            "0123456789abcdef0123456789abcdef",
            &"f".repeat(64),
            &"€".repeat(20),
        ];
        let mut junk = Junk(0x1234_5678_9abc_def1);
        let mut ok = 0;
        for round in 0..20_000u64 {
            let n = (junk.next() % 14) as usize;
            let ps: Vec<(&str, &str)> = (0..n)
                .map(|_| (junk.pick(&names), junk.pick(&values)))
                .collect();
            let mut out = String::new();
            if let Ok(ch) = Challenge::from_params(ps.iter().copied()) {
                let _ = ch.usable();
                let _ = pick(&[ch, ch]);
                let secret = if round % 2 == 0 {
                    Secret::Password(junk.pick(&values))
                } else {
                    Secret::Ha1(junk.pick(&values))
                };
                let acct = Account {
                    username: junk.pick(&values),
                    secret,
                };
                let uri = junk.pick(&values);
                let _ = write_authorization(
                    &ch,
                    &acct,
                    "REGISTER",
                    uri,
                    junk.pick(&values),
                    0,
                    &mut out,
                );
                let _ = rig.client.authorize(&ch, &acct, "INVITE", uri, &mut out);
                let _ = rig.client.reauthorize(&acct, "INVITE", uri, &mut out);
                let _ = rig.client.should_retry(&ch, (junk.next() % 4) as u32);
            }
            if let Ok(creds) = Credentials::from_params(ps.iter().copied()) {
                let now = rig.at(junk.next() % 1000);
                let v = rig.server.verify(&creds, "REGISTER", REALM, now, |_, alg| {
                    Some(Ha1::from_password(alg, "alice", REALM, "secret"))
                });
                let _ = v.reply().status(round % 3 == 0);
                ok += usize::from(v == Verdict::Ok);
                // A lookup returning an HA1 of the wrong hash must not panic either.
                let _ = rig
                    .server
                    .verify(&creds, "REGISTER", REALM, now, |_, _| Some(ha1_md5));
            }
        }
        assert!(rig.server.tracked() <= 4);
        assert_eq!(ok, 0, "junk never authenticates");
    }
}
