//! Lexical building blocks of RFC 3261 §25.1 shared by the header parsers.
//!
//! Everything works on byte slices of the original buffer. Inside a header
//! value a line break can only be part of a fold: [`crate::parse`] ends a
//! header at a line break unless the next line starts with SP/HT (RFC 3261
//! §7.3.1), so LWS here means SP, HT, CR and LF alike: a folded value reads
//! as if unfolded, without copying it.

use crate::{Error, Result};
use std::borrow::Cow;

/// `token` characters (RFC 3261 §25.1).
#[inline]
pub(crate) fn is_token(b: u8) -> bool {
    TOKEN[b as usize]
}

pub(crate) static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        i += 1;
    }
    t
};

/// Linear white space inside a header value (see the module doc).
#[inline]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Index of the first non-LWS byte at or after `i`.
#[inline]
pub(crate) fn skip_lws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_lws(s[i]) {
        i += 1;
    }
    i
}

/// `s` without leading and trailing LWS.
#[inline]
pub(crate) fn trim(s: &[u8]) -> &[u8] {
    let start = skip_lws(s, 0);
    let mut end = s.len();
    while end > start && is_lws(s[end - 1]) {
        end -= 1;
    }
    &s[start..end]
}

/// Index just past the token starting at `i` (== `i` when there is none).
#[inline]
pub(crate) fn token_end(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_token(s[i]) {
        i += 1;
    }
    i
}

/// `s` as a `&str` when it is all token characters (so ASCII).
#[inline]
pub(crate) fn token_str(s: &[u8]) -> Result<&str> {
    if s.is_empty() || !s.iter().all(|&b| is_token(b)) {
        return Err(Error::HeaderValue);
    }
    // All token characters are ASCII.
    Ok(std::str::from_utf8(s).unwrap_or_default())
}

/// Given `s[i] == b'"'`, the index just past the closing quote.
/// Backslash escapes one character (RFC 3261 §25.1 `quoted-pair`).
#[inline]
pub(crate) fn quoted_end(s: &[u8], i: usize) -> Result<usize> {
    debug_assert_eq!(s.get(i), Some(&b'"'));
    let mut j = i + 1;
    while j < s.len() {
        match s[j] {
            b'"' => return Ok(j + 1),
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
    Err(Error::UnbalancedQuotes)
}

/// The content of a quoted string with its quoted-pairs resolved. Borrows
/// unless there was a backslash.
pub fn unquote(inner: &[u8]) -> Cow<'_, [u8]> {
    if !inner.contains(&b'\\') {
        return Cow::Borrowed(inner);
    }
    let mut out = Vec::with_capacity(inner.len());
    let mut it = inner.iter();
    while let Some(&b) = it.next() {
        if b == b'\\' {
            if let Some(&n) = it.next() {
                out.push(n);
            }
        } else {
            out.push(b);
        }
    }
    Cow::Owned(out)
}

/// Case-insensitive ASCII comparison.
#[inline]
pub(crate) fn eq_ic(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Parses a decimal number that must fit `max` (no sign, no spaces).
#[inline]
pub(crate) fn parse_u32(s: &[u8], max: u32) -> Result<u32> {
    if s.is_empty() || s.len() > 10 {
        return Err(if s.iter().all(u8::is_ascii_digit) && !s.is_empty() {
            Error::NumberRange
        } else {
            Error::HeaderValue
        });
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return Err(Error::HeaderValue);
        }
        n = n * 10 + u64::from(b - b'0');
    }
    if n > u64::from(max) {
        return Err(Error::NumberRange);
    }
    Ok(n as u32)
}

/// Splits a header value at top-level commas: commas inside quoted strings
/// or `<...>` do not split (RFC 3261 §7.3.1). Empty elements are skipped.
/// An unbalanced quote or angle ends the iteration with an error item.
#[derive(Clone, Debug)]
pub struct CommaSplit<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> CommaSplit<'a> {
    pub(crate) fn new(s: &'a [u8]) -> Self {
        CommaSplit { s, pos: 0 }
    }
}

impl<'a> Iterator for CommaSplit<'a> {
    type Item = Result<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.s;
        loop {
            if self.pos >= s.len() {
                return None;
            }
            let start = self.pos;
            // Most values have no comma at all: one element, no scan for
            // quotes (the element's own parser checks those).
            if memchr::memchr(b',', &s[start..]).is_none() {
                self.pos = s.len();
                let item = trim(&s[start..]);
                return if item.is_empty() {
                    None
                } else {
                    Some(Ok(item))
                };
            }
            let mut i = start;
            let mut in_angle = false;
            while i < s.len() {
                match s[i] {
                    b'"' => match quoted_end(s, i) {
                        Ok(e) => {
                            i = e;
                            continue;
                        }
                        Err(e) => {
                            self.pos = s.len();
                            return Some(Err(e));
                        }
                    },
                    b'<' => in_angle = true,
                    b'>' => in_angle = false,
                    b',' if !in_angle => break,
                    _ => {}
                }
                i += 1;
            }
            if in_angle {
                self.pos = s.len();
                return Some(Err(Error::UnbalancedAngles));
            }
            self.pos = i + 1;
            let item = trim(&s[start..i.min(s.len())]);
            if !item.is_empty() {
                return Some(Ok(item));
            }
        }
    }
}

/// Decodes `%HH` escapes (RFC 3261 §19.1.2). Borrows when there are none;
/// a malformed escape is an error.
pub fn percent_decode(s: &[u8]) -> Result<Cow<'_, [u8]>> {
    if !s.contains(&b'%') {
        return Ok(Cow::Borrowed(s));
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let h = s.get(i + 1..i + 3).ok_or(Error::Uri)?;
            let hi = hex(h[0]).ok_or(Error::Uri)?;
            let lo = hex(h[1]).ok_or(Error::Uri)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Ok(Cow::Owned(out))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<String> {
        CommaSplit::new(s.as_bytes())
            .map(|r| String::from_utf8(r.unwrap().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn comma_split_respects_quotes_and_angles() {
        assert_eq!(
            split(r#""a, b" <sip:x@y;p=1,2>;q=1 , <sip:z@w> ,, tok"#),
            vec![r#""a, b" <sip:x@y;p=1,2>;q=1"#, "<sip:z@w>", "tok"]
        );
    }

    #[test]
    fn comma_split_reports_unbalanced_quote() {
        let mut it = CommaSplit::new(br#"a, "b, c"#);
        assert_eq!(it.next(), Some(Ok(&b"a"[..])));
        assert_eq!(it.next(), Some(Err(Error::UnbalancedQuotes)));
        assert_eq!(it.next(), None);
    }

    #[test]
    fn unquote_resolves_quoted_pairs() {
        assert_eq!(&*unquote(br#"a \"b\" \\c"#), br#"a "b" \c"#);
        assert!(matches!(unquote(b"plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn percent_decode_handles_escapes_and_errors() {
        assert_eq!(&*percent_decode(b"a%20b%3d").unwrap(), b"a b=");
        assert_eq!(percent_decode(b"a%2"), Err(Error::Uri));
        assert_eq!(percent_decode(b"a%zz"), Err(Error::Uri));
    }

    #[test]
    fn parse_u32_checks_range() {
        assert_eq!(parse_u32(b"70", 255), Ok(70));
        assert_eq!(parse_u32(b"256", 255), Err(Error::NumberRange));
        assert_eq!(parse_u32(b"99999999999", u32::MAX), Err(Error::NumberRange));
        assert_eq!(parse_u32(b"-1", 255), Err(Error::HeaderValue));
        assert_eq!(parse_u32(b"", 255), Err(Error::HeaderValue));
    }
}
