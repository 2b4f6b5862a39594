//! Authentication headers: `WWW-Authenticate`, `Proxy-Authenticate`,
//! `Authorization`, `Proxy-Authorization` (RFC 3261 §20.7, §20.27, §20.28,
//! §20.44; digest parameters of RFC 7616 / RFC 8760).

use crate::lex::{self, eq_ic, CommaSplit};
use crate::{Error, Result};
use memchr::memchr;

/// A challenge or credentials: the scheme and its comma-separated
/// `name=value` parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Auth<'a> {
    /// The scheme, normally `Digest` (compare case-insensitively).
    pub scheme: &'a str,
    params: &'a [u8],
}

/// One `name=value` of an auth header. `value` is without the quotes, with
/// quoted-pairs still escaped ([`crate::unquote`] resolves them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthParam<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
    pub quoted: bool,
}

impl<'a> Auth<'a> {
    /// Parses one auth header value and checks its parameter list.
    ///
    /// ```
    /// use sipis_parser::Auth;
    /// let a = Auth::parse(br#"Digest realm="atlanta.example.com", qop="auth", nonce="ea9c8e88df84f1cec4341ae6cbe5a359", algorithm=SHA-256, stale=FALSE"#).unwrap();
    /// assert!(a.is_digest());
    /// assert_eq!(a.param("realm"), Some(&b"atlanta.example.com"[..]));
    /// assert_eq!(a.param("ALGORITHM"), Some(&b"SHA-256"[..]));
    /// ```
    pub fn parse(s: &'a [u8]) -> Result<Auth<'a>> {
        let s = lex::trim(s);
        let end = lex::token_end(s, 0);
        let scheme = lex::token_str(&s[..end])?;
        let params = &s[end..];
        if !params.is_empty() && !lex::is_lws(params[0]) {
            return Err(Error::HeaderValue);
        }
        let a = Auth { scheme, params };
        for p in a.params() {
            p?;
        }
        Ok(a)
    }

    /// Whether the scheme is `Digest`.
    pub fn is_digest(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("Digest")
    }

    /// The parameters in order.
    pub fn params(&self) -> impl Iterator<Item = Result<AuthParam<'a>>> + 'a {
        CommaSplit::new(self.params).map(|r| r.and_then(parse_auth_param))
    }

    /// A parameter's value by name (case-insensitive).
    pub fn param(&self, name: &str) -> Option<&'a [u8]> {
        self.params()
            .map_while(|r| r.ok())
            .find(|p| eq_ic(p.name.as_bytes(), name.as_bytes()))
            .map(|p| p.value)
    }
}

fn parse_auth_param(s: &[u8]) -> Result<AuthParam<'_>> {
    let eq = memchr(b'=', s).ok_or(Error::HeaderValue)?;
    let name = lex::token_str(lex::trim(&s[..eq]))?;
    let v = lex::trim(&s[eq + 1..]);
    if v.first() == Some(&b'"') {
        let end = lex::quoted_end(v, 0)?;
        if end != v.len() {
            return Err(Error::HeaderValue);
        }
        return Ok(AuthParam {
            name,
            value: &v[1..end - 1],
            quoted: true,
        });
    }
    if v.is_empty() || v.iter().any(|&b| lex::is_lws(b) || b == b'"') {
        return Err(Error::HeaderValue);
    }
    Ok(AuthParam {
        name,
        value: v,
        quoted: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_with_all_digest_params() {
        let a = Auth::parse(br#"Digest username="bob", realm="biloxi.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="sip:bob@biloxi.com", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41""#).unwrap();
        let names: Vec<_> = a.params().map(|p| p.unwrap().name).collect();
        assert_eq!(
            names,
            ["username", "realm", "nonce", "uri", "qop", "nc", "cnonce", "response", "opaque"]
        );
        assert_eq!(a.param("nc"), Some(&b"00000001"[..]));
        assert_eq!(a.param("uri"), Some(&b"sip:bob@biloxi.com"[..]));
    }

    #[test]
    fn broken_auth_params_are_rejected() {
        assert!(Auth::parse(br#"Digest realm="x"#).is_err());
        assert!(Auth::parse(b"Digest realm").is_err());
        assert!(Auth::parse(br#"Digest realm="a" b"#).is_err());
        assert!(Auth::parse(b"Digestrealm=x").is_err());
    }
}
