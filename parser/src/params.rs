//! `;name=value` parameter lists of URIs and header values
//! (RFC 3261 §19.1.1 `uri-parameters`, §25.1 `generic-param`).

use crate::lex::{self, eq_ic};
use crate::{Error, Result};
use std::borrow::Cow;

/// One parameter. Names compare case-insensitively ([`Params::get`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    /// The name as written.
    pub name: &'a [u8],
    /// The value without its surrounding quotes (quoted-pairs still
    /// escaped, see [`Param::value_unescaped`]); `None` for a flag such as
    /// `;lr` or `;rport`.
    pub value: Option<&'a [u8]>,
    /// Whether the value was a quoted string.
    pub quoted: bool,
}

impl<'a> Param<'a> {
    /// The value with quoted-pairs resolved (header params) — URI params
    /// are percent-escaped instead: see [`crate::percent_decode`].
    pub fn value_unescaped(&self) -> Option<Cow<'a, [u8]>> {
        self.value.map(|v| {
            if self.quoted {
                lex::unquote(v)
            } else {
                Cow::Borrowed(v)
            }
        })
    }
}

/// Iterates the parameters in a raw parameter section such as
/// `;transport=tcp;lr` or `; tag = 1928 ;q="0.5"`. White space around `;`
/// and `=` is allowed (header params, RFC 3261 §25.1 SEMI and EQUAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Params<'a> {
    raw: &'a [u8],
}

impl<'a> Params<'a> {
    /// Wraps a raw parameter section (it may start with `;`).
    pub fn new(raw: &'a [u8]) -> Self {
        Params { raw }
    }

    /// The raw section as given.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// True when there are no parameters.
    pub fn is_empty(&self) -> bool {
        lex::trim(self.raw).iter().all(|&b| b == b';')
    }

    /// The first parameter with this name (ASCII case-insensitive); malformed
    /// sections yield `None`.
    pub fn get(&self, name: &str) -> Option<Param<'a>> {
        self.iter()
            .map_while(|r| r.ok())
            .find(|p| eq_ic(p.name, name.as_bytes()))
    }

    /// Whether a parameter of that name is present (with or without value).
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The value of a parameter, `None` when absent or valueless.
    pub fn value(&self, name: &str) -> Option<&'a [u8]> {
        self.get(name).and_then(|p| p.value)
    }

    /// Iterates the parameters in order; a malformed one ends the iteration
    /// with an error.
    pub fn iter(&self) -> ParamIter<'a> {
        ParamIter {
            s: self.raw,
            pos: 0,
        }
    }

    /// Checks that the whole section parses.
    pub fn validate(&self) -> Result<()> {
        for p in self.iter() {
            p?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for Params<'a> {
    type Item = Result<Param<'a>>;
    type IntoIter = ParamIter<'a>;
    fn into_iter(self) -> ParamIter<'a> {
        self.iter()
    }
}

/// Iterator over [`Params`].
#[derive(Debug, Clone)]
pub struct ParamIter<'a> {
    s: &'a [u8],
    pos: usize,
}

/// Characters allowed in a parameter name or unquoted value besides token
/// characters: `paramchar` of RFC 3261 §19.1.1 (`[ ] / : & + $` and the
/// `mark` characters `( )` of `unreserved`) and the IPv6 reference
/// characters of `received=` and `maddr=`.
#[inline]
fn is_pchar(b: u8) -> bool {
    PCHAR[b as usize]
}

static PCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = lex::TOKEN[i]
            || matches!(
                c,
                b'[' | b']' | b'/' | b':' | b'&' | b'$' | b'@' | b'?' | b'(' | b')'
            );
        i += 1;
    }
    t
};

impl<'a> Iterator for ParamIter<'a> {
    type Item = Result<Param<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.s;
        let mut i = lex::skip_lws(s, self.pos);
        // Skip separators (and tolerate empty ones like `;;`).
        while i < s.len() && s[i] == b';' {
            i = lex::skip_lws(s, i + 1);
        }
        if i >= s.len() {
            self.pos = s.len();
            return None;
        }
        let fail = |me: &mut Self, e| {
            me.pos = s.len();
            Some(Err(e))
        };
        let ns = i;
        while i < s.len() && is_pchar(s[i]) && s[i] != b'=' {
            i += 1;
        }
        if i == ns {
            return fail(self, Error::HeaderValue);
        }
        let name = &s[ns..i];
        i = lex::skip_lws(s, i);
        let (value, quoted) = if i < s.len() && s[i] == b'=' {
            i = lex::skip_lws(s, i + 1);
            if i < s.len() && s[i] == b'"' {
                let end = match lex::quoted_end(s, i) {
                    Ok(e) => e,
                    Err(e) => return fail(self, e),
                };
                let v = &s[i + 1..end - 1];
                i = end;
                (Some(v), true)
            } else {
                let vs = i;
                while i < s.len() && is_pchar(s[i]) {
                    i += 1;
                }
                if i == vs {
                    return fail(self, Error::HeaderValue);
                }
                (Some(&s[vs..i]), false)
            }
        } else {
            (None, false)
        };
        i = lex::skip_lws(s, i);
        if i < s.len() && s[i] != b';' {
            return fail(self, Error::HeaderValue);
        }
        self.pos = i;
        Some(Ok(Param {
            name,
            value,
            quoted,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_params_with_spaces_and_quotes() {
        let p = Params::new(br#" ; tag = 1928 ;q="0.5";lr;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>""#);
        let all: Vec<_> = p.iter().collect::<Result<_>>().unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(p.value("TAG"), Some(&b"1928"[..]));
        assert!(p.get("q").unwrap().quoted);
        assert!(p.has("lr") && p.value("lr").is_none());
        assert_eq!(
            p.value("+sip.instance"),
            Some(&b"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"[..])
        );
    }

    #[test]
    fn malformed_params_are_errors() {
        assert!(Params::new(b";a=\"x").validate().is_err());
        assert!(Params::new(b";=x").validate().is_err());
        assert!(Params::new(b";a=b c").validate().is_err());
        assert!(Params::new(b"").is_empty());
    }
}
