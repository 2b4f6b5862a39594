//! SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966), parsed in place.

use crate::lex::{self, eq_ic};
use crate::{Error, Params, Result};
use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A URI scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme<'a> {
    Sip,
    Sips,
    Tel,
    /// Any other scheme (its content is opaque to sipis but may be relayed).
    Other(&'a str),
}

impl Scheme<'_> {
    /// The scheme as written by sipis.
    pub fn as_str(&self) -> &str {
        match self {
            Scheme::Sip => "sip",
            Scheme::Sips => "sips",
            Scheme::Tel => "tel",
            Scheme::Other(s) => s,
        }
    }
}

/// Byte classes of one pass over a URI: 0 plain, 1 never allowed unescaped
/// (controls, space, `<>"`, DEL), 2 `@`, 3 `%`.
static URI_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = if c <= b' ' || c == b'<' || c == b'>' || c == b'"' || c == 0x7f {
            1
        } else if c == b'@' {
            2
        } else if c == b'%' {
            3
        } else {
            0
        };
        i += 1;
    }
    t
};

/// One pass over the part after the scheme: rejects bytes that need
/// escaping, finds the first `@` and whether any `%` escapes need checking.
#[inline]
fn scan(rest: &[u8]) -> Result<(Option<usize>, bool)> {
    let mut at = None;
    let mut pct = false;
    for (i, &b) in rest.iter().enumerate() {
        match URI_CLASS[b as usize] {
            0 => {}
            1 => return Err(Error::Uri),
            2 => {
                if at.is_none() {
                    at = Some(i);
                }
            }
            _ => pct = true,
        }
    }
    Ok((at, pct))
}

/// Host name bytes: 0 = not allowed, 1 = letter, `-` or `_`, 2 = digit or `.`.
static HOST: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = if c.is_ascii_digit() || c == b'.' {
            2
        } else if c.is_ascii_alphabetic() || c == b'-' || c == b'_' {
            1
        } else {
            0
        };
        i += 1;
    }
    t
};

/// The host part of a SIP URI or Via sent-by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host<'a> {
    /// A host name (compare case-insensitively).
    Domain(&'a str),
    V4(Ipv4Addr),
    /// An IPv6 reference; written back in brackets.
    V6(Ipv6Addr),
    /// No host: tel and opaque URIs.
    Absent,
}

impl<'a> Host<'a> {
    /// Parses `hostname / IPv4address / IPv6reference` (RFC 3261 §25.1).
    pub fn parse(s: &'a [u8]) -> Result<Host<'a>> {
        if s.first() == Some(&b'[') {
            if s.last() != Some(&b']') {
                return Err(Error::Uri);
            }
            let inner = std::str::from_utf8(&s[1..s.len() - 1]).map_err(|_| Error::Uri)?;
            return inner.parse().map(Host::V6).map_err(|_| Error::Uri);
        }
        let mut all_digits_dots = true;
        for &b in s {
            match HOST[b as usize] {
                0 => return Err(Error::Uri),
                1 => all_digits_dots = false,
                _ => {}
            }
        }
        if s.is_empty() {
            return Err(Error::Uri);
        }
        if all_digits_dots {
            // Looks like an IPv4 address; must be one.
            return parse_ipv4(s).map(Host::V4).ok_or(Error::Uri);
        }
        // Checked ASCII above.
        let text = std::str::from_utf8(s).map_err(|_| Error::Uri)?;
        Ok(Host::Domain(text))
    }
}

impl std::fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
            Host::Absent => Ok(()),
        }
    }
}

/// A parsed URI. Slices borrow from the input; escapes are left as they
/// are (decode with [`Uri::user_decoded`] or [`crate::percent_decode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uri<'a> {
    pub scheme: Scheme<'a>,
    /// The user part (sip/sips), or the subscriber number (tel), or the
    /// whole opaque part of another scheme.
    pub user: Option<&'a [u8]>,
    pub password: Option<&'a [u8]>,
    pub host: Host<'a>,
    /// The host exactly as written (brackets included for IPv6).
    pub host_raw: &'a [u8],
    pub port: Option<u16>,
    /// The `;name=value` section, starting at its first `;`.
    pub params: Params<'a>,
    /// The `?h=v&...` section without the `?`.
    pub headers: &'a [u8],
    /// The whole URI as written.
    pub raw: &'a [u8],
}

