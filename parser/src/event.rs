//! Small typed headers: Event (RFC 6665), Replaces (RFC 3891), Feature-Caps
//! (RFC 6809), and option-tag lists (Require, Supported, Allow).

use crate::header_name::HeaderName;
use crate::lex::{self, CommaSplit};
use crate::{Error, Header, Params, Result};

/// `Event: message-summary;id=1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// The event package, e.g. `message-summary` (MWI).
    pub package: &'a str,
    pub params: Params<'a>,
}

impl<'a> Event<'a> {
    /// Parses the Event value.
    pub fn parse(s: &'a [u8]) -> Result<Event<'a>> {
        let s = lex::trim(s);
        let end = lex::token_end(s, 0);
        let package = lex::token_str(&s[..end])?;
        let params = Params::new(&s[end..]);
        params.validate()?;
        Ok(Event { package, params })
    }

    /// The `id` parameter.
    pub fn id(&self) -> Option<&'a [u8]> {
        self.params.value("id")
    }
}

/// `Replaces: call-id;to-tag=...;from-tag=...[;early-only]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replaces<'a> {
    pub call_id: &'a [u8],
    pub params: Params<'a>,
}

impl<'a> Replaces<'a> {
    /// Parses the Replaces value.
    pub fn parse(s: &'a [u8]) -> Result<Replaces<'a>> {
        let s = lex::trim(s);
        let end = memchr::memchr(b';', s).unwrap_or(s.len());
        let call_id = lex::trim(&s[..end]);
        if call_id.is_empty() {
            return Err(Error::HeaderValue);
        }
        let params = Params::new(&s[end..]);
        params.validate()?;
        Ok(Replaces { call_id, params })
    }

    pub fn to_tag(&self) -> Option<&'a [u8]> {
        self.params.value("to-tag")
    }

    pub fn from_tag(&self) -> Option<&'a [u8]> {
        self.params.value("from-tag")
    }

    pub fn early_only(&self) -> bool {
        self.params.has("early-only")
    }
}

/// `Feature-Caps: *;+sip.pns="apns";+sip.pnsreg="121"` (RFC 6809 §6,
/// RFC 8599 §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureCaps<'a> {
    pub params: Params<'a>,
}

impl<'a> FeatureCaps<'a> {
    /// Parses one fc-value.
    pub fn parse(s: &'a [u8]) -> Result<FeatureCaps<'a>> {
        let s = lex::trim(s);
        let rest = s.strip_prefix(b"*").ok_or(Error::HeaderValue)?;
        let params = Params::new(rest);
        params.validate()?;
        Ok(FeatureCaps { params })
    }
}

/// The tokens of a comma-list header across all its lines (option tags of
/// Require/Supported, methods of Allow).
#[derive(Debug, Clone)]
pub struct TokenList<'h, 'a> {
    headers: std::slice::Iter<'h, Header<'a>>,
    name: HeaderName,
    cur: Option<CommaSplit<'a>>,
}

impl<'h, 'a> TokenList<'h, 'a> {
    pub(crate) fn new(headers: &'h [Header<'a>], name: HeaderName) -> Self {
        TokenList {
            headers: headers.iter(),
            name,
            cur: None,
        }
    }

    /// Whether a token is listed (case-insensitive: option tags are).
    pub fn contains(self, tag: &str) -> bool {
        self.map_while(|r| r.ok())
            .any(|t| t.eq_ignore_ascii_case(tag))
    }
}

impl<'a> Iterator for TokenList<'_, 'a> {
    type Item = Result<&'a str>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(cur) = self.cur.as_mut() {
                if let Some(item) = cur.next() {
                    return Some(item.and_then(lex::token_str));
                }
            }
            let h = self.headers.by_ref().find(|h| h.kind == self.name)?;
            self.cur = Some(CommaSplit::new(h.value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_feature_caps() {
        let r = Replaces::parse(b"425928@bobster.example.org;to-tag=7743;from-tag=6472;early-only")
            .unwrap();
        assert_eq!(r.call_id, b"425928@bobster.example.org");
        assert_eq!(
            (r.to_tag(), r.from_tag(), r.early_only()),
            (Some(&b"7743"[..]), Some(&b"6472"[..]), true)
        );
        let f = FeatureCaps::parse(br#"*;+sip.pns="apns";+sip.pnsreg="121""#).unwrap();
        assert_eq!(f.params.value("+sip.pns"), Some(&b"apns"[..]));
        assert!(FeatureCaps::parse(b"+sip.pns").is_err());
        let e = Event::parse(b"message-summary;id=5").unwrap();
        assert_eq!((e.package, e.id()), ("message-summary", Some(&b"5"[..])));
    }
}
