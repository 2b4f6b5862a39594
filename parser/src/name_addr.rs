//! `name-addr / addr-spec` headers: From, To, Contact, Route, Record-Route
//! (RFC 3261 §20.10, §20.20, §20.39, §25.1).

use crate::lex::{self, eq_ic};
use crate::{Error, Params, Result, Uri};
use memchr::memchr;
use std::borrow::Cow;

/// `[display-name] <URI> *(;param)` or `URI *(;param)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// The display name as written: the inside of the quotes (quoted-pairs
    /// still escaped) or the unquoted token sequence.
    pub display: Option<&'a [u8]>,
    /// Whether the display name was a quoted string.
    pub display_quoted: bool,
    pub uri: Uri<'a>,
    /// Header parameters (after `>`, or after the URI of an addr-spec).
    pub params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    /// Parses one element (the caller has split comma lists).
    ///
    /// ```
    /// use sipis_parser::NameAddr;
    /// let f = NameAddr::parse(br#""Alice \"A\" Smith" <sip:alice@atlanta.example.com>;tag=1928301774"#).unwrap();
    /// assert_eq!(&*f.display_name().unwrap(), br#"Alice "A" Smith"#);
    /// assert_eq!(f.tag(), Some(&b"1928301774"[..]));
    /// assert_eq!(f.uri.user, Some(&b"alice"[..]));
    /// ```
    pub fn parse(s: &'a [u8]) -> Result<NameAddr<'a>> {
        let s = lex::trim(s);
        let mut i = 0;
        let mut display = None;
        let mut display_quoted = false;
        if s.first() == Some(&b'"') {
            let end = lex::quoted_end(s, 0)?;
            display = Some(&s[1..end - 1]);
            display_quoted = true;
            i = lex::skip_lws(s, end);
            if s.get(i) != Some(&b'<') {
                return Err(Error::HeaderValue);
            }
        }
        // Without a quoted display name, a '"' can only open a quoted
        // header-param value (URIs and tokens hold none), whose '<' and '>'
        // (`+sip.instance="<urn:...>"`) are not brackets: look before it.
        let unquoted = if display_quoted {
            s.len()
        } else {
            memchr(b'"', s).unwrap_or(s.len())
        };
        if let Some(lt) = memchr(b'<', &s[i..unquoted]).map(|p| p + i) {
            if !display_quoted {
                // Unquoted display name: tokens separated by LWS only.
                let d = lex::trim(&s[..lt]);
                if !d.iter().all(|&b| lex::is_token(b) || lex::is_lws(b)) {
                    return Err(Error::HeaderValue);
                }
                if !d.is_empty() {
                    display = Some(d);
                }
            }
            let gt = memchr(b'>', &s[lt..]).ok_or(Error::UnbalancedAngles)? + lt;
            let uri = Uri::parse(&s[lt + 1..gt])?;
            let params = Params::new(&s[gt + 1..]);
            check_params(params)?;
            return Ok(NameAddr {
                display,
                display_quoted,
                uri,
                params,
            });
        }
        if display_quoted {
            return Err(Error::UnbalancedAngles);
        }
        // addr-spec: the URI ends at the first ';' — any params after it
        // are header parameters (RFC 3261 §20). A URI holding ',', ';' or
        // '?' MUST be in angle brackets (§20), so a '?' here is an error,
        // not URI headers (RFC 4475 §3.1.2.13).
        if s[..unquoted].contains(&b'>') {
            return Err(Error::UnbalancedAngles);
        }
        let end = s
            .iter()
            .position(|&b| b == b';' || lex::is_lws(b))
            .unwrap_or(s.len());
        if s[..end].contains(&b'?') {
            return Err(Error::HeaderValue);
        }
        let uri = Uri::parse(&s[..end])?;
        let params = Params::new(&s[end..]);
        check_params(params)?;
        Ok(NameAddr {
            display: None,
            display_quoted: false,
            uri,
            params,
        })
    }

    /// The display name with quoted-pairs resolved.
    pub fn display_name(&self) -> Option<Cow<'a, [u8]>> {
        self.display.map(|d| {
            if self.display_quoted {
                lex::unquote(d)
            } else {
                Cow::Borrowed(d)
            }
        })
    }

    /// The `tag` parameter (RFC 3261 §19.3).
    pub fn tag(&self) -> Option<&'a [u8]> {
        self.params.value("tag")
    }
}

fn check_params(p: Params<'_>) -> Result<()> {
    let s = lex::trim(p.raw());
    if !s.is_empty() && s[0] != b';' {
        return Err(Error::HeaderValue);
    }
    p.validate()
}

/// One Contact element (RFC 3261 §20.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contact<'a> {
    /// `Contact: *` — remove all bindings (with `Expires: 0`).
    Star,
    Addr(NameAddr<'a>),
}

impl<'a> Contact<'a> {
    /// Parses one Contact element.
    ///
    /// ```
    /// use sipis_parser::Contact;
    /// let c = Contact::parse(b"<sip:u@198.51.100.7:5060;pn-provider=apns;pn-prid=00fc13adff78;pn-param=ABCD1234.com.example.app.voip>;expires=600").unwrap();
    /// let a = c.addr().unwrap();
    /// assert_eq!(c.expires(), Some(Ok(600)));
    /// assert_eq!(a.uri.param("pn-provider"), Some(&b"apns"[..]));
    /// ```
    pub fn parse(s: &'a [u8]) -> Result<Contact<'a>> {
        let t = lex::trim(s);
        if t == b"*" {
            return Ok(Contact::Star);
        }
        NameAddr::parse(t).map(Contact::Addr)
    }

    /// The address, `None` for `*`.
    pub fn addr(&self) -> Option<&NameAddr<'a>> {
        match self {
            Contact::Star => None,
            Contact::Addr(a) => Some(a),
        }
    }

