//! The CSeq header (RFC 3261 §20.16).

use crate::lex;
use crate::{Error, Method, Result};

/// `CSeq: 4711 INVITE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    /// The sequence number; RFC 3261 §8.1.1.5 keeps it below 2^31.
    pub seq: u32,
    pub method: Method<'a>,
}

impl<'a> CSeq<'a> {
    /// Parses `1*DIGIT LWS Method`.
    pub fn parse(s: &'a [u8]) -> Result<CSeq<'a>> {
        let s = lex::trim(s);
        let d = s
            .iter()
            .position(|&b| !b.is_ascii_digit())
            .ok_or(Error::HeaderValue)?;
        let seq = lex::parse_u32(&s[..d], (1 << 31) - 1)?;
        let m = lex::skip_lws(s, d);
        if m == d {
            return Err(Error::HeaderValue);
        }
        let method = Method::parse(&s[m..]).map_err(|_| Error::HeaderValue)?;
        Ok(CSeq { seq, method })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cseq_number_and_method() {
        assert_eq!(
            CSeq::parse(b"4711  INVITE"),
            Ok(CSeq {
                seq: 4711,
                method: Method::Invite
            })
        );
        assert_eq!(CSeq::parse(b"2147483648 INVITE"), Err(Error::NumberRange));
        assert_eq!(CSeq::parse(b"1INVITE"), Err(Error::HeaderValue));
        assert_eq!(CSeq::parse(b"INVITE"), Err(Error::HeaderValue));
        assert_eq!(CSeq::parse(b"1 IN VITE"), Err(Error::HeaderValue));
    }
}