impl<'a> Uri<'a> {
    /// Parses a URI that has no surrounding white space or angle brackets.
    ///
    /// ```
    /// use sipis_parser::{Uri, Scheme, Host};
    /// let u = Uri::parse(b"sip:tok3n@[2001:db8::5]:5070;transport=tcp;pn-prid=abc").unwrap();
    /// assert_eq!(u.scheme, Scheme::Sip);
    /// assert_eq!(u.user, Some(&b"tok3n"[..]));
    /// assert_eq!(u.host, Host::V6("2001:db8::5".parse().unwrap()));
    /// assert_eq!(u.port, Some(5070));
    /// assert_eq!(u.param("PN-PRID"), Some(&b"abc"[..]));
    /// ```
    pub fn parse(raw: &'a [u8]) -> Result<Uri<'a>> {
        let colon = find(raw, b':').ok_or(Error::Uri)?;
        let scheme_s = &raw[..colon];
        if scheme_s.is_empty()
            || !scheme_s[0].is_ascii_alphabetic()
            || !scheme_s
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return Err(Error::Uri);
        }
        let rest = &raw[colon + 1..];
        if rest.is_empty() {
            return Err(Error::Uri);
        }
        let (at, pct) = scan(rest)?;
        let scheme = if eq_ic(scheme_s, b"sip") {
            Scheme::Sip
        } else if eq_ic(scheme_s, b"sips") {
            Scheme::Sips
        } else if eq_ic(scheme_s, b"tel") {
            Scheme::Tel
        } else {
            // Validated as ASCII above.
            Scheme::Other(std::str::from_utf8(scheme_s).map_err(|_| Error::Uri)?)
        };
        match scheme {
            Scheme::Sip | Scheme::Sips => Self::parse_sip(raw, scheme, rest, at, pct),
            Scheme::Tel => {
                let semi = find(rest, b';').unwrap_or(rest.len());
                let number = &rest[..semi];
                if number.is_empty() {
                    return Err(Error::Uri);
                }
                Ok(Uri {
                    scheme,
                    user: Some(number),
                    password: None,
                    host: Host::Absent,
                    host_raw: b"",
                    port: None,
                    params: check_params(&rest[semi..])?,
                    headers: b"",
                    raw,
                })
            }
            Scheme::Other(_) => Ok(Uri {
                scheme,
                user: Some(rest),
                password: None,
                host: Host::Absent,
                host_raw: b"",
                port: None,
                params: Params::default(),
                headers: b"",
                raw,
            }),
        }
    }

    fn parse_sip(
        raw: &'a [u8],
        scheme: Scheme<'a>,
        rest: &'a [u8],
        at: Option<usize>,
        pct: bool,
    ) -> Result<Uri<'a>> {
        // userinfo ends at the first '@': '@' has no unescaped place in
        // hostport, uri-parameters or headers (RFC 3261 §25.1), while the
        // user may hold ';', '?' and '/' (`user-unreserved`, RFC 4475
        // §3.1.1.2), so params and headers are only split off after it.
        let (userinfo, hostpart) = match at {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => {
                let (u, p) = match find(ui, b':') {
                    Some(c) => (&ui[..c], Some(&ui[c + 1..])),
                    None => (ui, None),
                };
                if u.is_empty() {
                    return Err(Error::Uri);
                }
                (Some(u), p)
            }
        };
        // hostport ends at ';' (params) or '?' (headers).
        let hp_end = hostpart
            .iter()
            .position(|&b| b == b';' || b == b'?')
            .unwrap_or(hostpart.len());
        let hostport = &hostpart[..hp_end];
        let (host_raw, port) = split_host_port(hostport)?;
        let host = Host::parse(host_raw)?;
        let tail = &hostpart[hp_end..];
        let (params, headers) = match find(tail, b'?') {
            Some(q) => (&tail[..q], &tail[q + 1..]),
            None => (tail, &tail[tail.len()..]),
        };
        if pct {
            // RFC 3261 §19.1.2: every '%' starts a two-hex-digit escape.
            check_escapes(rest)?;
        }
        let params = Params::new(params);
        params.validate().map_err(|_| Error::Uri)?;
        Ok(Uri {
            scheme,
            user,
            password,
            host,
            host_raw,
            port,
            params,
            headers,
            raw,
        })
    }

    /// A URI parameter's value (`None` if absent or valueless).
    pub fn param(&self, name: &str) -> Option<&'a [u8]> {
        self.params.value(name)
    }

    /// The user part with `%HH` escapes decoded.
    pub fn user_decoded(&self) -> Option<Result<Cow<'a, [u8]>>> {
        self.user.map(lex::percent_decode)
    }

    /// The `transport` parameter, lower-case compared by the caller.
    pub fn transport(&self) -> Option<&'a [u8]> {
        self.param("transport")
    }

    /// The URI headers (`?name=value&...`) as pairs, still escaped.
    pub fn header_pairs(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        self.headers
            .split(|&b| b == b'&')
            .filter(|h| !h.is_empty())
            .map(|h| match find(h, b'=') {
                Some(e) => (&h[..e], &h[e + 1..]),
                None => (h, &h[h.len()..]),
            })
    }
}

/// A byte search for the short pieces of a URI, where `memchr`'s set-up
/// costs more than a plain loop.
#[inline]
fn find(s: &[u8], b: u8) -> Option<usize> {
    s.iter().position(|&c| c == b)
}

