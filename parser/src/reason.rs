//! The Reason header (RFC 3326), which tells a CANCEL for "answered
//! elsewhere" (`cause=200`) from "caller hung up".

use crate::lex;
use crate::{Params, Result};
use std::borrow::Cow;

/// `Reason: SIP ;cause=200 ;text="Call completed elsewhere"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason<'a> {
    /// `SIP`, `Q.850`, or another token.
    pub protocol: &'a str,
    pub params: Params<'a>,
}

impl<'a> Reason<'a> {
    /// Parses one Reason element.
    ///
    /// ```
    /// use sipis_parser::Reason;
    /// let r = Reason::parse(br#"SIP ;cause=200 ;text="Call completed elsewhere""#).unwrap();
    /// assert_eq!((r.protocol, r.cause()), ("SIP", Some(200)));
    /// assert_eq!(&*r.text().unwrap(), b"Call completed elsewhere");
    /// ```
    pub fn parse(s: &'a [u8]) -> Result<Reason<'a>> {
        let s = lex::trim(s);
        let end = lex::token_end(s, 0);
        let protocol = lex::token_str(&s[..end])?;
        let params = Params::new(&s[end..]);
        params.validate()?;
        Ok(Reason { protocol, params })
    }

    /// The `cause` parameter, `None` when absent or not a number.
    pub fn cause(&self) -> Option<u16> {
        self.params
            .value("cause")
            .and_then(|v| lex::parse_u32(v, 65535).ok())
            .map(|n| n as u16)
    }

    /// The `text` parameter with quoted-pairs resolved.
    pub fn text(&self) -> Option<Cow<'a, [u8]>> {
        self.params.get("text").and_then(|p| p.value_unescaped())
    }
}