    fn param(&self, name: &str) -> Option<&'a [u8]> {
        self.addr().and_then(|a| a.params.value(name))
    }

    /// The `expires` parameter in seconds.
    pub fn expires(&self) -> Option<Result<u32>> {
        self.param("expires").map(|v| lex::parse_u32(v, u32::MAX))
    }

    /// The `q` parameter in thousandths (`q=0.5` → 500), per RFC 3261
    /// §20.10 `qvalue`.
    pub fn q(&self) -> Option<Result<u16>> {
        self.param("q").map(parse_qvalue)
    }

    /// The `+sip.instance` parameter without its quotes and angle brackets
    /// (RFC 5626 §4.1), e.g. `urn:uuid:...`.
    pub fn instance(&self) -> Option<&'a [u8]> {
        let v = self.param("+sip.instance")?;
        Some(
            v.strip_prefix(b"<")
                .and_then(|v| v.strip_suffix(b">"))
                .unwrap_or(v),
        )
    }

    /// The `reg-id` parameter (RFC 5626 §4.2).
    pub fn reg_id(&self) -> Option<Result<u32>> {
        self.param("reg-id").map(|v| lex::parse_u32(v, u32::MAX))
    }

    /// RFC 8599 push parameters carried as URI parameters of the contact.
    pub fn push(&self) -> Option<PushParams<'a>> {
        let uri = &self.addr()?.uri;
        Some(PushParams {
            provider: uri.param("pn-provider")?,
            prid: uri.param("pn-prid"),
            param: uri.param("pn-param"),
            purr: uri.param("pn-purr"),
        })
    }
}

/// The RFC 8599 §4 `pn-*` parameters of a Contact URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushParams<'a> {
    /// `pn-provider`: `apns`, `fcm`, `webpush`, ...
    pub provider: &'a [u8],
    /// `pn-prid`: the device token.
    pub prid: Option<&'a [u8]>,
    /// `pn-param`: APNs `<TeamID>.<bundle>.voip` etc.
    pub param: Option<&'a [u8]>,
    /// `pn-purr`: the PN registration reference.
    pub purr: Option<&'a [u8]>,
}

/// Whether a URI parameter name is one of RFC 8599's `pn-*`, which sipis
/// strips from anything it forwards.
pub fn is_push_param(name: &[u8]) -> bool {
    name.len() > 3 && eq_ic(&name[..3], b"pn-")
}

fn parse_qvalue(v: &[u8]) -> Result<u16> {
    // qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
    let (int, frac) = match memchr(b'.', v) {
        Some(d) => (&v[..d], &v[d + 1..]),
        None => (v, &v[v.len()..]),
    };
    if int.len() != 1 || frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return Err(Error::HeaderValue);
    }
    let mut n: u16 = match int[0] {
        b'0' => 0,
        b'1' => 1000,
        _ => return Err(Error::HeaderValue),
    };
    let mut scale = 100;
    for &d in frac {
        n += u16::from(d - b'0') * scale;
        scale /= 10;
    }
    if n > 1000 {
        return Err(Error::NumberRange);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_spec_params_belong_to_the_header() {
        let a = NameAddr::parse(b"sip:bob@biloxi.example.com;tag=a6c85cf").unwrap();
        assert_eq!(a.tag(), Some(&b"a6c85cf"[..]));
        assert!(a.uri.params.is_empty());
        let b = NameAddr::parse(b"<sip:bob@biloxi.example.com;tag=uri>;tag=hdr").unwrap();
        assert_eq!(b.tag(), Some(&b"hdr"[..]));
        assert_eq!(b.uri.param("tag"), Some(&b"uri"[..]));
    }

    #[test]
    fn token_display_name_and_bad_ones() {
        let a = NameAddr::parse(b"Bob  Smith <sip:bob@b.example>").unwrap();
        assert_eq!(a.display, Some(&b"Bob  Smith"[..]));
        assert_eq!(
            NameAddr::parse(b"Bell, Alexander <sip:a.g.bell@bell-tel.com>;tag=43"),
            Err(Error::HeaderValue)
        );
        assert_eq!(
            NameAddr::parse(br#""unclosed <sip:a@b>"#),
            Err(Error::UnbalancedQuotes)
        );
        assert_eq!(NameAddr::parse(b"<sip:a@b"), Err(Error::UnbalancedAngles));
        assert_eq!(NameAddr::parse(b"<sip:a@b> junk"), Err(Error::HeaderValue));
    }

    #[test]
    fn contact_star_q_instance_and_push_params() {
        assert_eq!(Contact::parse(b" * "), Ok(Contact::Star));
        let c = Contact::parse(br#"<sip:x@h;pn-provider=fcm;pn-prid=tok;pn-param=proj>;q=0.7;+sip.instance="<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>";reg-id=1"#).unwrap();
        assert_eq!(c.q(), Some(Ok(700)));
        assert_eq!(
            c.instance(),
            Some(&b"urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"[..])
        );
        assert_eq!(c.reg_id(), Some(Ok(1)));
        let p = c.push().unwrap();
        assert_eq!(
            (p.provider, p.prid, p.param),
            (&b"fcm"[..], Some(&b"tok"[..]), Some(&b"proj"[..]))
        );
        assert!(Contact::parse(b"<sip:x@h>;q=1.5")
            .unwrap()
            .q()
            .unwrap()
            .is_err());
        assert!(is_push_param(b"PN-prid") && !is_push_param(b"pn") && !is_push_param(b"transport"));
    }
}