/// Dotted-quad IPv4 without leading-zero ambiguity checks beyond range.
fn parse_ipv4(s: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let (mut k, mut n, mut digits) = (0usize, 0u16, 0u8);
    for &b in s {
        if b == b'.' {
            if digits == 0 || k == 3 {
                return None;
            }
            octets[k] = u8::try_from(n).ok()?;
            (k, n, digits) = (k + 1, 0, 0);
        } else {
            // Only digits and dots reach here (Host::parse checked).
            digits += 1;
            if digits > 3 {
                return None;
            }
            n = n * 10 + u16::from(b - b'0');
        }
    }
    if digits == 0 || k != 3 {
        return None;
    }
    octets[3] = u8::try_from(n).ok()?;
    Some(Ipv4Addr::from(octets))
}

/// Splits `host[:port]`, where host may be an IPv6 reference.
pub(crate) fn split_host_port(hp: &[u8]) -> Result<(&[u8], Option<u16>)> {
    let (host, port) = if hp.first() == Some(&b'[') {
        let close = find(hp, b']').ok_or(Error::Uri)?;
        let after = &hp[close + 1..];
        match after.split_first() {
            None => (&hp[..=close], None),
            Some((b':', p)) => (&hp[..=close], Some(p)),
            Some(_) => return Err(Error::Uri),
        }
    } else {
        match find(hp, b':') {
            Some(c) => (&hp[..c], Some(&hp[c + 1..])),
            None => (hp, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(lex::parse_u32(p, 65535).map_err(|_| Error::Uri)? as u16),
    };
    Ok((host, port))
}

fn check_escapes(s: &[u8]) -> Result<()> {
    let mut i = 0;
    while let Some(p) = find(&s[i..], b'%') {
        let at = i + p;
        let hex = s.get(at + 1..at + 3).ok_or(Error::Uri)?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(Error::Uri);
        }
        i = at + 3;
    }
    Ok(())
}

fn check_params(s: &[u8]) -> Result<Params<'_>> {
    let p = Params::new(s);
    p.validate().map_err(|_| Error::Uri)?;
    check_escapes(s)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_with_password_params_and_headers() {
        let u = Uri::parse(
            b"sips:alice:secret@Example.COM:5061;transport=tls;lr?subject=hi&priority=urgent",
        )
        .unwrap();
        assert_eq!(u.scheme, Scheme::Sips);
        assert_eq!(u.user, Some(&b"alice"[..]));
        assert_eq!(u.password, Some(&b"secret"[..]));
        assert_eq!(u.host, Host::Domain("Example.COM"));
        assert_eq!(u.port, Some(5061));
        assert!(u.params.has("lr"));
        assert_eq!(u.transport(), Some(&b"tls"[..]));
        let hs: Vec<_> = u.header_pairs().collect();
        assert_eq!(
            hs,
            vec![
                (&b"subject"[..], &b"hi"[..]),
                (&b"priority"[..], &b"urgent"[..])
            ]
        );
    }

    #[test]
    fn escaped_user_is_decoded_on_request() {
        let u = Uri::parse(b"sip:sips%3Auser%40example.com@example.net").unwrap();
        assert_eq!(u.user, Some(&b"sips%3Auser%40example.com"[..]));
        assert_eq!(
            &*u.user_decoded().unwrap().unwrap(),
            b"sips:user@example.com"
        );
        assert_eq!(u.host, Host::Domain("example.net"));
        assert_eq!(Uri::parse(b"sip:a%4@b").map(|_| ()), Err(Error::Uri));
    }

    #[test]
    fn ipv4_and_ipv6_hosts() {
        assert_eq!(
            Uri::parse(b"sip:192.0.2.4").unwrap().host,
            Host::V4([192, 0, 2, 4].into())
        );
        assert!(Uri::parse(b"sip:192.0.2.444").is_err());
        let u = Uri::parse(b"sip:[::1]:5060").unwrap();
        assert_eq!(
            (u.host, u.port),
            (Host::V6(Ipv6Addr::LOCALHOST), Some(5060))
        );
        assert!(Uri::parse(b"sip:[::1").is_err());
        assert!(Uri::parse(b"sip:[::1]x").is_err());
        assert!(Uri::parse(b"sip:host:99999").is_err());
    }

    #[test]
    fn tel_and_opaque_schemes() {
        let t = Uri::parse(b"tel:+1-201-555-0123;phone-context=example.com").unwrap();
        assert_eq!(t.scheme, Scheme::Tel);
        assert_eq!(t.user, Some(&b"+1-201-555-0123"[..]));
        assert_eq!(t.param("phone-context"), Some(&b"example.com"[..]));
        let o = Uri::parse(b"nobodyKnowsThisScheme:totallyopaquecontent").unwrap();
        assert_eq!(o.scheme, Scheme::Other("nobodyKnowsThisScheme"));
    }

    #[test]
    fn junk_is_rejected() {
        for bad in [
            &b""[..],
            b"sip:",
            b":x",
            b"sip:a b@c",
            b"<sip:a@b>",
            b"sip:@host",
            b"1sip:x",
        ] {
            assert!(
                Uri::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
