//! The Via header (RFC 3261 §20.42, §18.2.1; RFC 3581 rport).

use crate::lex::{self, eq_ic};
use crate::uri::split_host_port;
use crate::{Error, Host, Params, Result};

/// One Via element: `SIP/2.0/UDP host:port;branch=...;received=...;rport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// The transport (`UDP`, `TCP`, `TLS`, `WS`, ...), as written.
    pub transport: &'a str,
    pub host: Host<'a>,
    /// The sent-by host as written (brackets kept for IPv6).
    pub host_raw: &'a [u8],
    pub port: Option<u16>,
    pub params: Params<'a>,
}

/// The RFC 3261 §8.1.1.7 magic cookie that marks a branch as unique.
pub const BRANCH_MAGIC: &[u8] = b"z9hG4bK";

impl<'a> Via<'a> {
    /// Parses one Via element (the caller has split comma lists).
    ///
    /// ```
    /// use sipis_parser::Via;
    /// let v = Via::parse(b"SIP / 2.0 / UDP 192.0.2.1:5060 ;rport;branch=z9hG4bKnashds8").unwrap();
    /// assert_eq!(v.transport, "UDP");
    /// assert_eq!(v.port, Some(5060));
    /// assert_eq!(v.branch(), Some(&b"z9hG4bKnashds8"[..]));
    /// assert_eq!(v.rport(), Some(None));
    /// ```
    pub fn parse(s: &'a [u8]) -> Result<Via<'a>> {
        // sent-protocol = protocol-name SLASH protocol-version SLASH transport
        // with LWS allowed around each SLASH.
        let mut i = lex::skip_lws(s, 0);
        let name_end = lex::token_end(s, i);
        if !eq_ic(&s[i..name_end], b"SIP") {
            return Err(Error::HeaderValue);
        }
        i = slash(s, name_end)?;
        let ver_end = lex::token_end(s, i);
        if &s[i..ver_end] != b"2.0" {
            return Err(Error::HeaderValue);
        }
        i = slash(s, ver_end)?;
        let t_end = lex::token_end(s, i);
        let transport = lex::token_str(&s[i..t_end])?;
        // LWS then sent-by.
        let sb_start = lex::skip_lws(s, t_end);
        if sb_start == t_end {
            return Err(Error::HeaderValue);
        }
        let mut j = sb_start;
        while j < s.len() && !matches!(s[j], b';' | b' ' | b'\t' | b'\r' | b'\n') {
            j += 1;
        }
        let (host_raw, port) = split_host_port(&s[sb_start..j]).map_err(|_| Error::HeaderValue)?;
        let host = Host::parse(host_raw).map_err(|_| Error::HeaderValue)?;
        let rest = &s[lex::skip_lws(s, j)..];
        if !rest.is_empty() && rest[0] != b';' {
            return Err(Error::HeaderValue);
        }
        let params = Params::new(rest);
        params.validate()?;
        Ok(Via {
            transport,
            host,
            host_raw,
            port,
            params,
        })
    }

    /// The `branch` parameter: the transaction id (RFC 3261 §17).
    pub fn branch(&self) -> Option<&'a [u8]> {
        self.params.value("branch")
    }

    /// The `received` parameter (RFC 3261 §18.2.1).
    pub fn received(&self) -> Option<&'a [u8]> {
        self.params.value("received")
    }

    /// The `rport` parameter (RFC 3581): `None` when absent, `Some(None)`
    /// when present without a value (the client asks for it to be filled),
    /// `Some(Some(port))` when filled.
    pub fn rport(&self) -> Option<Option<u16>> {
        let p = self.params.get("rport")?;
        Some(
            p.value
                .and_then(|v| lex::parse_u32(v, 65535).ok().map(|n| n as u16)),
        )
    }

    /// The `maddr` parameter.
    pub fn maddr(&self) -> Option<&'a [u8]> {
        self.params.value("maddr")
    }

    /// The `ttl` parameter (0..=255).
    pub fn ttl(&self) -> Option<Result<u8>> {
        self.params
            .value("ttl")
            .map(|v| lex::parse_u32(v, 255).map(|n| n as u8))
    }

    /// Whether the transport is reliable (anything but UDP): decides
    /// retransmissions (RFC 3261 §17.1.1.2).
    pub fn is_reliable(&self) -> bool {
        !self.transport.eq_ignore_ascii_case("UDP")
    }
}

fn slash(s: &[u8], i: usize) -> Result<usize> {
    let i = lex::skip_lws(s, i);
    if s.get(i) != Some(&b'/') {
        return Err(Error::HeaderValue);
    }
    Ok(lex::skip_lws(s, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sent_by_received_ttl_maddr() {
        let v = Via::parse(b"SIP/2.0/TCP [2001:db8::9]:5061;branch=z9hG4bK1;received=[2001:db8::10];ttl=16;maddr=224.2.0.1;rport=4040").unwrap();
        assert_eq!(v.host, Host::V6("2001:db8::9".parse().unwrap()));
        assert_eq!(v.port, Some(5061));
        assert_eq!(v.received(), Some(&b"[2001:db8::10]"[..]));
        assert_eq!(v.ttl(), Some(Ok(16)));
        assert_eq!(v.maddr(), Some(&b"224.2.0.1"[..]));
        assert_eq!(v.rport(), Some(Some(4040)));
        assert!(v.is_reliable());
    }

    #[test]
    fn malformed_vias_are_rejected() {
        for bad in [
            &b"SIP/2.0/UDP"[..],
            b"SIP/3.0/UDP host",
            b"HTTP/2.0/UDP host",
            b"SIP/2.0/UDP host:port",
            b"SIP/2.0/UDP host junk",
            b"SIP/2.0UDP host",
        ] {
            assert!(Via::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
